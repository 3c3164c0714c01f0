"""What lets a 7B run fit one GPU, checked on tiny-janus: --micro-batch gives the same update as one pass, activation
checkpointing gives the same gradients and really recomputes (in C's ascent too, where U is in eval mode).
Run: python -m pytest -q tests/test_memory.py"""

import os

import torch

import tiny_janus
from fixtures_vqa import write_vqa
from train_runner import run as train_run


def run(tmp_path, name, *flags):
    q, a, images = write_vqa(str(tmp_path / 'data'), images=4, per_image=3)
    out = str(tmp_path / name)
    train_run('--backbone', 'tiny-janus', '--data', 'vqav2', '--questions', q, '--annotations', a, '--images', images,
              '--steps', '2', '--batch-size', '4', '--filter', 'none', '--log-every', '1', '--val-size', '0',
              '--lora-dropout', '0', '--out_dir', out, *flags)  # in this process (train_runner.run)
    return torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)


def assert_same_weights(a, b, rtol):
    # atol 1e-6, well below an Adam step (lr 5e-3 for C): Adam divides by sqrt(v), so where a gradient is near 0 the
    # rounding of another summation order grows (perturber mlp.2.bias, 2026-12-06 on an AVX512 CPU: 1.08e-7 off at
    # 1.3e-4, over the earlier atol of 1e-7); a wrong split of the batch moves weights by about a step
    for part in ('trainable', 'perturber'):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            if a[part][k].is_floating_point():
                torch.testing.assert_close(a[part][k], b[part][k], rtol=rtol, atol=1e-6, msg=f"{part} {k}")


def test_micro_batches_and_checkpointing_give_the_update_of_one_pass(tmp_path):
    one = run(tmp_path, 'one')                                   # batch 4 in one pass, C stepping and U stepping
    split = run(tmp_path, 'split', '--micro-batch', '3')         # chunks of 3 + 1 (and of the hard rows)
    ckpt = run(tmp_path, 'ckpt', '--micro-batch', '2', '--activation-checkpointing', 'on')
    assert one['step'] == split['step'] == ckpt['step'] == 2
    assert any((v != 0).any() for k, v in one['trainable'].items() if 'lora_B' in k)  # U really moved
    assert_same_weights(one, split, rtol=1e-5)
    assert_same_weights(one, ckpt, rtol=1e-5)


def test_checkpointing_recomputes_layers_even_while_c_ascends_with_u_in_eval_mode():
    torch.manual_seed(0)
    umm = tiny_janus.build_tiny_janus().add_lora(dropout=0.5)
    mlp, calls = umm.lm.base_model.model.layers[0].mlp, []  # inside a checkpointed layer (hooks skip recomputes)
    forward = mlp.forward
    mlp.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    z = umm.encode(torch.rand(2, 3, 32, 32)).detach().requires_grad_()

    def grad():
        calls.clear()
        umm.understand_loss(z, ['how many', 'what color'], ['2', 'red']).sum().backward()
        g, z.grad = z.grad.clone(), None
        return g, len(calls)

    umm.eval()
    plain, n_plain = grad()
    umm.checkpoint_activations().eval_with_gradients()
    checkpointed, n_ckpt = grad()
    assert n_plain == 1 and n_ckpt == 2  # the layer ran again in backward
    assert torch.equal(plain, checkpointed)  # and no dropout: LoRA's p = 0.5 would change every gradient
    assert not any(m.training for m in umm.modules() if isinstance(m, torch.nn.Dropout))


def test_saved_bytes_counts_what_autograd_keeps_by_hand():
    import memory
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(5, 8, requires_grad=True)
    # Linear keeps its input (5 x 8 float32) and its weight (a parameter: not activation memory); ReLU its output
    assert memory.saved_bytes(lambda: lin(x).sum(), lin.parameters()) == 5 * 8 * 4
    assert memory.saved_bytes(lambda: torch.relu(lin(x)).sum(), lin.parameters()) == 5 * 8 * 4 + 5 * 4 * 4
    with torch.no_grad():
        assert memory.saved_bytes(lambda: torch.relu(lin(x)).sum(), lin.parameters()) == 0


def test_fit_recovers_a_linear_and_a_quadratic_term():
    import memory
    lin, quad = memory.fit((16, 32), (16 * 100 + 256 * 3, 32 * 100 + 1024 * 3))
    assert abs(lin - 100) < 1e-9 and abs(quad - 3) < 1e-9
