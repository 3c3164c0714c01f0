"""Janus-Pro on transformers' JanusForConditionalGeneration, proven on `tiny-janus` (the same classes, a tiny random
config, CPU, no weights): the answer loss equals transformers' own forward, delta reaches the LLM and C, regen and t2i
shapes and determinism, LoRA-only gradients, the registry's errors, and the 7B architecture on the meta device.
Run: python -m pytest -q tests/test_janus.py"""

import pytest
import torch
import torch.nn.functional as F

import data
import model
from perturber import Perturber

PROMPTS = ['how many objects are there ?', 'is there a red circle left of the blue square ?']  # unequal lengths


@pytest.fixture(scope='module')
def umm():
    torch.manual_seed(0)
    return model.load_backbone('tiny-janus').eval()


@pytest.fixture(scope='module')
def batch():
    ds = data.ShapesVQA('val', 4)
    b = data.collate([ds[i] for i in range(4)])
    b['images'] = F.interpolate(b['images'], size=32, mode='bilinear').clamp(0, 1)  # tiny-janus reads 32 px
    return b


def test_contract_shapes(umm, batch):
    x = batch['images']
    z = umm.encode(x)
    assert z.shape == (4, 16 * 16, umm.hidden_size)                 # SigLIP patches 2 px on 32 px
    assert umm.encode(torch.rand(4, 3, 36, 36)).shape == z.shape     # other sizes are resized
    loss = umm.understand_loss(z, batch['questions'], batch['answers'])
    assert loss.shape == (4,) and loss.dtype == torch.float32 and torch.isfinite(loss).all()
    answers = umm.answer(z, batch['questions'])
    assert len(answers) == 4 and all(isinstance(s, str) for s in answers)
    assert len(umm.caption(x[:2], max_new_tokens=3)) == 2
    assert umm.generate(PROMPTS).shape == (2, 3, 32, 32)


def test_understand_loss_equals_transformers_forward(umm, batch):
    """delta = 0: the per-sample answer CE (batched, left-padded) is what JanusForConditionalGeneration's own forward
    computes from input_ids + pixel_values with the labels masked to the answer."""
    x, q, a = batch['images'], batch['questions'], batch['answers']
    with torch.no_grad():
        per_sample = umm.understand_loss(umm.encode(x), q, a)
        for i in range(4):
            prompt = umm._prompt(q[i])
            assert prompt.count(umm.janus.config.image_token_id) == 256 and prompt[0] == umm.tok.bos_token_id
            target = umm.tok(' ' + a[i], add_special_tokens=False)['input_ids'] + [umm.tok.eos_token_id]
            ids = torch.tensor([prompt + target])
            labels = torch.full_like(ids, -100)
            labels[0, len(prompt):] = torch.tensor(target)
            ref = umm.janus(input_ids=ids, pixel_values=x[i:i + 1] * 2 - 1, labels=labels).loss  # Janus: mean=std=0.5
            torch.testing.assert_close(per_sample[i], ref, rtol=0, atol=1e-5)


def test_delta_reaches_the_llm_and_the_perturber(umm, batch):
    x, q, a = batch['images'], batch['questions'], batch['answers']
    z = umm.encode(x).detach()
    C = Perturber(umm.hidden_size, width=16, eps_max=1.0)
    delta = C(z.float())
    adv = umm.understand_loss(z.float() + delta, q, a)
    assert (adv - umm.understand_loss(z, q, a)).abs().min() > 1e-6
    adv.sum().backward()
    assert C.theta.grad != 0 and C.mlp[0].weight.grad.abs().sum() > 0
    # the generation branch: delta on the post-LM image states; the straight-through decode carries C's gradient
    C.zero_grad()
    x_tilde, delta = umm.decode(x, z, q, perturb=C)
    assert delta.shape == (4, 256, umm.hidden_size) and delta.dtype == torch.float32
    x_tilde.mean().backward()
    assert C.theta.grad != 0 and C.mlp[0].weight.grad.abs().sum() > 0
    with torch.no_grad():  # a strong delta changes the picked codes, so the candidate
        strong = Perturber(umm.hidden_size, width=16, eps_max=50.0)
        assert not torch.equal(umm.decode(x, z, q, perturb=strong)[0], umm.decode(x, z, q)[0])


def test_regen_is_deterministic_and_is_the_vq_decode_of_the_argmax_codes(umm, batch):
    x, q = batch['images'], batch['questions']
    with torch.no_grad():
        x1, delta = umm.decode(x, None, q)
        x2, _ = umm.decode(x, None, q)
        codes = umm.image_codes(x)
        picked = umm.gen_logits(umm.gen_states(codes, q)).argmax(-1)
        ref = ((umm.janus.decode_image_tokens(picked).permute(0, 3, 1, 2) + 1) / 2).clamp(0, 1)  # transformers'
    assert delta is None and codes.shape == picked.shape == (4, 16 * 16)  # the code grid matches x's
    assert x1.shape == x.shape and torch.equal(x1, x2) and 0 <= x1.min() and x1.max() <= 1
    torch.testing.assert_close(x1, ref, rtol=0, atol=1e-4)


def test_t2i_makes_the_grid_and_its_kv_cache_agrees_with_teacher_forcing(umm):
    C = Perturber(umm.hidden_size, width=16)
    with torch.no_grad():
        x_tilde, delta = umm.decode(None, None, PROMPTS, perturb=C, mode='t2i')
        assert x_tilde.shape == (2, 3, 32, 32) and delta.shape == (2, 255, umm.hidden_size)  # one per fed-back code
        # guidance 1 and argmax: one teacher-forced pass over t2i's own codes re-predicts every one of them, so the
        # cache, the positions under left padding and the fed-back embeddings agree between the two paths
        codes, _ = umm.t2i_codes(PROMPTS, temperature=0, cfg_scale=1.0)
        assert codes.shape == (2, 256)
        assert torch.equal(umm.gen_logits(umm.gen_states(codes, PROMPTS)).argmax(-1), codes)
    with pytest.raises(ValueError, match='regen'):  # not differentiable: refused where a gradient is expected
        umm.decode(None, None, PROMPTS, perturb=C, mode='t2i')


def test_bf16_autocast_keeps_losses_and_delta_float32(umm, batch):
    x, q, a = batch['images'], batch['questions'], batch['answers']
    C = Perturber(umm.hidden_size, width=16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        z = umm.encode(x)
        loss = umm.understand_loss(z.float() + C(z.float()), q, a)
        x_tilde, delta = umm.decode(x, z, q, perturb=C)
    assert loss.dtype == delta.dtype == torch.float32 and torch.isfinite(loss).all() and x_tilde.shape == x.shape


def test_lora_only_is_trainable_and_round_trips(tmp_path, batch):
    torch.manual_seed(0)
    a = model.load_backbone('tiny-janus').add_lora(r=4, alpha=8, dropout=0.0)
    trainable = {n for n, p in a.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 4 * 2 and all('language_model' in n and 'lora_' in n for n in trainable)  # layers
    assert {id(p) for p in a.understanding_parameters()} == {id(p) for n, p in a.named_parameters() if 'lora_' in n}
    for p in a.understanding_parameters():  # lora_B starts at zero; give every adapter a non-zero value
        torch.nn.init.normal_(p, std=0.05)
    z = a.encode(batch['images'])
    loss = a.understand_loss(z, batch['questions'], batch['answers'])
    loss.mean().backward()
    for n, p in a.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) if 'lora_' in n else p.grad is None, n
    a.save_trainable(tmp_path)
    torch.manual_seed(0)
    b = model.load_backbone('tiny-janus').add_lora(r=4, alpha=8, dropout=0.0)
    b.load_trainable(tmp_path)
    torch.testing.assert_close(b.understand_loss(z.detach(), batch['questions'], batch['answers']), loss.detach())


def test_bad_backbone_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match='janus-pro-7b.*tiny-janus'):
        model.load_backbone('tiny-janis')


def test_janus_without_weights_fails_with_one_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path))  # an empty cache: nothing is downloaded
    for name in ('janus-pro-7b', 'deepseek-community/Janus-Pro-1B', str(tmp_path)):  # registry, hub id, empty dir
        with pytest.raises(model.MissingWeights, match='HF_HOME') as e:
            model.load_backbone(name)
        assert 'Janus-Pro' in str(e.value) and 'tiny-janus' in str(e.value)


def test_janus_pro_7b_on_the_meta_device():
    umm = model.load_backbone('janus-pro-7b', meta=True)
    assert (umm.hidden_size, umm.image_size, umm.grid) == (4096, 384, 24)
    assert umm.janus.lm_head.weight.shape == (102400, 4096) and umm.janus.lm_head.weight.is_meta
    assert umm.janus.model.generation_head.vision_head.weight.shape == (16384, 4096)  # VQ-16 codebook size
    assert umm.janus.model.aligner.fc1.weight.shape == (4096, 1024)                    # SigLIP-L width -> H
    n = model.count_parameters('janus-pro-7b', perturber_width=256)
    assert 7.3e9 < n['base'] < 7.5e9                        # the released checkpoint: 14.8 GB in bf16
    assert n['lora'] == 30 * 4 * 16 * (4096 + 4096)         # 30 layers x q, k, v, o x r (in + out)
    assert n['perturber'] == 2 * 4096 * 256 + 256 ** 2 + 2 * 256 + 4096 + 1 and n['trainable_share'] < 0.01


def test_the_adapter_loads_with_plain_peft_and_the_merged_dir_with_from_pretrained(tmp_path, batch):
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration
    torch.manual_seed(0)
    umm = model.build_tiny_janus()
    umm.janus.save_pretrained(tmp_path / 'base')                 # the frozen base, as a hub dir would hold it
    umm.add_lora(r=4, alpha=8, dropout=0.0)
    for n, p in umm.lm.named_parameters():                      # a trained adapter: lora_B no longer zero
        if 'lora_B' in n:
            p.data.normal_(0, 0.5)
    umm.eval()
    z = umm.encode(batch['images'])
    ours = umm.understand_loss(z, batch['questions'], batch['answers'])
    umm.save_trainable(tmp_path / 'adapter')

    plain = PeftModel.from_pretrained(JanusForConditionalGeneration.from_pretrained(tmp_path / 'base'),
                                      tmp_path / 'adapter').eval()
    wrapped = [n for n, _ in plain.named_modules() if n.endswith('lora_A')]
    assert wrapped and all('language_model.layers' in n for n in wrapped)  # SigLIP's q_proj stays untouched
    other = model.JanusUMM(plain.get_base_model(), umm.tok, caption_prompt='<caption>')
    torch.testing.assert_close(other.understand_loss(z, batch['questions'], batch['answers']), ours)
    with plain.disable_adapter():  # and the adapter is what makes the difference
        assert (other.understand_loss(z, batch['questions'], batch['answers']) - ours).abs().max() > 1e-3

    umm.export_merged(tmp_path / 'merged')
    merged = model.JanusUMM(JanusForConditionalGeneration.from_pretrained(tmp_path / 'merged').eval(), umm.tok,
                            caption_prompt='<caption>')
    torch.testing.assert_close(merged.understand_loss(z, batch['questions'], batch['answers']), ours,
                               rtol=1e-4, atol=1e-4)
