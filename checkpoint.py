"""
Checkpoints: what a train.py run saves so that `--resume` continues exactly where it stopped, and a crash at any
moment loses at most the steps since the last save.

A checkpoint is a pair of files in the run directory, written every `--save-every` steps, at the last step and on
Ctrl-C:
- `ckpt.pt` (rank 0): what training changed and nothing frozen (never the 7B base): the trainable weights (LoRA, C),
  the optimizers, the GradScaler, the step and the resolved config;
- `rank<r>.pt` (every rank): its buffer B, its RNG states and a hash of the trainable weights (ranks must agree).

    python train.py --steps 300 --out_dir out/unigame      # Ctrl-C saves, then stops
    python train.py --steps 300 --out_dir out/unigame --resume
"""

import hashlib
import json
import os
import resource
import signal

import torch
import torch.distributed as dist


def atomic_save(obj, path):
    """torch.save to path.tmp, then rename: a reader never sees half a file."""
    torch.save(obj, path + '.tmp')
    os.replace(path + '.tmp', path)  # atomic on POSIX (same directory, same filesystem): the old file or the new one


def save(out_dir, step, rank, ddp, device, params, mine, shared=None):
    """Commit one pair in three moves, so a crash anywhere leaves a pair to resume from: each rank writes
    rank<r>.next.pt (`mine` with its RNG states and a hash of `params`), then rank 0 replaces ckpt.pt (`shared`; this
    is the commit, it names the step), then each rank renames its .next file over rank<r>.pt. Every rank calls this
    at the same step."""
    # a host copy of the trainable weights only (LoRA + C), never of the frozen base
    digest = hashlib.sha256(b''.join(q.detach().cpu().numpy().tobytes() for q in params)).hexdigest()
    # per rank: ranks are seeded seed + rank (train.py), so their LoRA dropout masks and --perturb random noise differ
    cuda_rng = torch.cuda.get_rng_state(device) if str(device).startswith('cuda') else None
    mine = dict(mine, rng=torch.get_rng_state(), cuda_rng=cuda_rng, weights_sha256=digest)  # ranks must agree
    mine_path = os.path.join(out_dir, f'rank{rank}')
    atomic_save(dict(mine, step=step), mine_path + '.next.pt')  # 1: beside the committed rank<r>.pt, not over it
    if ddp:
        dist.barrier()  # every rank's .next file is on disk before the commit names its step
    if rank == 0:
        atomic_save(dict(shared, step=step), os.path.join(out_dir, 'ckpt.pt'))  # 2: the commit
    if ddp:
        dist.barrier()  # no rank replaces its old half before the commit: until then the old pair must stay whole
    os.replace(mine_path + '.next.pt', mine_path + '.pt')  # 3: resume() reads either name, so a crash here is safe


def load(path):
    """torch.load of a checkpoint file onto the CPU, or one ValueError naming it (truncated, foreign, unreadable)."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)  # tensors and containers only: no pickled code
    except Exception as e:  # torch raises RuntimeError, EOFError, pickle errors... for a damaged file
        raise ValueError(f"cannot read {path} ({type(e).__name__}: {str(e)[:120]}); it is truncated or not a train.py "
                         f"checkpoint: start a new run in another --out_dir, or rerun without --resume") from None


def resume(out_dir, rank, backbone, trainable_names):
    """(ckpt.pt, this rank's half of the pair) of the run in out_dir, checked against this run: the same backbone and
    the same trainable weights. The rank's half is rank<r>.pt, or rank<r>.next.pt if a save stopped after its commit.
    Raises ValueError with a message for `--resume`."""
    path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint at {path}")
    ckpt = load(path)
    if not isinstance(ckpt, dict) or not {'step', 'backbone', 'trainable'} <= ckpt.keys():
        raise ValueError(f"{path} is not a train.py checkpoint (no step, backbone and trainable weights in it)")
    if ckpt['backbone'] != backbone:
        raise ValueError(f"{path} is a {ckpt['backbone']} checkpoint, not {backbone}")
    mismatch = set(ckpt['trainable']) ^ set(trainable_names)  # LoRA parameter names: e.g. another --lora-targets
    if mismatch:
        raise ValueError(f"{path} does not match this model's trainable weights (e.g. {sorted(mismatch)[:3]})")
    pair = [os.path.join(out_dir, f) for f in (f'rank{rank}.next.pt', f'rank{rank}.pt')]
    # .next first: after the commit it is the newer half; before it, its step differs from ckpt.pt's and is skipped
    mine = next((m for m in (load(f) for f in pair if os.path.isfile(f)) if m['step'] == ckpt['step']), None)
    if mine is None:
        raise ValueError(f"no rank{rank}.pt in {out_dir} from step {ckpt['step']}, the step of ckpt.pt")
    return ckpt, mine


def set_rng_states(mine, device):
    """Back to the RNG states a rank saved (`mine` from resume): LoRA dropout and noise continue as if never stopped."""
    torch.set_rng_state(mine['rng'])
    if mine.get('cuda_rng') is not None and str(device).startswith('cuda'):  # a CPU resume of a GPU run keeps CPU's
        torch.cuda.set_rng_state(mine['cuda_rng'], device)


def on_interrupt(what):
    """From now on Ctrl-C prints one line saying what is kept (`what`: a string, or a function that says it at that
    moment) and exits with 130, no traceback. The training loop installs its own handler (finish the step, save,
    stop); this one covers set-up, pretraining and the final evaluation."""
    def stop(*_):
        print(f"\ntrain.py: interrupted {what() if callable(what) else what}", flush=True)
        raise SystemExit(130)
    signal.signal(signal.SIGINT, stop)


def peak_memory_mb(device) -> float:
    """The process's peak memory so far: the GPU allocator's peak, or on CPU the peak resident set (Linux: KiB)."""
    # the CUDA figure is tensors only (not the allocator's cache or the CUDA context); ru_maxrss is KiB on Linux
    return torch.cuda.max_memory_allocated(device) / 2**20 if str(device).startswith('cuda') else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def finish(out_dir, final, timings, peak_mb):
    """final.json, written last (atomically), so its presence says the run completed: `final` (base vs trained), the
    time of each phase, the peak memory of training and what ran it (the same seed on another CPU, AVX2 or AVX512,
    rounds otherwise, and a game's run can drift). Prints the one-line summary the README quotes."""
    path = os.path.join(out_dir, 'final.json')  # its presence says the run completed: written last, tmp + rename
    machine = dict(cpu=torch.backends.cpu.get_cpu_capability(), torch=torch.__version__,
                   threads=torch.get_num_threads())
    with open(path + '.tmp', 'w') as f:
        json.dump(dict(peak_memory_mb=round(peak_mb), timings=timings, machine=machine, **final), f, indent=1)
    os.replace(path + '.tmp', path)
    print('time: ' + ', '.join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + f"; peak memory {peak_mb:.0f} MB")
