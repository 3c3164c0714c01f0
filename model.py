"""
The UMM contract every backbone follows, and the registry that builds one from `--backbone`.

A unified multimodal model (UMM) is, for UniGame, five things around one shared visual-token interface z (B, N, H):

    encode(images)                -> z                 Enc + Proj, frozen in post-training (Eq. 1's z)
    understand_loss(z, q, a)      -> (B,)              per-sample CE of the answer tokens under U (Eq. 1)
    answer(z, q)                  -> list[str]         greedy answers
    decode(images, z, prompts, perturb=None) -> (x~, delta)
                                                       G: candidate images (B, 3, h, w) in [0, 1]; with a Perturber,
                                                       delta is added where the generation branch reads the tokens
                                                       and returned (float32) for Eq. 7's penalty, else delta is None
    generate(prompts)             -> images            text-to-image (consistency, GenEval, WISE)
    caption(images)               -> list[str]

plus `understanding_parameters()` (what post-training updates: the LoRA adapters) and `save_trainable(dir)` /
`load_trainable(dir)`. Per-sample losses, never batch means: the buffer's hardness H is per candidate.
`train.py` and `evaluate.py` only ever talk to this interface, so a new backbone is one class and one registry line.
"""

import os

import torch.nn as nn

# LoRA defaults. The paper trains "LoRA adapters on the LLM backbone" but gives no rank; these are common values.
LORA_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj')
LORA_DEFAULTS = dict(r=16, alpha=32, dropout=0.05)


class UMM(nn.Module):
    """The interface (see the module docstring). Subclasses implement every method; shapes are in the comments."""

    hidden_size: int   # H, the width of the shared visual-token interface
    image_size: int    # side of the square images `encode` expects, in pixels

    def encode(self, images):                           # (B, 3, s, s) in [0, 1] -> z (B, N, H)
        raise NotImplementedError

    def understand_loss(self, z, questions, answers):   # -> (B,) float32
        raise NotImplementedError

    def answer(self, z, questions, max_new_tokens=4):   # -> list[str]
        raise NotImplementedError

    def decode(self, images, z, prompts, perturb=None):  # -> ((B, 3, s, s) in [0, 1], delta or None)
        raise NotImplementedError

    def generate(self, prompts):                        # -> (B, 3, s, s) in [0, 1]
        raise NotImplementedError

    def caption(self, images, max_new_tokens=48):       # -> list[str]
        raise NotImplementedError

    def understanding_parameters(self):                 # -> list of the parameters post-training updates
        raise NotImplementedError

    def save_trainable(self, directory):
        raise NotImplementedError

    def load_trainable(self, directory):
        raise NotImplementedError


class MissingWeights(RuntimeError):
    """Pretrained weights are not on this machine (and could not be downloaded)."""


def from_pretrained(cls, name: str, what: str, **kwargs):
    """cls.from_pretrained(name) from a local dir or the local HF cache first, then the hub unless HF_HUB_OFFLINE=1.

    Any failure becomes one MissingWeights error that says how to provide the weights.
    """
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError) as local_error:
        if os.environ.get('HF_HUB_OFFLINE', '0') not in ('0', '', 'false', 'False') or os.path.isdir(name):
            error = local_error
        else:
            try:
                return cls.from_pretrained(name, **kwargs)
            except Exception as e:  # network, auth, missing repo: all mean "no weights here"
                error = e
    raise MissingWeights(
        f"could not load the {what} weights {name!r} ({type(error).__name__}: {str(error).splitlines()[0][:200]}).\n"
        f"Provide them one of three ways: pass a local directory holding the files (the flag for the {what}), put them "
        f"in the Hugging Face cache (HF_HOME, e.g. `huggingface-cli download {name}` on a machine with network), or "
        f"use a tiny backbone (`--backbone tiny-toy`), which needs no weights.")


# -----------------------------------------------------------------------------
# the registry: --backbone NAME -> a UMM

def _tiny_toy(**kw):
    import toy_umm
    return toy_umm.build_tiny_toy(**kw)


def _toy(**kw):
    import toy_umm
    return toy_umm.build_toy(**kw)


BACKBONES = {
    'tiny-toy': _tiny_toy,  # SigLIP2 + Qwen2.5-VL LM + SD-1.5 VAE classes, tiny configs, trains from scratch on CPU
    'toy': _toy,            # the same classes with pretrained weights, for a small GPU
}


def load_backbone(name: str, **kwargs) -> UMM:
    """Build the UMM named by `--backbone` (a registry name; hub ids and local dirs arrive with the Janus backbone)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown --backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    return BACKBONES[name](**kwargs)
