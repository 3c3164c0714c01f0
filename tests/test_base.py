"""The tiny-toy base the repository ships (weights/tiny-toy): it loads strictly into the current code, it answers a
fixed val slice as well as the README says, and a missing, truncated or foreign base.pt fails with one clear line.
Run: python -m pytest -q tests/test_base.py   (about 30 s on 2 cores)"""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import data
import evaluate
import toy_base
import toy_umm
from judge import Judge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICE = 500  # the first 500 val questions: about 2 s of greedy answers


def readme_val_accuracy():
    """The figure the README states for the shipped base: 'shipped base ... val 0.xxx' (2000 val questions)."""
    text = open(os.path.join(ROOT, 'README.md')).read()
    found = re.search(r'shipped base[^\n]*?val (0\.\d{3})', text)
    assert found, "README.md must state the shipped base's val accuracy as 'shipped base ... val 0.xxx'"
    return float(found.group(1))


def test_the_shipped_base_and_judge_load_strictly():
    """Every key and shape of the current tiny-toy is in base.pt and nothing else: an architecture change without a
    rebuilt base fails here (and in CI)."""
    umm = toy_base.tiny_toy(init=toy_base.BASE_DIR)
    saved = torch.load(os.path.join(toy_base.BASE_DIR, 'base.pt'), weights_only=True)['state_dict']
    assert saved.keys() == umm.state_dict().keys()
    for k, v in umm.state_dict().items():
        assert torch.equal(v, saved[k]), k
    judge = Judge.load(os.path.join(toy_base.BASE_DIR, 'judge.pt'))
    assert judge.image_size == (umm.image_size, umm.image_size)


def test_the_strict_load_fails_on_a_changed_architecture(tmp_path):
    """What the first test relies on: a key too many, a key missing or another shape each raise BaseError."""
    saved = torch.load(os.path.join(toy_base.BASE_DIR, 'base.pt'), weights_only=True)
    sd = saved['state_dict']
    key = next(k for k in sd if k.startswith('projector.'))
    variants = {'extra': {**sd, 'new_head.weight': torch.zeros(2)},
                'missing': {k: v for k, v in sd.items() if k != key},
                'shape': {**sd, key: torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)}}
    for name, state in variants.items():
        path = str(tmp_path / f'{name}.pt')
        torch.save({**saved, 'state_dict': state}, path)
        with pytest.raises(toy_base.BaseError, match='does not fit this tiny-toy'):
            toy_base.load_base(toy_umm.build_tiny_toy(), path)


def test_the_shipped_base_answers_a_val_slice_as_the_readme_says():
    """Accuracy on the first SLICE val questions is the README's figure (on 2000) within the slice's sampling
    tolerance, three standard errors."""
    stated = readme_val_accuracy()
    umm = toy_base.tiny_toy(init=toy_base.BASE_DIR)
    got = evaluate.accuracy(umm, data.ShapesVQA('val', SLICE))['all']
    tolerance = 3 * math.sqrt(stated * (1 - stated) / SLICE)
    assert abs(got - stated) <= tolerance, (got, stated, tolerance)


@pytest.fixture
def broken_bases(tmp_path):
    """A base dir with base.pt truncated to half, and one whose base.pt is another backbone's checkpoint."""
    truncated, foreign = tmp_path / 'truncated', tmp_path / 'foreign'
    shutil.copytree(toy_base.BASE_DIR, truncated)
    shutil.copytree(toy_base.BASE_DIR, foreign)
    raw = open(truncated / 'base.pt', 'rb').read()
    open(truncated / 'base.pt', 'wb').write(raw[:len(raw) // 2])
    torch.save({'backbone': 'tiny-janus', 'trainable': {}}, foreign / 'base.pt')
    return {'truncated': str(truncated), 'foreign': str(foreign)}


@pytest.mark.parametrize('kind, says', [('truncated', 'not a readable base checkpoint'),
                                        ('foreign', "'tiny-janus' checkpoint, not a tiny-toy base")])
def test_a_broken_base_gives_one_clear_error(broken_bases, kind, says):
    with pytest.raises(toy_base.BaseError, match=says) as e:
        toy_base.tiny_toy(init=broken_bases[kind])
    assert 'base.pt' in str(e.value) and '--mode pretrain' in str(e.value)  # names the file and the rebuild


def test_train_py_names_the_broken_file_and_the_fix_without_a_traceback(broken_bases, tmp_path):
    """On the command line for a truncated base.pt; in this process, as the interpreter runs train.py, for the rest
    (train_runner.run: a command spends 7-12 s importing)."""
    from train_runner import run
    cases = {'truncated': (sys.executable,), 'missing': None}
    for name, launcher in cases.items():
        init = broken_bases['truncated'] if name == 'truncated' else str(tmp_path / 'nowhere')
        r = run('--init', init, '--steps', '1', '--out_dir', str(tmp_path / 'run'), ok=False, launcher=launcher)
        assert r.returncode == 2, name
        assert 'Traceback' not in r.stderr and '--init' in r.stderr and 'base.pt' in r.stderr, r.stderr[-2000:]
        assert '--mode pretrain' in r.stderr, name
    judge = os.path.join(broken_bases['foreign'], 'judge.pt')  # a truncated judge.pt beside a good base
    shutil.copy(os.path.join(toy_base.BASE_DIR, 'base.pt'), os.path.join(broken_bases['foreign'], 'base.pt'))
    open(judge, 'wb').write(open(judge, 'rb').read()[:1000])
    r = run('--init', broken_bases['foreign'], '--steps', '1', '--out_dir', str(tmp_path / 'run'), ok=False)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'judge.pt' in r.stderr, r.stderr[-2000:]


def test_train_py_post_trains_the_shipped_base_by_default(tmp_path):
    """No --init: the run reads weights/tiny-toy (never pretrains, never writes there)."""
    before = {f: os.path.getmtime(os.path.join(toy_base.BASE_DIR, f)) for f in os.listdir(toy_base.BASE_DIR)}
    out = str(tmp_path / 'run')
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--out_dir', out, '--steps', '1',
                        '--train-size', '64', '--batch-size', '8', '--replay', '4', '--val-size', '0'],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'pretrain:' not in r.stderr and 'building' not in r.stdout  # no pretraining progress bar, no message
    config = json.load(open(os.path.join(out, 'config.json')))
    assert os.path.samefile(config['init'], toy_base.BASE_DIR)
    assert before == {f: os.path.getmtime(os.path.join(toy_base.BASE_DIR, f)) for f in os.listdir(toy_base.BASE_DIR)}
