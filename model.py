"""
The UMM contract every backbone follows (backbones.py builds one from `--backbone`; janus.py and toy_umm.py are the two
backbones), with the LoRA defaults and weight loading they share.

A unified multimodal model (UMM) is, for UniGame, five things around one shared visual-token interface z (B, N, H):

    encode(images)                -> z                 Enc + Proj, frozen in post-training (Eq. 1's z)
    understand_loss(z, q, a)      -> (B,)              per-sample CE of the answer tokens under U (Eq. 1)
    answer(z, q)                  -> list[str]         greedy answers
    decode(images, z, prompts, perturb=None) -> (x~, delta)
                                                       G: candidate images (B, 3, h, w) in [0, 1]; with a Perturber,
                                                       delta is added where the generation branch reads the tokens
                                                       and returned (float32) for Eq. 7's penalty, else delta is None
    generate(prompts)             -> images            text-to-image (consistency, GenEval, WISE)
    t2i_loss(prompts, images)     -> (B,)              the generation branch's loss of drawing images from prompts
                                                       (CC3M pairs: text-image supervision, Appendix B.1)
    caption(images)               -> list[str]

plus `understanding_parameters()` (what post-training updates: the LoRA adapters) and `save_trainable(dir)` /
`load_trainable(dir)`. Per-sample losses, never batch means: the buffer's hardness H is per candidate.
`train.py` and `evaluate.py` only ever talk to this interface, so a new backbone is one class and one registry line.

The command line runs the Janus checks that need no weights (CPU, offline); each lives in the module named:

    python model.py --count janus-pro-7b --perturber-width 256   # meta-device parameter counts (memory.py)
    python model.py --memory janus-pro-7b                        # peak GPU memory of a train.py run (memory.py)
    python model.py --smoke janus-pro-1b                         # full-size random-weight smoke run (smoke.py)
    python model.py --eps-probe janus-pro-1b                     # VQ codes changed against --eps, full size (smoke.py)
    python model.py --bench-decode --batch 16                    # regen vs t2i per candidate on tiny-janus (smoke.py)
"""

import os
import warnings

import torch
import torch.nn as nn
from transformers import PreTrainedModel

# LoRA defaults. The paper trains "LoRA adapters on the LLM backbone" but gives no rank; these are common values.
LORA_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj')
LORA_DEFAULTS = dict(r=16, alpha=32, dropout=0.05)


def lora_targets(text):
    """'q_proj,k_proj' -> ('q_proj', 'k_proj'): the --lora-targets flag (and a run's config) as peft's target list."""
    names = tuple(t.strip() for t in text.split(',') if t.strip())
    if not names:
        raise ValueError(f"no module names in {text!r}")
    return names


class UMM(nn.Module):
    """The interface (see the module docstring); shapes are in the comments. Subclasses implement every method but the
    LoRA three at the end, which read `self.lm`."""

    hidden_size: int   # H, the width of the shared visual-token interface
    image_size: int    # side of the square images `encode` expects, in pixels

    @property
    def device(self):  # where the weights are: callers move images there (evaluate.py, train.py)
        return next(self.parameters()).device

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

    def t2i_loss(self, prompts, images):                # -> (B,) float32
        raise NotImplementedError

    def caption(self, images, max_new_tokens=48):       # -> list[str]
        raise NotImplementedError

    def checkpoint_activations(self):
        """Activation checkpointing on every transformers model inside (the LM, a ViT): each layer's activations are
        recomputed in backward instead of kept, about 1/layers of the activation memory for one more forward.
        Non-reentrant, so gradients reach LoRA and C even though the frozen inputs need none."""
        kwargs = {'use_reentrant': False}
        for m in self.modules():
            if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing:
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)  # the old name warns
        return self

    def eval_with_gradients(self):
        """eval() (no dropout) for a pass that still back-propagates, C's ascent (Eq. 7): transformers checkpoints a
        layer only while the layer's own `training` is set, so checkpointed layers keep it (their dropout modules,
        LoRA's included, are switched off all the same)."""
        self.eval()
        for m in self.modules():
            if getattr(m, 'gradient_checkpointing', False) is True:
                m.training = True
        return self

    # What post-training updates: LoRA adapters on the language model `self.lm` (a peft model after `add_lora`).
    # Both backbones here keep their LoRA there; one that does not overrides these three.
    def understanding_parameters(self):                 # -> list of the parameters post-training updates
        return [p for n, p in self.lm.named_parameters() if 'lora_' in n]

    def save_trainable(self, directory):
        self.lm.save_pretrained(directory)  # the LoRA adapter only (peft)

    def load_trainable(self, directory):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights
        device = next(self.lm.parameters()).device
        set_peft_model_state_dict(self.lm, load_peft_weights(directory, device=str(device)))


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
        f"use a tiny backbone (`--backbone tiny-toy` or `tiny-janus`), which needs no weights.") from error


def peft_lora(module, r, alpha, dropout, targets):
    """peft's LoRA on `targets` inside `module`. peft (0.21.2, the newest) reads transformers' deprecated
    `is_gradient_checkpointing` when it wraps a model, one FutureWarning per call since transformers 5.23: silenced
    here only, until peft reads `is_activation_checkpointing`."""
    from peft import LoraConfig, get_peft_model
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', '`is_gradient_checkpointing` is deprecated', FutureWarning)
        return get_peft_model(module, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                 target_modules=list(targets)))


if __name__ == '__main__':
    import argparse

    from janus import JANUS_PRO
    p = argparse.ArgumentParser(description='Janus checks that need no weights (CPU, offline).')
    p.add_argument('--bench-decode', action='store_true', help='regen vs t2i seconds per candidate on tiny-janus')
    p.add_argument('--batch', type=int, default=16, help='candidates per decode call in --bench-decode')
    p.add_argument('--count', choices=list(JANUS_PRO), help='meta-device parameter counts of this architecture')
    p.add_argument('--perturber-width', type=int, default=None, help='width of C for --count (default: H)')
    p.add_argument('--eps-probe', choices=list(JANUS_PRO), metavar='NAME',
                   help='random-weight NAME at full size on CPU: share of VQ codes and change of CE against --eps')
    p.add_argument('--memory', choices=list(JANUS_PRO), metavar='NAME',
                   help=f"estimate peak GPU memory of a train.py run of NAME ({', '.join(JANUS_PRO)}); train.py's "
                        f"flags after it: --batch-size, --micro-batch, --replay, --activation-checkpointing, --lora-r, "
                        f"--lora-targets, --perturber-width, --attack, --captions, --gpu-gib (memory.py)")
    smoke_names = [*JANUS_PRO, 'toy', 'tiny-janus', 'tiny-toy']
    p.add_argument('--smoke', choices=smoke_names, metavar='NAME',
                   help=f"full-size smoke run on CPU of NAME ({', '.join(smoke_names)}): its architecture with random "
                        f"weights, saved and loaded as a user's, regen vs t2i per candidate, one train.py UniGame "
                        f"step; flags after it: --dtype, --layers, --batch-size, --device (smoke.py)")
    args, rest = p.parse_known_args()
    if rest and not (args.memory or args.smoke):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.memory and args.smoke:
        p.error("--memory and --smoke each read the flags after them: give one")
    import memory  # parameter counts and the memory estimate
    import smoke   # full-size random-weight runs and decode timing
    if args.memory:
        memory.main(args.memory, rest)
    if args.smoke:
        smoke.main(args.smoke, rest)
    if args.bench_decode:
        torch.set_num_threads(1)  # stable timings on a shared CPU; two threads fight over small ops
        t = smoke.bench_decode(args.batch)
        print(', '.join(f"{k} {1e3 * v:.2f} ms" for k, v in t.items()) + ' per candidate (best of 3)\n'
              f"regen is {t['t2i'] / t['regen']:.1f}x faster than t2i; LLM alone {t['t2i_llm'] / t['regen_llm']:.1f}x")
    if args.eps_probe:
        smoke.eps_probe(args.eps_probe)
    if args.count:
        n = memory.count_parameters(args.count, args.perturber_width)
        print(f"{args.count}: base {n['base']:,}, LoRA {n['lora']:,} (r={LORA_DEFAULTS['r']}, "
              f"{'/'.join(LORA_TARGETS)}), C {n['perturber']:,} (width {args.perturber_width or 'H'}): "
              f"trainable {100 * n['trainable_share']:.3f}% of the base")
