"""Hard-sample buffer B and its judge: Eq. 4's hardness and quantile rule against hand numbers and numpy, the ranked
store against a sorted() reference, exact checkpoint round-trips, and a tiny CLIP that learns a toy colour task.
Run: python -m pytest -q tests/test_buffer.py"""

import io
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from buffer import HardBuffer, calibrate, hardness, select_hard
from judge import Judge, WordTokenizer


def _images(b, h=4, w=5, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- hardness, Eq. 4 rule
def test_hardness_hand_computed():
    ce = torch.tensor([1.0, 2.0, 0.5, 0.0])
    sim = torch.tensor([0.3, 0.7, 0.6, -0.4])
    # tau = 0.6, lam = 2: hinge 0.3 -> -0.6; 0.7 and 0.6 inactive; -0.4 -> -2.0 (implausible: less hard)
    h = hardness(ce, sim, tau=0.6, lam=2.0)
    assert h.dtype == torch.float32
    assert h.tolist() == pytest.approx([0.4, 2.0, 0.5, -2.0], abs=1e-6)
    assert hardness(ce.half(), None, tau=0.6, lam=2.0).tolist() == [1.0, 2.0, 0.5, 0.0]
    assert hardness(ce.bfloat16(), sim.bfloat16(), 0.6, 0.0).dtype == torch.float32


@settings(max_examples=50, deadline=None)
@given(ce=st.floats(0, 20), s_low=st.floats(-1, 1), s_high=st.floats(-1, 1), tau=st.floats(-1, 1),
       lam=st.floats(0, 10))
def test_a_less_plausible_candidate_never_ranks_harder(ce, s_low, s_high, tau, lam):
    s_low, s_high = min(s_low, s_high), max(s_low, s_high)
    h = hardness(torch.tensor([ce, ce]), torch.tensor([s_low, s_high]), tau=tau, lam=lam)
    assert h[0] <= h[1] + 1e-6 and h[1] <= ce + 1e-6  # and the hinge never adds hardness


def test_the_filter_scale_maps_clean_pairs_to_1_and_other_scenes_to_0():
    pos, neg = torch.tensor([0.30, 0.34]), torch.tensor([0.10, 0.14])  # a real CLIP's range
    scale = calibrate(pos, neg)
    assert scale(torch.tensor([0.32, 0.12, 0.22])).tolist() == pytest.approx([1.0, 0.0, 0.5], abs=1e-5)
    with pytest.raises(ValueError, match='does not tell matched'):
        calibrate(torch.tensor([0.2]), torch.tensor([0.2]))


def test_quantile_rule_matches_numpy_on_0_to_9():
    h = torch.arange(10, dtype=torch.float32)
    keep = select_hard(h, None, min_sim=0.6, quantile=0.6)
    expected = h.numpy() >= np.quantile(h.numpy(), 0.6)  # 5.4 -> {6, 7, 8, 9}
    assert keep.tolist() == expected.tolist() == [False] * 6 + [True] * 4


@settings(max_examples=50, deadline=None)
@given(hs=st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=40), q=st.floats(0.01, 0.99))
def test_quantile_rule_matches_numpy_random(hs, q):
    keep = select_hard(torch.tensor(hs), None, 0.0, q)
    ref = np.asarray(hs, dtype=np.float64)
    assert keep.tolist() == (ref >= np.quantile(ref, q)).tolist()


def test_filter_drops_low_similarity_even_if_hardest():
    h = torch.tensor([9.0, 1.0, 2.0, 8.0, 7.0])
    sim = torch.tensor([0.1, 0.9, 0.9, 0.9, 0.59])
    # quantile over ALL of H (before filtering): 0.6-quantile of [1,2,7,8,9] = 7.4 -> {9, 8}; 9 fails the filter
    assert select_hard(h, sim, min_sim=0.6, quantile=0.6).tolist() == [False, False, False, True, False]
    low = torch.full((5,), 0.2)
    assert not select_hard(h, low, min_sim=0.6, quantile=0.6).any()  # nothing is forced in


# ------------------------------------------------------------------------------------------------- the ranked store
def test_buffer_keeps_top_capacity_by_hardness():
    rng = random.Random(0)
    buf, cap, pushed = HardBuffer(capacity=7), 7, []
    for step in range(40):
        b = rng.randint(1, 5)
        hs = [rng.uniform(0, 10) for _ in range(b)]
        before = sorted(pushed, reverse=True)[:cap]
        pushed += hs
        top = sorted(pushed, reverse=True)[:cap]
        n_in = buf.push(_images(b, seed=step), [f"q{h}" for h in hs], [f"a{h}" for h in hs], torch.tensor(hs), step)
        assert n_in == len(set(top) - set(before))
        assert len(buf) == min(cap, len(pushed)) <= cap
        stored = [e.hardness for e in buf.entries]
        assert stored == pytest.approx(top, abs=1e-5)  # float32 tensor in, same ranking out
        assert all(e.question == f"q{h}" for e, h in zip(buf.entries, top))  # each H stays with its own sample
    assert buf.mean_hardness() == pytest.approx(sum(top) / cap, abs=1e-5)
    assert buf.min_hardness() == pytest.approx(top[-1], abs=1e-5)


def test_full_buffer_rejects_easier_and_ties():
    buf = HardBuffer(capacity=2)
    assert math.isnan(buf.mean_hardness()) and math.isnan(buf.min_hardness())
    assert buf.push(_images(2), ["a", "b"], ["x", "y"], [3.0, 5.0], step=0) == 2
    assert buf.push(_images(2), ["c", "d"], ["x", "y"], [1.0, 3.0], step=1) == 0  # lower, and a tie: incumbents stay
    assert buf.push(_images(1), ["e"], ["z"], [4.0], step=2, qtypes=["color"]) == 1
    assert [(e.question, e.step, e.qtype) for e in buf.entries] == [("b", 0, None), ("e", 2, "color")]


def test_the_buffer_replays_the_very_pixels_h_was_scored_on():
    """Candidates are stored float32 (a uint8 round trip would hand U other pixels than H scored); the originals,
    kept for galleries only, as uint8."""
    x, clean = _images(3, 8, 6), _images(3, 8, 6, seed=1)
    buf = HardBuffer(5)
    buf.push(x, ["q"] * 3, ["a"] * 3, [1.0, 2.0, 3.0], step=0, originals=clean)
    assert buf.entries[0].image.dtype == torch.float32 and buf.entries[0].image.device.type == "cpu"
    assert buf.entries[0].original.dtype == torch.uint8
    out = buf.sample(3, generator=torch.Generator().manual_seed(0))
    assert out["images"].dtype == torch.float32 and out["images"].shape == (3, 3, 8, 6)
    by_h = {h: i for i, h in enumerate([1.0, 2.0, 3.0])}
    for img, h in zip(out["images"], out["hardness"].tolist()):
        assert torch.equal(img, x[by_h[h]])
    restored = HardBuffer(5)
    restored.load_state_dict(buf.state_dict())
    assert torch.equal(restored.entries[0].original, (clean[2] * 255).round().to(torch.uint8))


def test_sample_without_replacement_and_clipped():
    buf = HardBuffer(10)
    buf.push(_images(6), [f"q{i}" for i in range(6)], ["a"] * 6, list(range(6)), step=3)
    for temp in (None, 0.5, 1e-6):
        out = buf.sample(100, generator=torch.Generator().manual_seed(1), temperature=temp)
        assert sorted(out["questions"]) == [f"q{i}" for i in range(6)]  # all of them, each once
        assert out["steps"].tolist() == [3] * 6
    assert buf.sample(0)["images"].shape[0] == 0
    assert HardBuffer(3).sample(4)["questions"] == []


def test_tempered_sampling_follows_softmax_of_hardness():
    hs, temp, draws = [0.0, 1.0, 2.0, 3.0], 1.0, 4000
    buf = HardBuffer(4)
    buf.push(_images(4), [str(h) for h in hs], ["a"] * 4, hs, step=0)
    g = torch.Generator().manual_seed(0)
    counts = {str(h): 0 for h in hs}
    for _ in range(draws):
        counts[buf.sample(1, generator=g, temperature=temp)["questions"][0]] += 1
    z = sum(math.exp(h / temp) for h in hs)
    for h in hs:  # p = exp(H/T) / Z; 4000 draws give a standard error below 0.008
        assert counts[str(h)] / draws == pytest.approx(math.exp(h / temp) / z, abs=0.03)
    uniform = {str(h): 0 for h in hs}
    for _ in range(draws):
        uniform[buf.sample(1, generator=g)["questions"][0]] += 1
    assert all(abs(c / draws - 0.25) < 0.03 for c in uniform.values())


def test_consume_takes_sampled_entries_out():
    buf = HardBuffer(10)
    buf.push(_images(6), [f"q{i}" for i in range(6)], ["a"] * 6, [6.0, 5, 4, 3, 2, 1], step=0)
    s = buf.sample(2, generator=torch.Generator().manual_seed(0), remove=True)
    left = [e.question for e in buf.entries]
    assert len(buf) == 4 and not set(s["questions"]) & set(left) and s["index"] == []
    assert left == [q for q in [f"q{i}" for i in range(6)] if q not in s["questions"]]  # the rest keep their rank
    assert [e.question for e in buf.spent] == s["questions"]  # kept aside for galleries, never sampled again
    restored = HardBuffer(10)
    restored.load_state_dict(buf.state_dict())
    assert [e.question for e in restored.spent] == s["questions"] and len(restored) == 4


def test_rescore_replaces_ce_keeps_the_filter_part_and_reranks():
    buf = HardBuffer(3)
    # H = CE + hinge (<= 0): a (0.5 = 1.5 - 1.0, below tau), b (1.5 = 1.5 + 0), c (1.2 = 1.2 + 0)
    buf.push(_images(3), ["a", "b", "c"], ["x"] * 3, torch.tensor([0.5, 1.5, 1.2]), step=0,
             ce=torch.tensor([1.5, 1.5, 1.2]))
    s = buf.sample(3, generator=torch.Generator().manual_seed(0))
    ce_now = {"a": 2.5, "b": 0.05, "c": 1.0}  # U has learnt b since, and got worse on a
    buf.rescore(s["index"], [ce_now[q] for q in s["questions"]])
    assert [e.question for e in buf.entries] == ["a", "c", "b"]  # a keeps its -1.0 filter part: 2.5 - 1.0
    assert [e.hardness for e in buf.entries] == pytest.approx([1.5, 1.0, 0.05])
    buf.push(_images(1), ["d"], ["x"], [0.5], step=1)  # now harder than the learnt b: it takes b's place
    assert [e.question for e in buf.entries] == ["a", "c", "d"]
    restored = HardBuffer(3)
    restored.load_state_dict(buf.state_dict())
    assert [e.hinge for e in restored.entries] == pytest.approx([-1.0, 0.0, 0.0])


def test_state_dict_roundtrip_weights_only():
    buf = HardBuffer(6)
    buf.push(_images(4), list("abcd"), list("wxyz"), [0.5, 2.5, 1.5, 3.5], step=7, qtypes=["c", None, "s", "n"])
    buf.push(_images(4, seed=1), list("efgh"), list("wxyz"), [4.5, 0.1, 2.0, 9.0], step=8)
    f = io.BytesIO()
    torch.save(buf.state_dict(), f)
    f.seek(0)
    other = HardBuffer(6)
    other.load_state_dict(torch.load(f, weights_only=True))
    for e, o in zip(buf.entries, other.entries, strict=True):
        assert torch.equal(e.image, o.image)
        fields = ("question", "answer", "hardness", "step", "qtype")
        assert [getattr(e, k) for k in fields] == [getattr(o, k) for k in fields]
    for temp in (None, 0.7):
        s1 = buf.sample(4, generator=torch.Generator().manual_seed(5), temperature=temp)
        s2 = other.sample(4, generator=torch.Generator().manual_seed(5), temperature=temp)
        assert s1["questions"] == s2["questions"] and torch.equal(s1["images"], s2["images"])
    with pytest.raises(ValueError, match="capacity"):
        HardBuffer(5).load_state_dict(buf.state_dict())


def test_bad_inputs_name_the_argument():
    h = torch.arange(4.0)
    for q in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="quantile"):
            select_hard(h, None, 0.6, q)
    with pytest.raises(ValueError, match="sim"):
        select_hard(h, torch.ones(3), 0.6, 0.6)
    with pytest.raises(ValueError, match="lam"):
        hardness(h, None, 0.6, -1.0)
    with pytest.raises(ValueError, match="sim"):
        hardness(h, torch.ones(5), 0.6, 1.0)
    with pytest.raises(ValueError, match="ce"):
        hardness(h[None], None, 0.6, 1.0)
    for cap in (0, -3):
        with pytest.raises(ValueError, match="capacity"):
            HardBuffer(cap)
    buf = HardBuffer(4)
    bads = (torch.rand(3, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(2, 3, 4, 4) * 2, torch.zeros(2, 3, 4, 4).long())
    for bad in bads:
        with pytest.raises(ValueError, match="images"):
            buf.push(bad, ["q"] * 2, ["a"] * 2, [1.0, 2.0], step=0)
    with pytest.raises(ValueError, match="answers"):
        buf.push(_images(2), ["q"] * 2, ["a"], [1.0, 2.0], step=0)
    with pytest.raises(ValueError, match="hardness"):
        buf.push(_images(2), ["q"] * 2, ["a"] * 2, [1.0, float("nan")], step=0)
    buf.push(_images(1), ["q"], ["a"], [1.0], step=0)
    with pytest.raises(ValueError, match="images"):
        buf.push(_images(1, h=9), ["q"], ["a"], [2.0], step=0)  # cannot be stacked with what is stored
    with pytest.raises(ValueError, match="temperature"):
        buf.sample(1, temperature=0.0)
    with pytest.raises(ValueError, match="n must"):
        buf.sample(-1)


# ---------------------------------------------------------------------------------------------------------- judge
COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0),
           "cyan": (0, 1, 1), "magenta": (1, 0, 1), "white": (1, 1, 1), "black": (0, 0, 0)}


def _colour_batch(g, size=36):
    rgb = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[:, :, None, None]  # (8, 3, 1, 1)
    return (rgb.expand(-1, -1, size, size) * 0.8 + 0.1 + 0.05 * torch.randn(8, 3, size, size, generator=g)).clamp(0, 1)


def test_hard_negatives_enter_the_image_to_text_side_only():
    """With negatives, the image->text softmax also spans them; by hand from the embeddings."""
    torch.manual_seed(0)
    judge = Judge.tiny(["a", "red", "blue", "square", "circle"])
    x, texts, negs = torch.rand(3, 3, 36, 36), ["a red square", "a blue circle", "a red circle"], \
        ["a blue square", "a red circle", "a blue circle"]
    img, txt = judge._embed(x, texts + negs)
    logits = judge.model.logit_scale.exp().clamp(max=100) * img @ txt.T  # (3, 6)
    labels = torch.arange(3)
    expected = (torch.nn.functional.cross_entropy(logits, labels) +
                torch.nn.functional.cross_entropy(logits[:, :3].T, labels)) / 2
    assert torch.allclose(judge.contrastive_loss(x, texts, negs), expected, atol=1e-5)
    assert judge.contrastive_loss(x, texts, negs) > judge.contrastive_loss(x, texts)  # more wrong texts to beat


def test_word_tokenizer_ids():
    tok = WordTokenizer(["Red", "blue", "red"], context_length=5)
    # pad 0, <unk> 1, red 2, blue 3, EOT 4 (the largest id, where open_clip's argmax pool reads the text feature)
    assert tok(["Blue red? green", ""]).tolist() == [[3, 2, 1, 4, 0], [4, 0, 0, 0, 0]]
    assert tok(["red " * 9]).tolist() == [[2, 2, 2, 2, 4]]


def test_tiny_judge_learns_colours_and_roundtrips(tmp_path):
    torch.manual_seed(0)
    names = list(COLOURS)
    judge = Judge.tiny(names + ["a", "square"])
    assert sum(p.numel() for p in judge.parameters()) < 1_000_000
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(judge.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(30):
        loss = judge.contrastive_loss(_colour_batch(g), names)
        opt.zero_grad()
        loss.backward()
        opt.step()
    judge.eval()
    x = _colour_batch(g)  # fresh noise
    with torch.no_grad():
        sims = torch.stack([judge.image_text_similarity(x, [n] * len(names)) for n in names], dim=1)  # (img, text)
        assert sims.shape == (8, 8) and (sims.abs() <= 1 + 1e-5).all()
        off = sims.masked_fill(torch.eye(8, dtype=torch.bool), -2.0).max(dim=1).values
        assert (sims.diag() > off).all()  # every image is closest to its own colour word
        ii = judge.image_image_similarity(x, x.flip(0))
        assert ii.shape == (8,) and (ii.abs() <= 1 + 1e-5).all()
        assert judge.image_image_similarity(x, x) == pytest.approx(torch.ones(8), abs=1e-5)
        wide = judge.image_text_similarity(torch.rand(2, 3, 40, 60), ["red", "blue"])  # resize + centre crop path
        assert wide.shape == (2,)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the judge opts out of autocast: same float32 numbers
            amp = judge.image_text_similarity(x, names)
        assert amp.dtype == torch.float32 and torch.allclose(amp, sims.diag(), atol=1e-5)

    path = tmp_path / "judge.pt"
    judge.save(str(path))
    assert not (tmp_path / "judge.pt.tmp").exists()
    torch.load(path, weights_only=True)  # plain payload
    again = Judge.load(str(path)).eval()
    with torch.no_grad():
        assert torch.equal(again.image_text_similarity(x, names), judge.image_text_similarity(x, names))
    with pytest.raises(ValueError, match="texts"):
        judge.image_text_similarity(x, names[:3])


def test_from_pretrained_loads_a_local_file_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any reach for the hub would now fail loudly
    import open_clip
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-S-32", pretrained=None)  # random weights, ~60M params, no download
    torch.save(ref.state_dict(), tmp_path / "clip.pt")
    judge = Judge.from_pretrained(f"ViT-S-32:{tmp_path / 'clip.pt'}")
    assert torch.equal(judge.model.visual.conv1.weight, ref.visual.conv1.weight) and judge.image_size == (224, 224)
    with torch.no_grad():
        assert judge.image_text_similarity(torch.rand(2, 3, 64, 48), ["a red square", "blue"]).shape == (2,)


def test_from_pretrained_missing_file_names_path(tmp_path):
    missing = str(tmp_path / "no_such_clip.bin")
    with pytest.raises(FileNotFoundError, match="no_such_clip.bin"):
        Judge.from_pretrained(f"ViT-B-32:{missing}")
    with pytest.raises(FileNotFoundError, match="local-dir:DIR"):
        Judge.from_pretrained(f"local-dir:{tmp_path}")  # a folder without open_clip_config.json


def test_token_space_buffer_keeps_float_tokens_and_round_trips():
    """Table 4's embedding-only ablation stores perturbed tokens, not images: exact floats, ranked by H."""
    buf = HardBuffer(2, space='token')
    z = torch.randn(3, 5, 8)
    assert buf.push(z, ["a", "b", "c"], ["x", "y", "z"], [1.0, 3.0, 2.0], step=0) == 2
    out = buf.sample(2, generator=torch.Generator().manual_seed(0))
    assert "images" not in out and out["tokens"].shape == (2, 5, 8)
    by_q = dict(zip(out["questions"], out["tokens"]))
    assert set(by_q) == {"b", "c"} and torch.equal(by_q["b"], z[1]) and torch.equal(by_q["c"], z[2])
    with pytest.raises(ValueError, match="tokens"):
        buf.push(torch.rand(1, 3, 4, 4), ["d"], ["w"], [9.0], step=1)  # an image is not (B, N, H)
    other = HardBuffer(2)
    with pytest.raises(ValueError, match="space"):
        other.load_state_dict(buf.state_dict())
    again = HardBuffer(2, space='token')
    again.load_state_dict(buf.state_dict())
    assert torch.equal(again.sample(2)["tokens"].sum(0), out["tokens"].sum(0))


def test_the_cosine_filter_rejects_candidates_whose_scene_lost_an_object_edit():
    """--filter cosine with its 0 at a one-object edit of the scene (--filter-zero edit, the default on shapes) passes
    the clean decodes G(z) of held-out scenes and rejects, at min-sim 0.6, a good share of the decodes of the same
    scenes with one object recoloured, reshaped or moved: candidates whose label broke. (Not all: the judge's image
    features barely see a swap of two objects; measured, about 45% of the edits are rejected.) With its 0 at another
    scene (the old rule) most of those edits pass."""
    import data
    import naturalgroups
    import toy_base
    from buffer import SemanticFilter
    torch.manual_seed(0)
    umm = toy_base.tiny_toy(init=toy_base.BASE_DIR).eval()
    judge = Judge.load(f'{toy_base.BASE_DIR}/judge.pt')
    ds, rng = data.ShapesVQA('train', 256, first=toy_base.PRETRAIN_SCENES), np.random.default_rng(0)
    b = data.collate([ds[i] for i in range(len(ds))])
    b['edited'] = torch.stack([naturalgroups.edited_image(s, rng) for s in ds.scenes])  # (256, 3, H, W)
    fit, held = ({k: v[r] for k, v in b.items()} for r in (slice(0, 128), slice(128, 256)))  # fit on 128, test 128
    s = {}
    with torch.no_grad():
        x, q = held['images'], held['questions']
        clean, broken = umm.decode(x, umm.encode(x), q)[0], umm.decode(x, umm.encode(held['edited']), q)[0]
        for zero in ('edit', 'scene'):
            f = SemanticFilter(judge, 'cosine')
            f.fit(umm, [fit], zero, np.random.default_rng(1))  # rng: the clip filter's caption edits
            s[zero] = [(f(v, x, held['captions']) >= 0.6).float().mean().item() for v in (clean, broken)]  # passed
    assert s['edit'][0] >= 0.95 and s['edit'][1] <= 0.7, s  # the default --min-sim 0.6 binds on broken labels
    assert s['scene'][1] >= 0.75, s  # the old 0: most broken candidates passed
    # in token space the 0 is the mean token cosine of the clean tokens with the edited scene's tokens
    one, nought = SemanticFilter(judge, 'cosine', space='token').fit(umm, [fit], 'edit')
    with torch.no_grad():
        z, z_edit = umm.encode(fit['images']), umm.encode(fit['edited'])  # (128, N, H) each
    by_hand = (z * z_edit).sum(-1) / (z.norm(dim=-1) * z_edit.norm(dim=-1))  # (128, N)
    assert one == pytest.approx(1.0, abs=1e-5) and nought == pytest.approx(by_hand.mean().item(), abs=1e-5)
