"""
The tiny-toy base: the pretrained tiny-toy the repository ships (weights/tiny-toy: base.pt, judge.pt, report.json,
metrics.jsonl, reader.pt; about 5 MB), so that every machine post-trains the same model. Where it lives, how it is
saved, and how it is loaded strictly: an architecture change without a rebuilt base fails here, naming the file and
the fix, never with a torch trace. pretrain.py builds it; docs/toy.md says how and why.

    python train.py --mode pretrain --seed 0 --out_dir weights/tiny-toy      # rebuild the shipped base (REBUILD)
    python train.py --init DIR                                               # post-train another base
    python -c "import toy_base; toy_base.tiny_toy(init=toy_base.BASE_DIR)"   # load the shipped one
"""

import os

import torch

import toy_umm

BASE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights', 'tiny-toy')
REBUILD = 'python train.py --mode pretrain --seed 0 --out_dir weights/tiny-toy'  # the fix named for the shipped base
PRETRAIN_SCENES = 50000  # the base learns from train scenes 0, ..., 49,999; post-training reads the ones after


class BaseError(ValueError):
    """A base checkpoint that is missing, unreadable or not a tiny-toy base; the message names the file and the fix."""


def tiny_toy(init: str | None = None, decoder='vae', **_):
    """`--backbone tiny-toy`: toy_umm.build_tiny_toy with the base in `init` loaded (a dir with base.pt, or the file);
    init=None: random init, what pretraining starts from."""
    umm = toy_umm.build_tiny_toy(decoder)  # draws the random init from torch's global stream, base or not
    if init is not None:
        load_base(umm, init)
    return umm


def save_base(umm, directory, extra=None):
    """The pretrained base: the full (tiny) state dict and what built it, written atomically."""
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, 'base.pt.tmp')
    # every weight of the tiny model (the shipped base.pt: 3.8 MB), which load_base checks key by key and shape by shape
    torch.save({'backbone': 'tiny-toy', 'state_dict': umm.state_dict(), **(extra or {})}, tmp)
    os.replace(tmp, os.path.join(directory, 'base.pt'))  # atomic: a crash mid-save never leaves half a base.pt


def _rebuild_hint(path):
    if os.path.abspath(path).startswith(BASE_DIR):  # the shipped base: git can restore it, or REBUILD remakes it
        return f"rebuild it with `{REBUILD}` (about 20 min on 2 cores) or restore it with `git checkout weights/`"
    return f"build one with `python train.py --mode pretrain --out_dir {os.path.dirname(path) or '.'}`"


def base_file(directory) -> str:
    """base.pt in `directory` (or `directory` itself, a file); BaseError naming the file and the fix if it is absent."""
    path = os.path.join(directory, 'base.pt') if os.path.isdir(directory) else directory
    if not os.path.isfile(path):
        path = os.path.join(directory, 'base.pt')  # the message names the file that should be there
        raise BaseError(f"--init {directory!r}: no base checkpoint (base.pt) there; {_rebuild_hint(path)}")
    return path


def load_base(umm, directory):
    """Load base.pt from `directory` (or the file itself) strictly: every key and shape of this tiny-toy, nothing
    else, so that an architecture change without a rebuilt base fails here. Raises BaseError, never a torch trace."""
    path = base_file(directory)
    fix = _rebuild_hint(path)
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)  # tensors and containers: no pickled code runs
    except Exception as e:  # truncated, not a torch file, or pickled objects weights_only refuses: all say the same
        raise BaseError(f"--init {path!r} is not a readable base checkpoint ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:120]}); {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get('backbone') != 'tiny-toy' or 'state_dict' not in ckpt:
        kind = ckpt.get('backbone') if isinstance(ckpt, dict) else type(ckpt).__name__
        raise BaseError(f"--init {path!r} holds a {kind!r} checkpoint, not a tiny-toy base; {fix}")
    # bases are pretrained with the VAE decoder: a diffusion decoder's UNet and cross-attention adapter stay as built
    own = {k: v for k, v in umm.state_dict().items() if not k.startswith(('unet.', 'cross_adapter.'))}
    theirs = ckpt['state_dict']
    # the three ways a base can disagree with this code; each is named below with (at most) three keys
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    reshaped = sorted(k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k].shape))
    if missing or unexpected or reshaped:
        raise BaseError(f"--init {path!r} does not fit this tiny-toy (the architecture changed since it was built): "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {reshaped[:3]}; {fix}")
    umm.load_state_dict(theirs, strict=False)  # strict over `own` above; only the diffusion parts may stay new
    if umm.decoder == 'diffusion':
        print(f"--init {path}: the base has no UNet; the diffusion decoder and its cross-attention adapter are new")
    return ckpt
