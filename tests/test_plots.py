"""plots.py, the pictures of a run directory: --plot writes its curves and a gallery (none for a token-space run, the
consumed entries when replay drained the buffer), the gallery's difference column and titles show where and how much
delta changed a candidate against G(z), checked against a plain computation, the step cost leaves out step 0, and bad
paths fail naming themselves. Run: python -m pytest -q tests/test_plots.py"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

import data
import plots
from buffer import HardBuffer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(run, space='decoded', consume=False, candidates=None, originals=None):
    """metrics.jsonl with three logged steps and a rank0.pt whose buffer holds six val images (or tokens), or the
    given candidates beside their originals."""
    rows = [dict(step=s, L_U=1 / (s + 1), eps=0.02 - s * 1e-4, L_C=None if s == 0 else 5 + s, asr=0.2,
                 buffer_kept=min(50, 13 * (s + 1)), H_mean=None if s == 0 else 0.5 + s / 100, step_time=0.1)
            for s in range(0, 30, 10)]
    with open(run / 'metrics.jsonl', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    n = 6 if candidates is None else len(candidates)
    buffer, ds = HardBuffer(50, space=space), data.ShapesVQA('val', n)
    items = data.collate([ds[i] for i in range(n)])
    stored = items['images'] if space == 'decoded' else torch.randn(6, 36, 128)            # (6, 3, 36, 36) or tokens
    stored = stored if candidates is None else candidates
    buffer.push(stored, items['questions'], items['answers'], torch.arange(float(n), 0, -1), step=3,
                qtypes=items['qtypes'], originals=originals)  # H n, ..., 1: the buffer keeps the given order
    if consume:  # --buffer-policy consume: replay has drained B, what it learnt from is in `spent`
        buffer.sample(6, remove=True)
    torch.save(dict(step=30, buffer=buffer.state_dict()), run / 'rank0.pt')


def test_plot_writes_curves_and_a_gallery(run_dir, tmp_path, capsys):
    root, _ = run_dir
    _fake_run(root / 'run')
    written = plots.plot_run(str(root / 'run'))
    names = ('eps.png', 'losses.png', 'buffer.png', 'gallery.png')
    assert sorted(written) == sorted(str(root / 'run' / 'plots' / n) for n in names)
    for path in written:
        assert Image.open(path).size[0] > 300
    assert 'without predictions' not in capsys.readouterr().out  # the adapter loaded: predictions are drawn
    (tmp_path / 'token').mkdir()  # a token-space run: curves, and no gallery (no images), with a message
    _fake_run(tmp_path / 'token', space='token')
    written = plots.plot_run(str(tmp_path / 'token'))
    assert [os.path.basename(p) for p in written] == ['eps.png', 'losses.png', 'buffer.png']
    assert 'token-space' in capsys.readouterr().out
    (tmp_path / 'consume').mkdir()  # B drained by --buffer-policy consume: the gallery draws what was consumed
    _fake_run(tmp_path / 'consume', consume=True)
    written = plots.plot_run(str(tmp_path / 'consume'))
    assert [os.path.basename(p) for p in written] == ['eps.png', 'losses.png', 'buffer.png', 'gallery.png']


def test_the_buffer_curve_reads_what_train_py_logs(tmp_path):
    """buffer.png draws metrics.jsonl's buffer_kept (metrics.py's key), even where no H_mean was logged."""
    rows = [dict(step=s, buffer_kept=13.0 * (s + 1), H_mean=None) for s in range(3)]
    (tmp_path / 'plots').mkdir()
    with open(tmp_path / 'metrics.jsonl', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    written = plots.plot_run(str(tmp_path))
    assert [os.path.basename(p) for p in written] == ['buffer.png']


def test_candidate_difference_is_the_max_and_mean_absolute_difference_in_255ths():
    torch.manual_seed(0)
    a, b = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    b[0] = a[0]  # no change at all
    biggest, mean = plots.candidate_difference(a, b)
    plain = [np.abs(a[i].numpy().astype(np.float64) - b[i].numpy()) * 255 for i in range(3)]  # (3, 8, 8) each
    assert biggest.shape == mean.shape == (3,)
    assert torch.allclose(biggest, torch.tensor([d.max() for d in plain], dtype=torch.float32), atol=1e-3)
    assert torch.allclose(mean, torch.tensor([d.mean() for d in plain], dtype=torch.float32), atol=1e-3)
    assert biggest[0] == 0 and mean[0] == 0


def test_the_gallery_shows_where_delta_changed_a_candidate(run_dir, tmp_path, monkeypatch):
    """Two candidates beside their originals: one equal to G(z), one G(z) with a 4 x 4 patch moved by 0.25 in every
    channel. The first panel's difference column is black and titled max 0; the second's is white on the patch only
    (x4, clipped) and titled with 0.25 * 255 = 63.75 -> 64 and its mean over 3 x 36 x 36 values, 0.8."""
    root, umm = run_dir
    run = tmp_path / 'run'
    run.mkdir()
    for name in ('adapter', 'config.json'):
        os.symlink(root / 'run' / name, run / name)
    originals = data.collate([data.ShapesVQA('val', 2)[i] for i in range(2)])['images']   # (2, 3, 36, 36)
    clean = (originals * 255).round() / 255                                                # as the buffer stores it
    with torch.no_grad():
        decoded = umm.render(umm.encode(clean)).float()                                    # (2, 3, 36, 36) G(z)
    candidates = decoded.clone()
    patch = candidates[1, :, 10:14, 10:14]                                                 # (3, 4, 4)
    candidates[1, :, 10:14, 10:14] = torch.where(patch > 0.5, patch - 0.25, patch + 0.25)
    _fake_run(run, candidates=candidates, originals=originals)
    figures, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, 'savefig', lambda fig, *a, **k: (figures.append(fig), savefig(fig, *a, **k))[1])
    assert plots.plot_gallery(str(run), str(tmp_path / 'gallery.png')) == str(tmp_path / 'gallery.png')
    axes = [ax for ax in figures[0].axes if ax.images]
    assert len(axes) == 2 and '|candidate - G(z)| x4' in figures[0].get_suptitle()
    assert 'max 0, mean 0.0 /255' in axes[0].get_title()
    assert 'max 64, mean 0.8 /255' in axes[1].get_title()
    for j, ax in enumerate(axes):
        panel = np.asarray(ax.images[0].get_array())                                       # (36, 4 * 36, 3)
        assert panel.shape == (36, 144, 3)
        assert np.allclose(panel[:, 72:108], candidates[j].permute(1, 2, 0).numpy())      # the candidate, third
        heat = panel[:, 108:, 0]                                                           # (36, 36), gray
        assert np.allclose(panel[:, 108:, 1], heat) and np.allclose(panel[:, 108:, 2], heat)
        inside = np.zeros((36, 36), dtype=bool)
        inside[10:14, 10:14] = j == 1
        assert np.allclose(heat[inside], 1, atol=1e-3) and np.allclose(heat[~inside], 0, atol=1e-3)


def test_step_cost_leaves_out_step_zero_and_divides_by_the_first_run(tmp_path, capsys):
    for name, times in (('sft', [9.0, 0.10, 0.20]), ('ug', [9.0, 0.30, 0.30])):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / 'metrics.jsonl', 'w') as f:
            f.writelines(json.dumps({'step': i, 'step_time': t, 'phase_time': dict(challenge=t / 4, understand=t / 2)})
                         + '\n' for i, t in enumerate(times))
    means = plots.step_cost([str(tmp_path / 'sft'), str(tmp_path / 'ug')])
    assert abs(means[str(tmp_path / 'sft')] - 0.15) < 1e-9 and abs(means[str(tmp_path / 'ug')] - 0.30) < 1e-9
    out = capsys.readouterr().out
    assert '2.00x' in out and 'challenge 37.5  understand 75.0' in out and 'challenge 75.0  understand 150.0' in out


def test_bad_paths_fail_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='metrics.jsonl'):
        plots.plot_run(str(tmp_path))
    for cli in (['evaluate.py', '--plot'], ['plots.py']):  # evaluate.py --plot is plots.py
        r = subprocess.run([sys.executable, *cli, str(tmp_path / 'nowhere')], capture_output=True, text=True,
                           cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'})
        assert r.returncode == 2 and 'metrics.jsonl' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
