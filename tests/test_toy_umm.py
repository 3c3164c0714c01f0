"""The toy UMM and the UMM contract on `tiny-toy`: offline construction, shapes, per-sample losses, LoRA-only
gradients, a differentiable decoder, the reference CE, the clear error for missing pretrained weights, the
shape-tested diffusion decoder (img2img, differentiable in z, perturbed, loads over a VAE base), and packed question
turns that equal their own passes (pretraining is tests/test_pretrain.py).
Run: python -m pytest -q tests/test_toy_umm.py"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import backbones
import data
import model
import toy_base
import toy_umm


@pytest.fixture(scope='module')
def umm():
    torch.manual_seed(0)
    return backbones.load_backbone('tiny-toy').eval()


@pytest.fixture(scope='module')
def batch():
    ds = data.ShapesVQA('val', 6)
    return data.collate([ds[i] for i in range(6)])


def test_contract_shapes(umm, batch):
    x = batch['images']
    z = umm.encode(x)
    assert z.shape == (6, (36 // 6) ** 2, umm.hidden_size)
    loss = umm.understand_loss(z, batch['questions'], batch['answers'])
    assert loss.shape == (6,) and loss.dtype == torch.float32 and torch.isfinite(loss).all()
    x_tilde, delta = umm.decode(x, z, batch['questions'])
    assert x_tilde.shape == x.shape and delta is None and 0 <= x_tilde.min() and x_tilde.max() <= 1
    assert umm.generate(batch['captions']).shape == x.shape
    answers = umm.answer(z, batch['questions'])
    assert len(answers) == 6 and all(isinstance(a, str) for a in answers)
    assert len(umm.caption(x[:2], max_new_tokens=3)) == 2


def test_understand_loss_is_per_sample_and_equals_plain_ce(umm, batch):
    z = umm.encode(batch['images'])
    q, a = batch['questions'], batch['answers']
    per_sample = umm.understand_loss(z, q, a)
    # reference: one sample at a time, the plain next-token CE over [answer, <eos>] from the full logits
    for i in range(3):
        prompt = umm.tok(f"{q[i]} <answer>", add_special_tokens=False)['input_ids']
        target = umm.tok(a[i], add_special_tokens=False)['input_ids'] + [umm.tok.eos_token_id]
        ids = torch.tensor([prompt + target])
        embeds = torch.cat([z[i:i + 1], umm.lm.get_input_embeddings()(ids)], 1)
        # Qwen2.5-VL's M-RoPE: image token k of the 6x6 grid at (t, h, w) = (0, k // 6, k % 6), text at 6, 7, ...
        image_pos = [[0] * 36, [k // 6 for k in range(36)], [k % 6 for k in range(36)]]
        text_pos = [[6 + j for j in range(ids.shape[1])]] * 3
        positions = torch.tensor([a + b for a, b in zip(image_pos, text_pos)])[:, None, :]  # (3, 1, N + L)
        logits = umm.lm_head(umm.lm(inputs_embeds=embeds, position_ids=positions).last_hidden_state)[0]  # (N + L, V)
        start = z.shape[1] + len(prompt) - 1  # the state before the first answer token predicts it
        ref = F.cross_entropy(logits[start:start + len(target)].float(), torch.tensor(target))
        torch.testing.assert_close(per_sample[i], ref, rtol=1e-4, atol=1e-5)
    # per-sample means the batch does not mix samples: sample 0 alone gives the same loss
    torch.testing.assert_close(umm.understand_loss(z[:1], q[:1], a[:1])[0], per_sample[0], rtol=1e-4, atol=1e-5)


def test_packed_questions_and_caption_equal_their_own_passes(umm, batch, monkeypatch):
    z = umm.encode(batch['images']).detach().requires_grad_()
    ds = data.ShapesVQA('val', 6)
    asked = [data.question_set(s, np.random.default_rng(i)) for i, s in enumerate(ds.scenes)]
    asked[0] = []  # an image asked nothing still gets its caption loss
    per_question, per_caption = umm.questions_and_caption_loss(z, asked, batch['captions'])
    owner = [i for i, pairs in enumerate(asked) for _ in pairs]
    alone = umm.understand_loss(z[owner], [q for p in asked for q, _ in p], [a for p in asked for _, a in p])
    assert per_question.shape == (len(owner),) and len(owner) > 2 * len(asked)
    torch.testing.assert_close(per_question, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_caption, umm.caption_loss(z, batch['captions']), rtol=1e-4, atol=1e-5)
    # each question's gradient reaches its own image's tokens only
    grad = torch.autograd.grad(per_question.sum(), z)[0].abs().flatten(1).sum(1)  # (B,)
    assert grad[0] == 0 and (grad[1:] > 0).all()
    # the same under eager attention, which adds the mask to the scores instead of passing it to sdpa
    monkeypatch.setattr(umm.lm.config, '_attn_implementation', 'eager')
    eager, _ = umm.questions_and_caption_loss(z, asked, batch['captions'])
    torch.testing.assert_close(eager, alone, rtol=1e-4, atol=1e-5)
    # flash-attention would drop the mask: packing refuses it rather than let turns read each other
    monkeypatch.setattr(umm.lm.config, '_attn_implementation', 'flash_attention_2')
    with pytest.raises(ValueError, match='flash-attention'):
        umm.questions_and_caption_loss(z, asked, batch['captions'])
    monkeypatch.setattr(umm.lm.config, '_attn_implementation', 'eager')
    # the mask and the restarted positions are what make them equal: read as one text, later turns see earlier ones
    plain = umm._lm_hidden
    monkeypatch.setattr(umm, '_lm_hidden', lambda z, ids, segments=None: plain(z, ids))
    unmasked, _ = umm.questions_and_caption_loss(z, asked, batch['captions'])
    first = torch.tensor([k == 0 for pairs in asked for k in range(len(pairs))])
    torch.testing.assert_close(unmasked[first], alone[first], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmasked[~first], alone[~first], rtol=1e-3)


def test_column_captions_add_their_own_turn(umm, batch):
    ds = data.ShapesVQA('val', 6)
    asked = [data.question_set(s, np.random.default_rng(i)) for i, s in enumerate(ds.scenes)]
    by_col = [data.caption(s, by='col') for s in ds.scenes]
    z = umm.encode(batch['images'])
    per_question, per_caption = umm.questions_and_caption_loss(z, asked, batch['captions'], by_col)
    plain_question, plain_caption = umm.questions_and_caption_loss(z, asked, batch['captions'])
    column_alone = umm._target_loss(z, umm._ids([umm.marks['column_caption']] * len(by_col)), umm._ids(by_col))
    torch.testing.assert_close(per_question, plain_question, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_caption, plain_caption + column_alone, rtol=1e-4, atol=1e-5)
    assert (column_alone > 0).all()


def test_fresh_position_table_is_a_row_half_and_a_column_half():
    table = toy_umm.build_tiny_toy().vision.embeddings.position_embedding.weight.detach()
    g = toy_umm.TINY['image_size'] // toy_umm.TINY['patch_size']
    grid = table.reshape(g, g, -1)                    # (row, col, width), the patches' row-major order
    half = table.shape[1] // 2
    by_row, by_col = grid[..., :half], grid[..., half:]
    assert torch.allclose(by_row, by_row[:, :1]) and torch.allclose(by_col, by_col[:1])  # each reads one axis
    assert by_row.std(0).mean() > 0.1 and by_col.std(1).mean() > 0.1                   # and tells its values apart
    assert table.pow(2).mean().sqrt() > 0.5                                            # at the patches' scale


def test_decode_is_differentiable_in_z_and_perturb_is_applied(umm, batch):
    from perturber import Perturber
    z = umm.encode(batch['images']).detach().requires_grad_()
    x_tilde, _ = umm.decode(batch['images'], z, batch['questions'])
    x_tilde.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    c = Perturber(umm.hidden_size, width=16, eps_max=0.5)
    x_pert, delta = umm.decode(batch['images'], z.detach(), batch['questions'], perturb=c)
    assert delta.dtype == torch.float32 and delta.shape == z.shape
    torch.testing.assert_close(x_pert, umm.render(z.detach() + delta))  # delta lands on the shared tokens
    x_pert.sum().backward()
    assert c.theta.grad is not None and c.theta.grad != 0


def test_lora_gets_gradients_and_nothing_else(batch):
    torch.manual_seed(0)
    umm = backbones.load_backbone('tiny-toy').add_lora(r=4, alpha=8, dropout=0.0)
    trainable = {n for n, p in umm.named_parameters() if p.requires_grad}
    assert trainable and all('lora_' in n for n in trainable)
    assert {id(p) for p in umm.understanding_parameters()} == {id(p) for n, p in umm.named_parameters()
                                                                if 'lora_' in n}
    for p in umm.understanding_parameters():  # lora_B starts at zero; give every adapter a non-zero value
        torch.nn.init.normal_(p, std=0.02)
    z = umm.encode(batch['images'])
    umm.understand_loss(z, batch['questions'], batch['answers']).mean().backward()
    for n, p in umm.named_parameters():
        if 'lora_' in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_lora_save_load_round_trip(tmp_path, batch):
    torch.manual_seed(0)
    a = backbones.load_backbone('tiny-toy').add_lora(r=4, alpha=8, dropout=0.0)
    for p in a.understanding_parameters():
        torch.nn.init.normal_(p, std=0.05)
    a.save_trainable(tmp_path)
    torch.manual_seed(0)
    b = backbones.load_backbone('tiny-toy').add_lora(r=4, alpha=8, dropout=0.0)
    b.load_trainable(tmp_path)
    z = a.encode(batch['images'])
    torch.testing.assert_close(a.understand_loss(z, batch['questions'], batch['answers']),
                               b.understand_loss(z, batch['questions'], batch['answers']))


def test_base_checkpoint_round_trip_and_bad_init(tmp_path, batch):
    a = backbones.load_backbone('tiny-toy')
    toy_base.save_base(a, tmp_path)
    b = backbones.load_backbone('tiny-toy', init=str(tmp_path))
    z = a.encode(batch['images'])
    torch.testing.assert_close(z, b.encode(batch['images']))
    with pytest.raises(toy_base.BaseError, match='--init'):
        backbones.load_backbone('tiny-toy', init=str(tmp_path / 'nope'))


# ---- decoder='diffusion': shape-tested only (a tiny UNet does not train on a CPU, ../shared/FEASIBILITY.md) ----

@pytest.fixture(scope='module')
def diffusion_umm():
    torch.manual_seed(0)
    return backbones.load_backbone('tiny-toy', decoder='diffusion').eval()


def test_default_decoder_is_the_one_step_vae(umm):
    assert umm.decoder == 'vae' and umm.unet is None and not hasattr(umm, 'cross_adapter')
    assert not any(k.startswith(('unet.', 'cross_adapter.')) for k in umm.state_dict())
    with pytest.raises(ValueError, match="'vae' or 'diffusion'"):
        toy_umm.build_tiny_toy(decoder='unet')


def test_diffusion_decode_is_img2img_differentiable_and_perturbed(diffusion_umm, batch):
    from diffusers import UNet2DConditionModel
    from perturber import Perturber
    umm, x, q = diffusion_umm, batch['images'], batch['questions']
    assert umm.decoder == 'diffusion' and isinstance(umm.unet, UNet2DConditionModel)
    z = umm.encode(x).detach().requires_grad_()
    torch.manual_seed(1)
    x_tilde, delta = umm.decode(x, z, q)
    assert x_tilde.shape == x.shape and delta is None and 0 <= x_tilde.min() and x_tilde.max() <= 1
    assert not torch.allclose(x_tilde, umm.render(z))  # the UNet's output, not the one-step VAE render
    x_tilde.sum().backward()  # z reaches the output only through cross-attention
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    torch.manual_seed(1)  # the same noise: img2img starts from x's latents, so other images give other outputs
    assert not torch.allclose(umm.decode(x.flip(0), z.detach(), q)[0], x_tilde.detach())
    c = Perturber(umm.hidden_size, width=16, eps_max=0.5)
    torch.manual_seed(1)
    x_pert, delta = umm.decode(x, z.detach(), q, perturb=c)
    assert delta.shape == z.shape and not torch.allclose(x_pert, x_tilde.detach())
    torch.manual_seed(1)
    torch.testing.assert_close(x_pert, umm.diffuse(z.detach() + delta, x))  # delta lands on the shared tokens
    x_pert.sum().backward()
    assert c.theta.grad is not None and c.theta.grad != 0


def test_diffusion_generate_starts_from_noise(diffusion_umm, batch):
    torch.manual_seed(2)
    images = diffusion_umm.generate(batch['captions'][:2])
    assert images.shape == (2, 3, 36, 36) and 0 <= images.min() and images.max() <= 1
    assert not torch.allclose(images, diffusion_umm.render(diffusion_umm.predict_tokens(batch['captions'][:2])))


def test_diffusion_decoder_loads_a_vae_base_and_mismatched_bases_fail(tmp_path, batch, capsys):
    base = backbones.load_backbone('tiny-toy')
    toy_base.save_base(base, tmp_path / 'base')
    umm = backbones.load_backbone('tiny-toy', init=str(tmp_path / 'base'), decoder='diffusion')  # UNet, adapter new
    assert 'UNet' in capsys.readouterr().out
    torch.testing.assert_close(umm.encode(batch['images']), base.encode(batch['images']))
    torch.testing.assert_close(umm.render(umm.encode(batch['images'])), base.render(base.encode(batch['images'])))
    toy_base.save_base(umm, tmp_path / 'with_unet')  # extra keys for the default decoder
    with pytest.raises(toy_base.BaseError, match="unexpected \\['cross_adapter"):
        backbones.load_backbone('tiny-toy', init=str(tmp_path / 'with_unet'))
    state = {k: v for k, v in base.state_dict().items() if k != 'queries'}  # a key of the base itself is missing
    torch.save({'backbone': 'tiny-toy', 'state_dict': state}, tmp_path / 'broken.pt')
    with pytest.raises(toy_base.BaseError, match="missing \\['queries'\\]"):
        backbones.load_backbone('tiny-toy', init=str(tmp_path / 'broken.pt'), decoder='diffusion')


def test_tokenizer_round_trips_the_vocabulary():
    tok = toy_umm.word_tokenizer()
    text = ' '.join(data.VOCAB)
    ids = tok(text, add_special_tokens=False)['input_ids']
    assert tok.unk_token_id not in ids and len(ids) == len(data.VOCAB)
    assert tok.decode(ids) == text


def test_wrong_backbone_lists_valid_names():
    with pytest.raises(ValueError, match='tiny-toy'):
        backbones.load_backbone('tiny-tyo')


def test_bad_images_are_named(umm):
    with pytest.raises(ValueError, match='images'):
        umm.encode(torch.rand(2, 36, 36))
    with pytest.raises(ValueError, match='36x36'):
        umm.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        umm.encode(torch.rand(2, 3, 36, 36) * 255)


def test_toy_without_weights_fails_with_one_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path))  # an empty cache
    with pytest.raises(model.MissingWeights, match='HF_HOME') as e:
        backbones.load_backbone('toy')
    assert 'siglip2' in str(e.value).lower() and 'tiny-toy' in str(e.value)


def test_the_toy_from_bf16_checkpoints_reads_z_plus_delta_in_float32(tmp_path, batch):
    """`toy` loads Qwen2.5-VL and SigLIP2 in their checkpoints' bf16; z + delta must still reach the LM and G's
    adapter in float32 (Appendix B.2's fp32 perturbation math): a cast to the weights' dtype keeps ~8 bits of it."""
    import smoke
    smoke.build_toy('tiny-toy', None, torch.bfloat16, str(tmp_path))  # the parts, saved in bf16 as on the hub
    umm = toy_umm.build_toy(siglip=str(tmp_path / 'siglip'), qwen=str(tmp_path / 'qwen'), sd=str(tmp_path / 'sd'))
    assert umm.lm_head.weight.dtype == torch.bfloat16  # the checkpoint's dtype: what this test is about
    seen = {}
    umm.lm.register_forward_pre_hook(lambda m, a, kw: seen.update(lm=kw['inputs_embeds'].dtype), with_kwargs=True)
    umm.adapter.register_forward_pre_hook(lambda m, a: seen.update(adapter=a[0].dtype))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        z = umm.encode(batch['images']).float()
        tokens = z + 1e-3 * z.pow(2).mean(-1, keepdim=True).sqrt() * torch.randn_like(z)  # a small float32 delta
        ce = umm.understand_loss(tokens, batch['questions'], batch['answers'])
        x = umm.render(tokens)
    assert seen == {'lm': torch.float32, 'adapter': torch.float32}
    assert torch.isfinite(ce).all() and x.shape == batch['images'].shape
