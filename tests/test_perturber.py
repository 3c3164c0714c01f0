"""Perturber C: the budget (relative to the RMS token norm) holds for any input, the math is float32 under autocast,
gradients reach the gate and the MLP, and the Eq. 7 penalty matches a plain re-computation.
Run: python -m pytest -q tests/test_perturber.py"""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from perturber import Perturber


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), n=st.integers(1, 9), h=st.integers(1, 48), eps_max=st.floats(1e-4, 5.0),
       scale=st.floats(1e-6, 1e4), init=st.floats(0.01, 0.99), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       seed=st.integers(0, 2**16))
def test_delta_never_exceeds_budget(b, n, h, eps_max, scale, init, dtype, seed):
    torch.manual_seed(seed)
    c = Perturber(h, width=max(1, h // 2), eps_max=eps_max, eps_init=init)
    z = (torch.randn(b, n, h) * scale).to(dtype)
    delta = c(z)
    assert delta.shape == z.shape and delta.dtype == dtype
    norms = delta.float().norm(dim=-1)                                       # (b, n)
    rms = z.float().pow(2).sum(-1).mean(-1, keepdim=True).sqrt()            # (b, 1): the unit of eps
    assert torch.isfinite(norms).all()
    assert (norms <= eps_max * rms * (1 + 1e-2)).all()  # bf16 output rounds the norm by at most ~0.4%
    assert 0 <= c.eps.item() <= eps_max


def test_gate_cannot_leave_budget_even_when_pushed():
    c = Perturber(8, eps_max=0.02)
    with torch.no_grad():
        c.theta.fill_(1e4)
    assert c.eps.item() <= 0.02
    with torch.no_grad():
        c.theta.fill_(-1e4)
    assert c.eps.item() >= 0.0


def test_math_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    c = Perturber(16, eps_max=0.02)
    z = torch.randn(2, 5, 16)
    seen = []
    hook = c.mlp[-1].register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.nn.Linear(16, 16)(z).dtype == torch.bfloat16  # autocast really is on in this block
        delta = c(z)
    hook.remove()
    assert seen == [(torch.float32, torch.float32)]
    assert delta.dtype == torch.float32  # input dtype
    ref = c(z)  # outside autocast, plain float32
    torch.testing.assert_close(delta, ref, rtol=0, atol=0)


def test_matches_plain_formula():
    torch.manual_seed(1)
    c = Perturber(6, width=4, eps_max=0.5, eps_init=0.3)
    z = torch.randn(3, 2, 6)
    l1, l2, l3 = c.mlp[0], c.mlp[2], c.mlp[4]
    d = l3(torch.nn.functional.gelu(l2(torch.nn.functional.gelu(l1(z)))))
    rms = (z ** 2).sum(-1).mean(-1).sqrt()[:, None, None]  # sqrt of the mean squared token norm, per sample
    expected = 0.5 * 0.3 * rms * d / d.norm(dim=-1, keepdim=True)  # eps = eps_max * sigmoid(logit(0.3))
    torch.testing.assert_close(c(z), expected, rtol=1e-5, atol=1e-7)


def test_gradients_reach_gate_and_mlp():
    torch.manual_seed(2)
    c = Perturber(8, width=16, eps_max=0.1)
    z = torch.randn(4, 3, 8)
    target = torch.randn(8)
    loss = ((z + c(z)) @ target).sum() - c.penalty(lam=1.0)
    loss.backward()
    for name, p in c.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_penalty_is_the_mean_squared_relative_token_norm():
    """lam · mean_i (||delta_i|| / rms(z))^2, recomputed from the delta C returns, for tokens of very different size."""
    torch.manual_seed(3)
    c = Perturber(8, width=8, eps_max=0.4, eps_init=0.25)
    for size in (1.0, 6.0, 600.0):
        z = torch.randn(3, 5, 8) * size
        delta = c(z)
        rms = z.pow(2).sum(-1).mean(-1).sqrt()[:, None]                      # (3, 1)
        by_hand = 2.0 * (delta.norm(dim=-1) / rms).pow(2).mean(-1)          # (3,)
        pen = c.penalty(lam=2.0)
        assert pen.dtype == torch.float32
        torch.testing.assert_close(pen.expand(3), by_hand, rtol=1e-5, atol=0)


def test_eps_is_relative_to_the_token_norm():
    """The same C moves tokens of norm about 6 and about 600 by the same share of their size: eps."""
    torch.manual_seed(4)
    c = Perturber(16, eps_max=0.02)
    z = torch.randn(2, 9, 16)
    for k in (1.0, 100.0):
        share = c(k * z).norm(dim=-1) / (k * z).pow(2).sum(-1).mean(-1, keepdim=True).sqrt()
        torch.testing.assert_close(share, torch.full_like(share, c.eps.item()), rtol=1e-5, atol=0)


def test_default_width_and_paper_parameter_count():
    assert Perturber(32).width == 32
    # width 256 on Janus-Pro-7B's H = 4096 (counted on the meta device, nothing allocated)
    with torch.device('meta'):
        n = sum(p.numel() for p in Perturber(4096, width=256).parameters())
    assert n == 2 * 4096 * 256 + 256 * 256 + (256 + 256 + 4096) + 1  # weights, biases, the gate
    assert round(n / 1e6, 1) == 2.2  # the paper's "2.1M" is this size (it does not give the width)


@pytest.mark.parametrize('kwargs, word', [(dict(hidden_size=8, eps_max=0.0), 'eps_max'),
                                          (dict(hidden_size=8, eps_max=-1.0), 'eps_max'),
                                          (dict(hidden_size=8, eps_max=float('nan')), 'eps_max'),
                                          (dict(hidden_size=8, width=0), 'width'),
                                          (dict(hidden_size=0), 'hidden_size'),
                                          (dict(hidden_size=8, eps_init=1.0), 'eps_init')])
def test_bad_arguments_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Perturber(**kwargs)


def test_bad_input_shape_is_named():
    c = Perturber(8)
    with pytest.raises(ValueError, match='z must'):
        c(torch.randn(2, 8))
    with pytest.raises(ValueError, match='z must'):
        c(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match='lam'):
        c.penalty(lam=-1)
