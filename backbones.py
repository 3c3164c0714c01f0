"""
The registry: `--backbone NAME` -> a UMM (the contract in model.py). `--backbone` accepts

    tiny-toy       SigLIP2 + Qwen2.5-VL LM + SD-1.5 VAE classes, tiny configs, trains from scratch on CPU (toy_umm.py)
    toy            the same classes with pretrained weights, for a small GPU (--toy-siglip, --toy-qwen, --toy-sd)
    janus-pro-7b   deepseek-community/Janus-Pro-7B, one GPU (janus.py)
    janus-pro-1b   deepseek-community/Janus-Pro-1B
    tiny-janus     the Janus classes, tiny random config, CPU tests and benchmarks (tiny_janus.py)
    OWNER/NAME     a hub id, or a local directory, holding a transformers Janus checkpoint (model_type 'janus')

    python train.py --backbone tiny-janus --filter none --steps 20
    python -c "import backbones; print(backbones.load_backbone('tiny-toy').hidden_size)"

A new backbone is one class and one registry line: a subclass of model.UMM in a file of its own, and an entry in
BACKBONES from its name to a builder. The builder receives every keyword train.py passes (init, dtype, decode,
decoder, gen_temperature, device, the --toy-* dirs) and takes the ones it reads, ignoring the rest with **_.
"""

import functools
import os
import re

import janus
import tiny_janus
import toy_base
import toy_umm
from model import UMM

BACKBONES = {
    'tiny-toy': toy_base.tiny_toy,  # SigLIP2 + Qwen2.5-VL LM + SD-1.5 VAE classes, tiny, from scratch on CPU
    'toy': toy_umm.build_toy,            # the same classes with pretrained weights, for a small GPU
    'janus-pro-7b': functools.partial(janus.build_janus, 'janus-pro-7b'),  # deepseek-community/Janus-Pro-7B, one GPU
    'janus-pro-1b': functools.partial(janus.build_janus, 'janus-pro-1b'),  # deepseek-community/Janus-Pro-1B
    'tiny-janus': tiny_janus.build_tiny_janus,  # the Janus classes, tiny random config, CPU tests and benchmarks
}


def default_micro_batch(name: str) -> int:
    """train.py's --micro-batch when not given: 0 (one pass) on the tiny backbones, 4 rows on real ones, which
    `python model.py --memory janus-pro-7b` finds fit one 80 GB GPU at the other defaults."""
    return 0 if name.startswith('tiny-') else 4


def is_checkpoint_name(name: str) -> bool:
    """A hub id (owner/name) or a local directory: `--backbone` loads a Janus checkpoint from it."""
    return os.path.isdir(name) or re.fullmatch(r'[\w.-]+/[\w.-]+', name) is not None


def load_backbone(name: str, **kwargs) -> UMM:
    """Build the UMM named by `--backbone`: a registry name, or a hub id / local dir holding a Janus checkpoint."""
    if name in BACKBONES:
        return BACKBONES[name](**kwargs)
    if is_checkpoint_name(name):
        return janus.build_janus(name, **kwargs)
    raise ValueError(f"unknown --backbone {name!r}; valid names: {', '.join(BACKBONES)}, "
                     f"or a Janus hub id (owner/name) or local directory")
