"""How the tests run train.py: `run` in this process by default (`train_here`, as the interpreter would run it; a
command spent 7-12 s importing torch, transformers and diffusers before its first step), or as a command under a
launcher where the command line itself, a signal or DDP is what is tested. Used by test_train.py, test_checkpoint.py,
test_memory.py and test_base.py."""

import contextlib
import gc
import io
import json
import os
import runpy
import signal
import subprocess
import sys
import traceback
import types
import warnings

import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ['--train-size', '400', '--batch-size', '8', '--replay', '4', '--val-size', '0', '--log-every', '2']


def run(*flags, ok=True, launcher=None):
    """train.py with `flags`, asserted to succeed (or, ok=False, to fail); returns its returncode, stdout and stderr.
    In this process by default (train_here: a subprocess spent 7-12 s importing torch, transformers and diffusers
    before its first step); under `launcher` (e.g. (sys.executable,) for the command line itself, or torchrun) as a
    subprocess with one thread, as train_here runs."""
    if launcher is None:
        r = train_here(flags)
    else:
        env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}
        r = subprocess.run([*launcher, os.path.join(ROOT, 'train.py'), *flags], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=600)
    assert (r.returncode == 0) == ok, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def train_here(flags):
    """`python train.py FLAGS` run in this process by runpy, as the interpreter would run it: its exit code (SystemExit,
    or 1 and the traceback on stderr for any other exception), stdout and stderr; one thread, warnings off, and the
    process's signal handlers, RNGs (CPU and CUDA), threads, argv and working directory restored afterwards, a
    progress bar left open by a stopped run closed, and the run's objects collected."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved = (sys.argv, os.getcwd(), torch.get_num_threads(),
             {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)})
    sys.argv = [os.path.join(ROOT, 'train.py'), *flags]
    os.chdir(ROOT)
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try:
                runpy.run_path(sys.argv[0], run_name='__main__')
            except SystemExit as e:  # as the interpreter exits: None is 0, an int itself, anything else printed and 1
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if not isinstance(e.code, int | None):
                    print(e.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 (what the interpreter does with an uncaught exception)
                code = 1
                traceback.print_exc()
            for bar in list(getattr(tqdm, '_instances', ())):  # a run stopped mid-loop leaves its bar registered
                bar.close()
    finally:
        sys.argv, cwd, threads, handlers = saved
        os.chdir(cwd)
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        gc.collect()  # the run's globals (model, optimizers, open metrics file) live on in cycles until collected
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def metrics(out):
    with open(os.path.join(out, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]
