"""train.py's game as Algorithm 1 composes it, watched from inside a run: by default C ascends Eq. 7 itself (through
G and Enc), with U as a fixed opponent (eval mode: no LoRA dropout), and U's step reads z + delta in float32 under
bf16 autocast (Appendix B.2), and B stays full and ranked by H. The run's outcomes: tests/test_train.py.
Run: python -m pytest -q tests/test_game.py"""

import json

import pytest
import torch

import toy_base
import toy_umm
from train_runner import FAST, run


def spy(monkeypatch, name, record):
    """Wrap ToyUMM.`name` so that each call first records record(umm, *args)."""
    f = getattr(toy_umm.ToyUMM, name)

    def wrapped(self, *a, **kw):
        record(self, *a)
        return f(self, *a, **kw)
    monkeypatch.setattr(toy_umm.ToyUMM, name, wrapped)


@pytest.mark.parametrize('attack', [None, 'token'])
def test_c_ascends_through_g_and_enc_by_default(attack, tmp_path, monkeypatch):
    """Eq. 7 and Algorithm 1 (lines 5-7): by default L_C reads U(Enc(G(z + delta))), so G and Enc run with gradients
    during C's ascent (mining and the frozen encode run without); `--attack token` (Table 4's "adversarial emb.")
    reads U(z + delta) and never needs them."""
    graded = []
    for name in ('decode', 'encode'):
        spy(monkeypatch, name, lambda umm, *a, _name=name: graded.append((_name, torch.is_grad_enabled())))
    run('--init', toy_base.BASE_DIR, '--out_dir', str(tmp_path), '--steps', '1', *FAST,
        *([] if attack is None else ['--attack', attack]))
    assert {n for n, g in graded if g} == ({'decode', 'encode'} if attack is None else set())
    assert ('decode', False) in graded  # mining decoded the candidates in both


def test_c_ascends_against_u_in_eval_mode_and_u_reads_float32_tokens(tmp_path, monkeypatch):
    """Every answer loss of a bf16-autocast run, by who asked: C's ascent (its input carries delta's gradient) must
    see U with its LoRA dropout off; U's step (gradients on, input without one) must get the clean and hard tokens in
    float32, never rounded to bf16 first."""
    calls = []

    def record(umm, z, *_):
        dropout = [m.training for m in umm.modules() if isinstance(m, torch.nn.Dropout)]
        calls.append(dict(grad=torch.is_grad_enabled(), through_delta=z.requires_grad, dtype=z.dtype,
                          dropout=dropout))
    spy(monkeypatch, 'understand_loss', record)
    run('--init', toy_base.BASE_DIR, '--out_dir', str(tmp_path), '--steps', '2', *FAST, '--lora-dropout', '0.1',
        '--dtype', 'bfloat16')
    ascent = [c for c in calls if c['through_delta']]
    u_step = [c for c in calls if c['grad'] and not c['through_delta']]
    assert ascent and u_step and all(c['dropout'] for c in calls)  # LoRA's dropout modules exist
    assert not any(any(c['dropout']) for c in ascent)  # C's opponent is fixed: no dropout
    assert all(all(c['dropout']) for c in u_step)  # U learns with its dropout on
    assert all(c['dtype'] == torch.float32 for c in u_step)


def test_b_fills_to_capacity_and_stays_ranked_by_h_in_the_game(tmp_path):
    """Capacity, ranking and eviction inside the loop (buffer.py's own tests hold them alone): with room for 3 and
    about 4 candidates accepted a step, B is full after the first step and holds the 3 hardest by H, ranked."""
    run('--init', toy_base.BASE_DIR, '--out_dir', str(tmp_path), '--steps', '3', *FAST, '--buffer-size', '3',
        '--log-every', '1')
    buf = torch.load(str(tmp_path / 'rank0.pt'), weights_only=True)['buffer']
    assert len(buf['images']) == 3 and buf['hardness'] == sorted(buf['hardness'], reverse=True)
    rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    assert [r['buffer_kept'] for r in rows] == [0, 3, 3] and sum(r['hard_fresh'] for r in rows) > 3  # some evicted
