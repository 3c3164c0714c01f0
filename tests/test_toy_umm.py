"""The toy UMM and the UMM contract on `tiny-toy`: offline construction, shapes, per-sample losses, LoRA-only
gradients, a differentiable decoder, the reference CE, and the clear error for missing pretrained weights.
Run: python -m pytest -q tests/test_toy_umm.py"""

import pytest
import torch
import torch.nn.functional as F

import data
import model
import toy_umm


@pytest.fixture(scope='module')
def umm():
    torch.manual_seed(0)
    return model.load_backbone('tiny-toy').eval()


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
    umm = model.load_backbone('tiny-toy').add_lora(r=4, alpha=8, dropout=0.0)
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
    a = model.load_backbone('tiny-toy').add_lora(r=4, alpha=8, dropout=0.0)
    for p in a.understanding_parameters():
        torch.nn.init.normal_(p, std=0.05)
    a.save_trainable(tmp_path)
    torch.manual_seed(0)
    b = model.load_backbone('tiny-toy').add_lora(r=4, alpha=8, dropout=0.0)
    b.load_trainable(tmp_path)
    z = a.encode(batch['images'])
    torch.testing.assert_close(a.understand_loss(z, batch['questions'], batch['answers']),
                               b.understand_loss(z, batch['questions'], batch['answers']))


def test_base_checkpoint_round_trip_and_bad_init(tmp_path, batch):
    a = model.load_backbone('tiny-toy')
    toy_umm.save_base(a, tmp_path)
    b = model.load_backbone('tiny-toy', init=str(tmp_path))
    z = a.encode(batch['images'])
    torch.testing.assert_close(z, b.encode(batch['images']))
    with pytest.raises(FileNotFoundError, match='--init'):
        model.load_backbone('tiny-toy', init=str(tmp_path / 'nope'))


def test_tokenizer_round_trips_the_vocabulary():
    tok = toy_umm.word_tokenizer()
    text = ' '.join(data.VOCAB)
    ids = tok(text, add_special_tokens=False)['input_ids']
    assert tok.unk_token_id not in ids and len(ids) == len(data.VOCAB)
    assert tok.decode(ids) == text


def test_wrong_backbone_lists_valid_names():
    with pytest.raises(ValueError, match='tiny-toy'):
        model.load_backbone('tiny-tyo')


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
        model.load_backbone('toy')
    assert 'siglip2' in str(e.value).lower() and 'tiny-toy' in str(e.value)
