"""
Will a UniGame run of Janus-Pro fit one GPU? An estimate of peak GPU memory from bytes measured on this CPU.

    python model.py --memory janus-pro-7b                       # the README's one-GPU command: train.py's defaults
    python model.py --memory janus-pro-7b --micro-batch 0 --activation-checkpointing off   # what does not fit
    python model.py --count janus-pro-7b --perturber-width 256  # parameter counts alone: base, LoRA, C

How it is measured. Weights, LoRA and C are counted on the meta device (count_parameters' build). Activations
are what autograd keeps for backward, counted with torch.autograd.graph.saved_tensors_hooks (each storage once,
parameters left out) on modules built at the true widths on the CPU, in bf16 autocast as train.py runs them:
- one decoder layer of the LLM (Llama at the model's H, intermediate size and heads, LoRA on --lora-targets) at two
  sequence lengths, split into bytes per token and bytes per token^2 (the T x T attention scores of CPU's SDPA);
- the same layer under activation checkpointing (what it keeps is its input: the float32 residual stream, since
  z + delta enters U in float32);
- one and two SigLIP layers of the vision encoder (the re-encoding Enc(G(z + delta)) of Eq. 7), on 16 and 64 tokens,
  taken to 576 by the fitted a + b T;
- the VQ-16 decoder (G's render in Eq. 7) on 3 x 3 and 6 x 6 latents, taken to 24 x 24 (384 px) the same way, and
  the generation head on 576 states (float32).
Short sequences and small latents because bf16 on a CPU without bf16 units is slow; what a layer keeps grows as
a + b T in its tokens (b: the attention scores), so two sizes determine it.
Then the phases of one step (Algorithm 1) are sums of these for a micro-batch of rows: the challenge step (head + VQ
decoder + SigLIP + LLM pass of U), the understand step (LLM pass of U over clean + hard rows), the caption pairs' T2I
pass. Mining runs without gradients. Peak = weights + trainable states + the largest phase + 2 GiB for the CUDA
context and allocator slack.

Assumptions, stated: on the GPU, SDPA's memory-efficient kernel keeps O(T) per head, so the T^2 term measured on the
CPU is left out of the total (printed beside it); U's row is 576 image tokens + the system prompt + 32 tokens of
question and answer. Never checked against a real GPU (there is none here).
"""

import argparse
import math

import torch
from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

import backbones
import janus
import model
from perturber import Perturber

GIB = 2 ** 30


def saved_bytes(fn, params=()):
    """Bytes autograd keeps for backward while fn() runs: each saved storage once, parameters' storages excluded."""
    skip = {p.untyped_storage().data_ptr() for p in params}  # parameters count as weights (estimate's parts), not here
    seen = {}  # storage address -> bytes: two views of one storage (a tensor and its transpose) count once

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # pack sees every tensor saved for backward
        fn()
    return sum(seen.values())


def fit(sizes, measured):
    """Bytes b(n) = lin * n + quad * n^2 through two measured points: (lin, quad). n is tokens (or latent pixels)."""
    (n1, n2), (b1, b2) = sizes, measured
    # b1 = lin n1 + quad n1^2 and b2 = lin n2 + quad n2^2, solved; a negative quad (measurement noise) is taken as 0
    quad = max(0.0, (b2 * n1 - b1 * n2) / (n1 * n2 * (n2 - n1)))
    return (b1 - quad * n1 * n1) / n1, quad


def llm_layer(cfg, targets, r, checkpointing, lengths=(16, 32)):
    """One Llama decoder layer at the true width with LoRA: (bytes per token, bytes per token^2) it keeps. Short
    sequences suffice (what a layer keeps grows as a + b T) and keep bf16 on a CPU without bf16 units bearable."""
    from transformers import LlamaConfig, LlamaModel
    t = cfg.text_config
    # Janus-Pro's LLM is a Llama: one layer at its true width, heads and MLP size stands for each of its L layers
    one = LlamaConfig(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size, num_hidden_layers=1,
                      num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
                      vocab_size=8, max_position_embeddings=max(lengths), use_cache=False)
    lora = model.LORA_DEFAULTS  # train.py's alpha and dropout (dropout keeps a mask per LoRA input)
    lm = model.peft_lora(LlamaModel(one).to(torch.bfloat16), r, lora['alpha'], lora['dropout'], targets)
    lm.train()
    if checkpointing:
        lm.base_model.model.activation_checkpointing_enable(activation_checkpointing_kwargs={'use_reentrant': False})
    measured = []
    for T in lengths:
        x = torch.randn(1, T, t.hidden_size)  # z + delta and the text embeddings, float32 as U reads them
        with torch.autocast('cpu', dtype=torch.bfloat16):
            measured.append(saved_bytes(lambda: lm(inputs_embeds=x).last_hidden_state.float().sum(), lm.parameters()))
    return fit(lengths, measured)  # (bytes per token, bytes per token^2) of one layer, batch 1


def vision_per_token(cfg, sizes=(64, 128)):
    """SigLIP at the true width: bytes kept per token by one layer, and by the rest (embeddings), with grads flowing
    to the pixels (Enc(G(z + delta))); measured on small images (16 and 64 tokens) and fitted, (lin, quad) each."""
    from transformers import JanusVisionModel
    v, per = cfg.vision_config, {}
    for layers in (1, 2):  # two depths: their difference is one layer; the rest: embeddings, what follows the layers
        measured = []
        for s in sizes:
            model = JanusVisionModel(type(v)(**{**v.to_dict(), 'num_hidden_layers': layers, 'image_size': s}))
            model = model.to(torch.bfloat16)
            x = torch.rand(1, 3, s, s, requires_grad=True)  # Eq. 7's gradient reaches delta through Enc(x~): pixels
            with torch.autocast('cpu', dtype=torch.bfloat16):
                measured.append(saved_bytes(lambda: model(x).last_hidden_state.float().sum(), model.parameters()))
        per[layers] = fit([(s // v.patch_size) ** 2 for s in sizes], measured)  # tokens: 16 and 64
    layer = tuple(b - a for a, b in zip(per[1], per[2]))  # (lin, quad) of one SigLIP layer; below: of the rest
    return layer, tuple(a - l for a, l in zip(per[1], layer))


def render_and_head(cfg, grids=(3, 6)):
    """Bytes kept by the VQ-16 decoder for one g x g latent (fitted in latent pixels from 3 x 3 and 6 x 6, then taken
    to the model's 24 x 24 = 384 px) and by the generation head on g^2 states (float32, as janus.py runs it)."""
    from transformers.models.janus.modeling_janus import JanusVQVAE, JanusVQVAEHead
    q, H, g = cfg.vq_config, cfg.text_config.hidden_size, cfg.vision_config.image_size // 16  # VQ-16: 384 px -> 24
    vq = JanusVQVAE(q).to(torch.bfloat16)
    measured = []
    for n in grids:
        latents = torch.randn(1, q.embed_dim, n, n, requires_grad=True)  # (1, embed_dim = 8, n, n) codebook entries
        with torch.autocast('cpu', dtype=torch.bfloat16):
            measured.append(saved_bytes(lambda: vq.decoder(vq.post_quant_conv(latents)).float().sum(), vq.parameters()))
    lin, quad = fit([n * n for n in grids], measured)  # per latent pixel; quad: its self-attention blocks
    head = JanusVQVAEHead(q)
    states = torch.randn(1, g * g, H, requires_grad=True)  # (1, 576, H) post-LM image states, float32
    logits = lambda: torch.softmax(head(states).float(), -1).sum()   # softmax: the straight-through estimator
    return lin * g * g + quad * (g * g) ** 2, saved_bytes(logits, head.parameters())


def count_parameters(name='janus-pro-7b', perturber_width=None, **lora):
    """Meta-device parameter counts, offline: the whole model, the LoRA adapters (LORA_DEFAULTS unless given), the
    perturber C at `perturber_width` (default H) and the trainable share (LoRA + C) / the frozen base."""
    umm = janus.build_janus(name, meta=True).add_lora(**lora)
    n_lora = sum(p.numel() for p in umm.understanding_parameters())
    base = sum(p.numel() for p in umm.parameters()) - n_lora  # meta tensors: shapes without memory, any machine
    with torch.device('meta'):
        n_c = sum(p.numel() for p in Perturber(umm.hidden_size, perturber_width).parameters())
    return dict(base=base, lora=n_lora, perturber=n_c, trainable_share=(n_lora + n_c) / base)


def estimate(name='janus-pro-7b', batch_size=32, micro_batch=None, replay=16, hard_quantile=0.6,
             activation_checkpointing='on', lora_r=model.LORA_DEFAULTS['r'], lora_targets=model.LORA_TARGETS,
             perturber_width=None, attack='decoded', captions=False, gpu_gib=80, **_):
    """The peak estimate in GiB, by part, for one rank's step of train.py with these flags."""
    micro = micro_batch if micro_batch is not None else backbones.default_micro_batch(name)
    umm = janus.build_janus(name, meta=True).add_lora(r=lora_r, targets=lora_targets)
    cfg, H = umm.janus.config, umm.hidden_size
    n_lora = sum(p.numel() for p in umm.understanding_parameters())
    head = sum(p.numel() for p in umm.janus.model.generation_head.parameters())
    frozen = sum(p.numel() for p in umm.parameters()) - n_lora
    with torch.device('meta'):
        n_c = sum(p.numel() for p in Perturber(H, perturber_width).parameters())
    # bytes per parameter: 2 for bf16 frozen weights, 4 for the fp32 head; trainables 4 + 4 + 4 + 4 = weight, grad,
    # AdamW's two moments, all float32
    parts = {'frozen weights (bf16; generation head fp32)': (2 * (frozen - head) + 4 * head) / GIB,
             'LoRA + C: fp32 weights, grads, AdamW states': 16 * (n_lora + n_c) / GIB}
    ckpt = activation_checkpointing == 'on'
    lin, quad = llm_layer(cfg, lora_targets, lora_r, checkpointing=False)  # bytes per token of one whole layer
    kept, _ = llm_layer(cfg, lora_targets, lora_r, checkpointing=True) if ckpt else (lin, quad)
    N = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2  # image tokens: (384 / 16)^2 = 576
    v_layer, v_rest = (lin_v * N + quad_v * N * N for lin_v, quad_v in vision_per_token(cfg))
    dec, gen_head = render_and_head(cfg)
    L, Lv = cfg.text_config.num_hidden_layers, cfg.vision_config.num_hidden_layers
    T = N + math.ceil(len(DEFAULT_SYSTEM_PROMPT) / 3.5) + 32  # U's row: image, system prompt (~3.5 chars/token), Q + A

    def llm(rows, tokens):  # checkpointed: each layer keeps its input, and one layer at a time is rebuilt whole
        return rows * tokens * (L * kept + (lin if ckpt else 0))
    rows_u = batch_size + math.ceil((1 - hard_quantile) * batch_size) + replay  # clean + accepted + replayed
    # rows alive at once: a micro-batch (gradients accumulate across them), or the whole phase at --micro-batch 0
    m_u, m_c = min(micro or rows_u, rows_u), min(micro or batch_size, batch_size)
    width = cfg.vision_config.hidden_size  # SigLIP checkpointed too: each layer keeps its fp32 input, one is rebuilt
    vision = (Lv * N * width * 4 + v_layer if ckpt else Lv * v_layer) + v_rest
    # per phase the activations of its rows; --attack token skips G and Enc (U reads z + delta directly); a caption
    # pair's row is N image codes + 48 caption tokens (assumed)
    phases = {'challenge (Eq. 7: head, VQ decoder, SigLIP, U)':
              m_c * ((gen_head + dec + vision) * (attack == 'decoded')) + llm(m_c, T),
              'understand (Eq. 6: clean + hard rows)': llm(m_u, T),
              't2i on caption pairs': llm(m_c, N + 48) + m_c * gen_head if captions else 0.0}
    top = max(phases, key=phases.get)  # the phases run one after another: the largest sets the peak
    parts[f'activations, largest phase: {top}, {m_u if "understand" in top else m_c} rows'] = phases[top] / GIB
    parts['CUDA context + allocator slack'] = 2.0
    total = sum(parts.values())
    return dict(parts=parts, phases={k: v / GIB for k, v in phases.items()}, total=total, fits=total <= gpu_gib,
                gpu_gib=gpu_gib, micro_batch=micro, rows_understand=rows_u, tokens_per_row=T,
                bytes_per_token_layer=dict(llm=lin, llm_checkpointed=kept, llm_attention_per_token2=quad),
                bytes_per_image=dict(vq_decoder=dec, generation_head=gen_head, siglip_layer=v_layer))


def main(name, argv):
    p = argparse.ArgumentParser(prog=f'model.py --memory {name}', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch-size', type=int, default=32, help='train.py --batch-size')
    p.add_argument('--micro-batch', type=int, default=None, help='train.py --micro-batch (default: its default)')
    p.add_argument('--replay', type=int, default=16, help='train.py --replay')
    p.add_argument('--hard-quantile', type=float, default=0.6, help='train.py --hard-quantile')
    p.add_argument('--activation-checkpointing', default='on', choices=['on', 'off'], help='train.py flag')
    p.add_argument('--lora-r', type=int, default=model.LORA_DEFAULTS['r'], help='train.py --lora-r')
    p.add_argument('--lora-targets', default=','.join(model.LORA_TARGETS), help='train.py --lora-targets')
    p.add_argument('--perturber-width', type=int, default=None, help='train.py --perturber-width')
    p.add_argument('--attack', default='decoded', choices=['decoded', 'token'], help='train.py --attack')
    p.add_argument('--captions', action='store_true', help='count the T2I pass of train.py --captions')
    p.add_argument('--gpu-gib', type=float, default=80, help='the GPU memory to fit, GiB (80: one H100 / A100)')
    a = p.parse_args(argv)
    e = estimate(name, **{**vars(a), 'lora_targets': tuple(a.lora_targets.split(','))})
    print(f"{name}, batch {a.batch_size} + {e['rows_understand'] - a.batch_size} hard rows in U's step, micro-batch "
          f"{e['micro_batch'] or 'none'}, activation checkpointing {a.activation_checkpointing}, bf16, "
          f"{e['tokens_per_row']} tokens per row")
    b = e['bytes_per_token_layer']
    print(f"measured on CPU at the true widths: LLM layer {b['llm'] / 1024:.1f} KiB per token "
          f"({b['llm_checkpointed'] / 1024:.1f} KiB checkpointed; CPU attention adds "
          f"{b['llm_attention_per_token2']:.0f} B per token^2, left out: GPU SDPA keeps O(T)); per image: VQ decoder "
          f"{e['bytes_per_image']['vq_decoder'] / GIB:.2f} GiB, generation head "
          f"{e['bytes_per_image']['generation_head'] / GIB:.3f} GiB, SigLIP layer "
          f"{e['bytes_per_image']['siglip_layer'] / GIB:.3f} GiB")
    for k, v in e['phases'].items():
        print(f"  phase {k:48} {v:7.1f} GiB")
    for k, v in e['parts'].items():
        print(f"{k:75} {v:7.1f} GiB")
    print(f"{'estimated peak per GPU':75} {e['total']:7.1f} GiB of {e['gpu_gib']:g}")
    print(f"fits: {'yes' if e['fits'] else 'no'}")
    return e
