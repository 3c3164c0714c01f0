"""
A full-size smoke run: a backbone's real architecture with random weights, written with save_pretrained beside a
tokenizer built offline, loaded back the way a user's weights are, then regen vs t2i per candidate and one UniGame step
of train.py (challenge, mining with regen, understand) on it. A benchmark command; tests/test_smoke.py runs the same
path at tiny sizes (tiny-janus, tiny-toy).

    python model.py --smoke janus-pro-1b        # Janus-Pro-1B's config: 384 px, 576 tokens and codes, bf16 autocast
    python model.py --smoke toy                 # SigLIP2-base (224 px), Qwen2.5-VL-3B, SD-1.5's VAE, bf16 autocast
    python model.py --smoke janus-pro-1b --dtype bfloat16 --layers 24  # the full run where bf16 units are missing
    python model.py --eps-probe janus-pro-1b    # what --eps does to the 576 VQ codes at full size (eps_probe, below)
    python model.py --bench-decode --batch 16   # regen vs t2i wall time per candidate on tiny-janus (bench_decode)

On a CPU without bf16 units (such as the 2 Zen-1 cores this was written on) the first two default to --dtype float32
--layers 2 and say so: 6 and 3.7 min there, beside other jobs.

Build: the published sizes, random init in --dtype, saved in a temporary dir with a word-level tokenizer that carries
the special tokens the backbone reads (Janus: tiny_janus.janus_word_tokenizer, its <image_placeholder> id the config's
image_token_id; toy: toy_umm.word_tokenizer with the toy's marks), every id inside the LM's vocabulary. Load: Janus by
backbones.load_backbone(DIR), train.py's `--backbone DIR`; the toy's parts as local dirs, by toy_umm.build_toy here and
by `train.py --backbone toy --toy-siglip DIR --toy-qwen DIR --toy-sd DIR`. Every saved tensor must equal the loaded
one. Decode: batch 1, C applied, one run each, no warm-up.
Step: `train.py --steps 1 --filter none --micro-batch 1` on shapes scenes resized to the backbone's size, train.py's
real-backbone defaults otherwise; phase seconds from its metrics.jsonl, peak resident memory from its final.json.

Cost: on a CPU without bf16 units (AVX2, such as the 2 Zen-1 cores this was written on) torch runs bf16 matmuls ~7x and
bf16 convolutions ~500x slower than float32, so the default bf16 run takes many hours there. --layers N keeps every
width, the vision and VQ towers, the vocabulary and the 576 tokens and cuts the LLM to N layers; the LLM's share of each
phase grows about linearly in N (one Janus-1B layer: ~7 s per 650-token forward in float32 on those cores).
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from transformers import JanusForConditionalGeneration
from transformers.utils import logging as hf_logging

import backbones
import data
import toy_umm
from janus import JANUS_PRO, JanusUMM, janus_config
from perturber import Perturber
from tiny_janus import TINY_JANUS, build_tiny_janus, janus_word_tokenizer

ROOT = os.path.dirname(os.path.abspath(__file__))
# the toy's published sizes (the hub config.json of each part); build_toy reads SigLIP2 as NaFlex patches (224 / 16)^2
SIGLIP2_BASE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    patch_size=16, num_patches=196)
QWEN_3B = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
               rope_parameters=dict(rope_type='default', rope_theta=1e6, mrope_section=[16, 24, 24]))
QWEN_3B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                      fullatt_block_indexes=[7, 15, 23, 31], window_size=112)  # saved, then dropped by build_toy
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
                sample_size=512, down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4)
TOY_MARKS = ('Answer:', 'Caption:', 'Image:', 'Caption,', 'column', 'by', 'column:')  # build_toy's marks, as words
SIZES = (*JANUS_PRO, 'toy', 'tiny-janus', 'tiny-toy')


@contextlib.contextmanager
def default_dtype(dtype):
    """Build parameters straight in dtype: a 1B model never exists in float32 first."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_janus(name, layers, dtype, out):
    """JanusForConditionalGeneration at `name`'s config (the LLM cut to `layers`), random init, saved with its
    tokenizer in `out`. Returns its state dict, its number of parameters and a line describing it."""
    tok = janus_word_tokenizer()  # built offline: word level over the shapes' words, with Janus's special tokens
    if name == 'tiny-janus':
        t = TINY_JANUS
        lm, vision, vq = dict(t['lm'], vocab_size=len(tok)), t['vision'], t['vq']
    else:  # vocabulary 102400, SigLIP-L/16 at 384 px, VQ-16 with 16384 codes: janus_config's defaults
        lm, vision, vq = dict(JANUS_PRO[name][1]), None, None
    full = lm['num_hidden_layers']
    # --layers cuts the LLM's depth only; every width, the vocabulary and the towers stay as published
    lm.update(num_hidden_layers=layers or full, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
              eos_token_id=tok.eos_token_id)
    config = janus_config(lm, vision, vq, image_token_id=tok.convert_tokens_to_ids('<image_placeholder>'))
    check_vocabulary(tok, config.text_config.vocab_size)
    with default_dtype(dtype):
        janus = JanusForConditionalGeneration(config)
    janus.save_pretrained(out)  # safetensors + config.json: the files a user's download of the weights holds
    tok.save_pretrained(out)
    c, v = config.text_config, config.vision_config
    return janus.state_dict(), janus.num_parameters(), (
        f"LLM {c.num_hidden_layers}/{full} layers, H {c.hidden_size}, vocab {c.vocab_size}; SigLIP "
        f"{v.num_hidden_layers} layers at {v.image_size} px = {(v.image_size // v.patch_size) ** 2} tokens; VQ "
        f"{config.vq_config.num_embeddings} codes")


def build_toy(name, layers, dtype, home):
    """The toy's three parts at their published sizes (tiny-toy: toy_umm.TINY's), random init, saved in `home`/siglip,
    qwen and sd (vae/ inside), the local dirs build_toy and train.py's --toy-* flags read. Returns their state dict
    named as in ToyUMM, the number of parameters saved and a line."""
    from diffusers import AutoencoderKL
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Siglip2VisionConfig,
                              Siglip2VisionModel)
    tok = toy_umm.word_tokenizer((*data.VOCAB, *TOY_MARKS))
    if name == 'tiny-toy':
        t, s, p = toy_umm.TINY, toy_umm.TINY['image_size'], toy_umm.TINY['patch_size']
        siglip = dict(t['vision'], patch_size=p, num_patches=(s // p) ** 2)
        rope = dict(rope_type='default', rope_theta=1e4, mrope_section=toy_umm._mrope_section(
            t['lm']['hidden_size'] // t['lm']['num_attention_heads']))
        text = dict(t['lm'], vocab_size=len(tok), max_position_embeddings=256, rope_parameters=rope)
        # Qwen2.5-VL's own vision tower, tiny: a real checkpoint holds one, build_toy drops it
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text['hidden_size'],
                      fullatt_block_indexes=[0])
        vae = dict(t['vae'], down_block_types=('DownEncoderBlock2D',) * 2, up_block_types=('UpDecoderBlock2D',) * 2)
    else:
        siglip, text, vision, vae = SIGLIP2_BASE, QWEN_3B, QWEN_3B_VISION, SD15_VAE
    full = text['num_hidden_layers']  # the config's token ids are the tokenizer's, as a conversion script sets them
    text = dict(text, num_hidden_layers=layers or full, pad_token_id=tok.pad_token_id, bos_token_id=None,
                eos_token_id=tok.eos_token_id)
    check_vocabulary(tok, text['vocab_size'])
    with default_dtype(dtype):
        parts = dict(vision=Siglip2VisionModel(Siglip2VisionConfig(**siglip)),
                     qwen=Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
                         text_config=text, vision_config=vision, tie_word_embeddings=True)),
                     vae=AutoencoderKL(in_channels=3, out_channels=3, **vae))
    parts['vision'].save_pretrained(os.path.join(home, 'siglip'))
    parts['qwen'].save_pretrained(os.path.join(home, 'qwen'))
    tok.save_pretrained(os.path.join(home, 'qwen'))
    parts['vae'].save_pretrained(os.path.join(home, 'sd', 'vae'))
    state = {'vision.' + k: v for k, v in parts['vision'].state_dict().items()}  # keys as ToyUMM names its modules
    state.update({'vae.' + k: v for k, v in parts['vae'].state_dict().items()})
    for k, v in parts['qwen'].state_dict().items():  # build_toy keeps the language model and lm_head, drops the rest
        if k.startswith(('model.language_model.', 'lm_head.')):
            state[k.replace('model.language_model.', 'lm.', 1)] = v
    n = sum(m.num_parameters() for m in parts.values())  # Qwen's vision tower included: saved, then dropped
    return state, n, (f"LM {text['num_hidden_layers']}/{full} layers, H {text['hidden_size']}, vocab "
                      f"{text['vocab_size']}; SigLIP2 {siglip['num_hidden_layers']} layers, {siglip['num_patches']} "
                      f"tokens; VAE {len(vae['block_out_channels'])} levels")


def check_vocabulary(tok, vocab_size):
    """The LM's embedding must cover every id the tokenizer emits."""
    top = max(tok.get_vocab().values())
    if top >= vocab_size:
        raise ValueError(f"the tokenizer emits id {top}, outside the LM's vocabulary of {vocab_size}")


def same_weights(saved, loaded):
    """Every tensor of `saved` (name -> tensor) equals `loaded`'s, exactly, in the wider of the two dtypes (Janus loads
    its generation head in float32); returns how many were compared."""
    for k, v in saved.items():
        if k not in loaded:
            raise AssertionError(f"{k} was saved but is not in the loaded model")
        wide = torch.promote_types(v.dtype, loaded[k].dtype)  # bf16 -> float32 is exact, so equality stays exact
        if not torch.equal(loaded[k].detach().to('cpu', wide), v.to(wide)):
            raise AssertionError(f"{k} differs after loading")
    return len(saved)


@torch.no_grad()
def decode_times(umm, janus, ctx):
    """Seconds per candidate, batch 1, C applied, one run each: Janus regen vs t2i, toy decode vs generate."""
    b = data.collate([data.ShapesVQA('val', 1)[0]])  # one val scene: batch 1
    x = F.interpolate(b['images'], size=umm.image_size, mode='bilinear').clamp(0, 1).to(umm.device)  # as train.py
    q, C, out = b['questions'], Perturber(umm.hidden_size).to(umm.device), {}  # an untrained C: it times, not attacks
    with ctx:
        z = umm.encode(x)                                                        # (1, N, H)
        jobs = dict(decode=lambda: umm.decode(x, z, q, C), generate=lambda: umm.generate(q))
        if janus:  # regen: one teacher-forced LLM pass over the N codes; t2i: N sequential steps on 2B rows (CFG)
            jobs = {m: lambda m=m: umm.decode(x, z, q, C, mode=m) for m in ('regen', 't2i')}
        for k, job in jobs.items():
            t = time.perf_counter()
            job()
            out[k] = time.perf_counter() - t
    return out


def train_step(backbone, args, env, out):
    """One step of train.py on the saved model, as a user runs it: its metrics row, final.json and wall time."""
    # --filter none: no CLIP needed; --val-size 0: no final table; 64 train scenes: quick to build
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), '--backbone', *backbone, '--steps', '1', '--filter', 'none',
           '--batch-size', str(args.batch_size), '--micro-batch', '1', '--dtype', args.dtype, '--device', args.device,
           '--val-size', '0', '--train-size', '64', '--log-every', '1', '--out_dir', out]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)  # its own process: its own peak memory
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    with open(os.path.join(out, 'metrics.jsonl')) as f, open(os.path.join(out, 'final.json')) as g:
        return json.loads(f.readline()), json.load(g), time.perf_counter() - t


def main(name, argv=()):
    p = argparse.ArgumentParser(prog=f'model.py --smoke {name}', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dtype', default=None, choices=['bfloat16', 'float32'],
                   help="the weights' dtype and train.py's autocast (--dtype); default bfloat16, or float32 on a CPU "
                        "without bf16 units")
    p.add_argument('--layers', type=int, default=None,
                   help="LLM layers (default: the architecture's, 24 on Janus-Pro-1B, 36 on Qwen2.5-VL-3B; 2 on a CPU "
                        "without bf16 units, where the full depth takes about an hour a step in float32)")
    p.add_argument('--batch-size', type=int, default=2,
                   help="train.py --batch-size, the step's clean rows; each is a micro-batch of its own")
    p.add_argument('--device', default='cpu', help='cpu or cuda, for the decode times and the step')
    args = p.parse_args(argv)
    if name not in SIZES:
        p.error(f"unknown size {name!r}; one of {', '.join(SIZES)}")
    # torch's test of whether oneDNN runs bf16 fast on this CPU; if not, bf16 is the slow path of "Cost" above
    slow_cpu = args.device == 'cpu' and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if slow_cpu and args.dtype is None and args.layers is None and not name.startswith('tiny-'):
        args.dtype, args.layers = 'float32', 2
        print(f"note: this CPU has no bf16 units ({torch.backends.cpu.get_cpu_capability()}): bf16 matmuls run ~7x and "
              f"convolutions ~500x slower than float32 here, so this run is float32 with the LLM cut to 2 layers "
              f"(every width, tower and token count kept); the full run: --dtype bfloat16 --layers N (hours here)")
    args.dtype = args.dtype or 'bfloat16'
    t_start, dtype, janus = time.perf_counter(), getattr(torch, args.dtype), name not in ('toy', 'tiny-toy')
    torch.manual_seed(0)  # the same random weights on every run
    hf_logging.disable_progress_bar()  # transformers' bars for writing and loading shards
    with tempfile.TemporaryDirectory(prefix=f'smoke-{name}-') as tmp:
        d, env = os.path.join(tmp, 'model'), {**os.environ, 'HF_HUB_OFFLINE': '1'}  # train.py must load from disk alone
        t = time.perf_counter()
        saved, n, what = (build_janus if janus else build_toy)(name, args.layers, dtype, d)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)  # bytes on disk
        print(f"smoke {name}: {what}\n  build + save_pretrained: {n:,} parameters in {args.dtype}, "
              f"{size / 2 ** 20:,.0f} MiB, {time.perf_counter() - t:.0f}s")
        t = time.perf_counter()
        if janus:  # exactly train.py's call for --backbone DIR
            umm, backbone = backbones.load_backbone(d, dtype=dtype, decode='regen', device=args.device), [d]
        else:  # the parts as local dirs, as `train.py --backbone toy --toy-siglip DIR ...` reads them
            parts = {k: os.path.join(d, k) for k in ('siglip', 'qwen', 'sd')}
            umm, backbone = toy_umm.build_toy(**parts).to(args.device), ['toy'] + [
                a for k, v in parts.items() for a in (f'--toy-{k}', v)]
        state = umm.janus.state_dict() if janus else umm.state_dict()
        checked = same_weights(saved, state)
        print(f"  load ({'backbones.load_backbone(DIR)' if janus else 'toy_umm.build_toy(local dirs)'}): "
              f"{time.perf_counter() - t:.0f}s; {checked} saved tensors equal the loaded ones")
        del saved, state  # saved: the built model's tensors, a second model's worth of memory
        ctx = torch.autocast(args.device.split(':')[0], dtype=dtype, enabled=dtype != torch.float32)  # as train.py's
        dec = decode_times(umm.eval(), janus, ctx)
        slow, fast = ('t2i', 'regen') if janus else ('generate', 'decode')
        codes = f" ({umm.grid ** 2} codes)" if janus else ''
        print(f"  decode per candidate, batch 1, C applied, one run each: {fast} {dec[fast]:.2f}s, {slow} "
              f"{dec[slow]:.2f}s{codes}: {slow} / {fast} = {dec[slow] / dec[fast]:.1f}x")
        del umm  # train.py loads its own copy
        row, final, wall = train_step(backbone, args, env, os.path.join(tmp, 'run'))
    phases, precision = row['phase_time'], args.dtype + (' autocast' if dtype != torch.float32 else ', no autocast')
    print(f"  one UniGame step (train.py --backbone {'DIR' if janus else 'toy --toy-siglip DIR ...'}, batch "
          f"{args.batch_size}, micro-batch 1, {precision}, {args.device}): "
          + ', '.join(f"{k} {v:.1f}s" for k, v in phases.items()) + f"; step {row['step_time']:.1f}s; accepted "
          f"{row['accepted']}, hard rows {row['hard_fresh']}, L_U {row['L_U']:.3f}, L_C {row['L_C']:.3f}")
    peak = final['peak_memory_mb']
    print(f"  train.py: {wall:.0f}s with start-up and load, peak resident memory {peak / 1024:.2f} GiB\n"
          f"total {time.perf_counter() - t_start:.0f}s")
    return dict(tensors=checked, phases=phases, decode=dec, row=row, peak_mb=peak)


# -----------------------------------------------------------------------------
# two more checks that need no weights: python model.py --eps-probe NAME | --bench-decode [--batch N]

@torch.no_grad()
def eps_probe(name='janus-pro-1b', eps=(0.005, 0.01, 0.02, 0.05, 0.1), batch=2, seed=0):
    """What --eps does to Janus's candidates at full size, offline: the real architecture with random weights (no
    checkpoint exists here), 384 px shapes scenes, regen with delta of norm eps * rms (train.py's random-noise
    ablation, the norm C's gate sets) on the post-LLM image states. Per eps: the share of the 576 VQ codes that
    change, and the mean change of U's CE on the re-encoded candidate. Random weights: the numbers show the scale
    works at the true sizes, not what the trained model does."""
    torch.manual_seed(seed)
    hub, arch = JANUS_PRO[name]
    t0 = time.time()
    tok = janus_word_tokenizer()  # the real vocabulary size, a word-level tokenizer over the shapes' words
    config = janus_config(arch, image_token_id=tok.convert_tokens_to_ids('<image_placeholder>'))
    umm = JanusUMM(JanusForConditionalGeneration(config).eval(), tok)
    ds = data.ShapesVQA('val', batch)
    b = data.collate([ds[i] for i in range(batch)])
    x = F.interpolate(b['images'], size=umm.image_size, mode='bilinear').clamp(0, 1)          # (B, 3, 384, 384)
    codes = umm.image_codes(x)                                                                 # (B, 576)
    states = umm.gen_states(codes, b['questions']).float()                                     # (B, 576, H)
    clean = umm.pick(umm.gen_logits(states), 0.0)                                              # (B, 576) argmax
    ce0 = umm.understand_loss(umm.encode(umm.render(clean)), b['questions'], b['answers'])     # (B,) U on G(z)
    rms = Perturber.token_rms(states)                                                          # (B, 1, 1) eps's unit
    print(f"{name} (random weights), {batch} scenes at {umm.image_size} px, {codes.shape[1]} codes; post-LLM state "
          f"rms {rms.mean():.1f}; built and one clean pass in {time.time() - t0:.0f}s")
    rows = []
    for e in eps:
        delta = e * rms * F.normalize(torch.randn_like(states), dim=-1)                          # ||delta_i|| = e rms
        picked = umm.pick(umm.gen_logits(states + delta), 0.0)                                 # (B, 576)
        ce = umm.understand_loss(umm.encode(umm.render(picked)), b['questions'], b['answers'])
        rows.append(dict(eps=e, codes_changed=(picked != clean).float().mean().item(),
                         delta_ce=(ce - ce0).mean().item()))
        print(f"eps {e:<6} codes changed {rows[-1]['codes_changed']:.3f}   U's CE change {rows[-1]['delta_ce']:+.4f}")
    return rows


@torch.no_grad()
def bench_decode(batch=16, reps=3, seed=0):
    """Wall time per candidate of `regen` and `t2i` on tiny-janus (16 x 16 codes, the same batch, C applied), and of
    their LLM parts alone (the teacher-forced pass vs the autoregressive loop). The best of `reps` runs, seconds."""
    torch.manual_seed(seed)
    umm, ds = build_tiny_janus().eval(), data.ShapesVQA('val', batch)
    b = data.collate([ds[i] for i in range(batch)])
    x, q, C = b['images'], b['questions'], Perturber(umm.hidden_size, 16)
    codes = umm.image_codes(x)                                                   # (B, 256) VQ codes of x
    jobs = dict(regen=lambda: umm.decode(x, None, q, C, mode='regen'), regen_llm=lambda: umm.gen_states(codes, q),
                t2i=lambda: umm.decode(x, None, q, C, mode='t2i'), t2i_llm=lambda: umm.t2i_codes(q, C))
    out = {}
    for k, job in jobs.items():
        job()  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            job()
            times.append(time.perf_counter() - t)
        out[k] = min(times) / batch  # the best run (least disturbed by other jobs), per candidate
    return out
