"""Checkpoints and interruptions of train.py (checkpoint.py): resume is exact, a save stopped at any point leaves a
pair to resume from, broken or foreign checkpoints fail naming the file, non-finite losses stop the run keeping its
checkpoint, Ctrl-C anywhere prints one line saying what is kept, and a SIGTERM in the loop saves like Ctrl-C.
Run: python -m pytest -q tests/test_checkpoint.py   (train.py runs in this process, train_runner.run, but where a
signal is sent: then it is started as a command)"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_train import base  # noqa: F401 (the shipped base, a fixture)
from train_runner import FAST, ROOT, metrics, run


def signal_train(flags, ready, sig):
    """Start train.py with `flags`, send it `sig` a second after `ready()` holds; return its exit code and output."""
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(sig)
    try:
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout


def test_resume_continues_exactly(base, tmp_path):
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    run('--init', base, '--out_dir', a, '--steps', '8', *FAST)
    run('--init', base, '--out_dir', b, '--steps', '4', *FAST)
    run('--init', base, '--out_dir', b, '--steps', '8', '--resume', *FAST, launcher=(sys.executable,))  # a new process
    last_a, last_b = metrics(a)[-1], metrics(b)[-1]
    for timing in ('step_time', 'phase_time'):  # wall-clock, the one thing allowed to differ
        last_a.pop(timing), last_b.pop(timing)
    assert last_a == last_b
    wa = torch.load(os.path.join(a, 'ckpt.pt'), weights_only=True)
    wb = torch.load(os.path.join(b, 'ckpt.pt'), weights_only=True)
    for k in wa['trainable']:
        assert torch.equal(wa['trainable'][k], wb['trainable'][k]), k


def test_a_save_stopped_at_any_point_leaves_a_pair_to_resume_from(base, tmp_path):
    """A save writes rank0.next.pt, commits ckpt.pt, then renames rank0.next.pt over rank0.pt. A run stopped at step
    4 whose save at step 8 died after the first move, or after the second, resumes to the same weights as one that
    never stopped. The step-8 files come from an uninterrupted run (the runs are deterministic)."""
    ref, snap, b = str(tmp_path / 'ref'), str(tmp_path / 'ref8'), str(tmp_path / 'b')
    run('--init', base, '--out_dir', ref, '--steps', '8', '--save-every', '4', *FAST)
    shutil.copytree(ref, snap)                                      # ckpt.pt + rank0.pt of step 8
    run('--init', base, '--out_dir', ref, '--steps', '12', '--resume', *FAST)
    run('--init', base, '--out_dir', b, '--steps', '4', *FAST)     # ckpt.pt + rank0.pt of step 4
    died = {'before the commit': ['rank0.pt'], 'after the commit': ['rank0.pt', 'ckpt.pt']}
    want = torch.load(os.path.join(ref, 'ckpt.pt'), weights_only=True)['trainable']
    for name, written in died.items():
        out = str(tmp_path / name.replace(' ', '_'))
        shutil.copytree(b, out)
        shutil.copy(os.path.join(snap, 'rank0.pt'), os.path.join(out, 'rank0.next.pt'))
        if 'ckpt.pt' in written:
            shutil.copy(os.path.join(snap, 'ckpt.pt'), os.path.join(out, 'ckpt.pt'))
        open(os.path.join(out, 'ckpt.pt.tmp'), 'wb').write(b'half a file')    # a write that died midway
        r = run('--init', base, '--out_dir', out, '--steps', '12', '--resume', *FAST)
        assert f"at step {8 if 'ckpt.pt' in written else 4}" in r.stdout, name
        got = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['trainable']
        for k in want:
            assert torch.equal(want[k], got[k]), (name, k)
        assert not os.path.exists(os.path.join(out, 'rank0.next.pt')), name


def test_resume_from_a_truncated_checkpoint_fails_naming_it(base, tmp_path):
    out = str(tmp_path / 'cut')
    run('--init', base, '--out_dir', out, '--steps', '2', *FAST)
    path = os.path.join(out, 'ckpt.pt')
    raw = open(path, 'rb').read()
    open(path, 'wb').write(raw[:len(raw) // 2])
    r = run('--init', base, '--out_dir', out, '--steps', '4', '--resume', *FAST, ok=False)
    assert '--resume' in r.stderr and 'ckpt.pt' in r.stderr and 'Traceback' not in r.stderr


def test_resume_from_another_backbone_fails(base, tmp_path):
    out = str(tmp_path / 'other')
    run('--init', base, '--out_dir', out, '--steps', '2', *FAST)
    path = os.path.join(out, 'ckpt.pt')
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, 'backbone': 'janus-pro-7b'}, path)
    r = run('--init', base, '--out_dir', out, '--steps', '4', '--resume', *FAST, ok=False)
    assert r.returncode == 2 and 'janus-pro-7b' in r.stderr and 'ckpt.pt' in r.stderr and 'Traceback' not in r.stderr


def test_non_finite_losses_stop_the_run_and_keep_the_checkpoint(base, tmp_path):
    out = str(tmp_path / 'nan')
    r = run('--init', base, '--out_dir', out, '--steps', '30', '--und-lr', '1e30', '--save-every', '1', *FAST,
            ok=False)
    assert 'non-finite' in r.stdout + r.stderr
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['step'] < 30


def test_ctrl_c_during_the_final_evaluation_says_what_is_kept_and_resume_evaluates_again(base, tmp_path):
    """Ctrl-C after the last step, while base and trained are scored on val: one line saying the checkpoint is kept,
    exit 130, no traceback, no final.json; `--resume` then evaluates and writes final.json."""
    out = str(tmp_path / 'eval')
    flags = ['--init', base, '--out_dir', out, '--steps', '2', *FAST[:-4], '--log-every', '1', '--val-size', '4000']
    # the last step's checkpoint is written, then the evaluation of 2 x 4000 val questions starts
    code, stdout = signal_train(flags, lambda: os.path.isfile(os.path.join(out, 'ckpt.pt')), signal.SIGINT)
    assert code == 130, stdout[-2000:]
    assert 'interrupted after training, during the final evaluation' in stdout and 'Traceback' not in stdout
    assert not os.path.isfile(os.path.join(out, 'final.json'))
    r = run(*flags[:-2], '--val-size', '50', '--resume')
    assert 'at step 2' in r.stdout
    final = json.load(open(os.path.join(out, 'final.json')))    # written last: the run is complete
    assert {'base', 'trained'} <= final.keys()
    assert final['machine']['torch'] == torch.__version__ and final['machine']['threads'] >= 1  # what trained it


def test_a_scheduler_term_in_the_loop_saves_the_step_like_ctrl_c(base, tmp_path):
    """SIGTERM (a scheduler's stop, torchrun stopping its ranks) during training: the step ends, a checkpoint is saved,
    exit 130 with the resume line; `--resume` continues from it."""
    out = str(tmp_path / 'term')
    flags = ['--init', base, '--out_dir', out, '--steps', '3000', '--mode', 'sft', *FAST]
    log = os.path.join(out, 'metrics.jsonl')
    code, stdout = signal_train(flags, lambda: os.path.isfile(log) and os.path.getsize(log) > 0, signal.SIGTERM)
    assert code == 130 and 'Traceback' not in stdout, stdout[-2000:]
    assert 'interrupted after step' in stdout and os.path.isfile(os.path.join(out, 'ckpt.pt'))
    step = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['step']
    r = run(*flags[:5], str(step + 2), *flags[6:], '--resume')
    assert f'at step {step}' in r.stdout


def test_ctrl_c_outside_the_training_loop_prints_one_line(tmp_path):
    """checkpoint.on_interrupt, as train.py installs it for set-up, pretraining and the final evaluation."""
    code = ("import os, signal, time, checkpoint\n"
            "checkpoint.on_interrupt('during set-up: nothing to save yet')\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(30)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 130
    assert r.stdout.strip() == 'train.py: interrupted during set-up: nothing to save yet' and not r.stderr


# a sitecustomize that sends the process a Ctrl-C at the moment it starts importing torch: the same instant every run
CTRL_C_ON_IMPORTING_TORCH = """
import os, signal, sys


class CtrlCOnTorch:
    def find_spec(self, name, path=None, target=None):
        if name == 'torch':
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, CtrlCOnTorch())
"""


@pytest.mark.parametrize('script', ['train.py', 'evaluate.py', 'study.py'])
def test_ctrl_c_while_a_script_imports_torch_prints_one_line(script, tmp_path):
    """A Ctrl-C in a script's first seconds (torch, transformers and diffusers import for 7-12 s) ends it with one line
    and 130, not a KeyboardInterrupt traceback from deep inside an import (whether or not it was started ignoring
    Ctrl-C, as a background job is: the scripts listen to it, as study.py and train.py's set-up do afterwards)."""
    (tmp_path / 'sitecustomize.py').write_text(CTRL_C_ON_IMPORTING_TORCH)
    cmd = [sys.executable, os.path.join(ROOT, script), '--help']
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    for inherited in (signal.SIG_DFL, signal.SIG_IGN):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, inherited))
        assert r.returncode == 130 and r.stderr.startswith(f'\n{script}: interrupted') and r.stderr.count('\n') == 2, \
            r.stderr[-2000:]
