"""
Janus-Pro as a UMM (model.py's contract) on transformers' JanusForConditionalGeneration: no vendored code, no
trust_remote_code. `--backbone janus-pro-7b`, `janus-pro-1b`, a hub id or a local dir (backbones.py); `tiny-janus`, the
same classes at tiny sizes, is tiny_janus.py.

    understanding  x -> SigLIP -> aligner -> z (B, N, H) -> the N <image_placeholder> slots of the chat prompt
                   -> the LLM -> lm_head                                            (N = 576, H = 4096 on the 7B)
    generation     [prompt, <begin_of_image>, VQ code embeddings] -> the same LLM -> generation head -> codes
                   -> VQ-16 decoder -> x~                                           (N codes on a 24 x 24 grid)

Janus decouples the two encoders: generation never reads z, so the generation branch's delta goes on its own
token states (the post-LM image states for `regen`, the fed-back code embeddings for `t2i`). Both have width H.

    python -m pytest -q tests/test_janus.py   # on tiny-janus: the answer loss equals transformers' own forward, ...
    python model.py --count janus-pro-7b      # the 7B architecture on the meta device, offline: parameter counts
"""

import os
import re

import torch
import torch.nn.functional as F
from transformers import (AutoConfig, AutoTokenizer, JanusConfig, JanusForConditionalGeneration, JanusVisionConfig,
                          JanusVQVAEConfig, LlamaConfig)
from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

from model import LORA_DEFAULTS, LORA_TARGETS, UMM, MissingWeights, from_pretrained, peft_lora

CHAT = "{system}<|User|>: {image}\n{question}\n\n<|Assistant|>:"  # the hub chat template, rendered; answer: " {a}<eos>"
T2I = "<|User|>: {prompt}\n\n<|Assistant|>:"                       # Janus's text-to-image prompt, then <begin_of_image>

# The released architectures, so the 7B / 1B can be built on the `meta` device offline. Numbers from the released
# config.json of deepseek-ai/Janus-Pro-{7B,1B} (language_config; aligner, gen_aligner and gen_head n_embed = the LLM
# width; gen_vision VQ-16 with 16384 codes of dim 8), as transformers' convert_janus_weights_to_hf.py maps them, and
# the converted 1B config (hf-internal-testing/tiny-processor-janus). SigLIP-L/16 at 384 px (576 tokens) and the VQ-16
# convolutions are the JanusVisionConfig / JanusVQVAEConfig defaults. The LLM's lm_head is not tied to its embeddings
# (DeepSeek-LLM): the 7B then counts 7.41B parameters, matching the 14.8 GB bf16 checkpoint.
JANUS_PRO = {
    'janus-pro-7b': ('deepseek-community/Janus-Pro-7B',
                     dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30, num_attention_heads=32)),
    'janus-pro-1b': ('deepseek-community/Janus-Pro-1B',
                     dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16)),
}


class JanusUMM(UMM):
    """The UMM contract on JanusForConditionalGeneration; `decode` renders candidates by `regen` (default) or `t2i`.
    The LM reads the ids JanusProcessor builds with the hub's chat template (tests/test_janus.py compares them):
    `system` is its use_default_system_prompt (DEFAULT_SYSTEM_PROMPT on the hub checkpoints, '' on tiny-janus)."""

    def __init__(self, janus, tokenizer, system='', caption_prompt='Describe this image.', decode='regen',
                 gen_temperature=None, cfg_scale=5.0):
        super().__init__()
        if decode not in ('regen', 't2i'):
            raise ValueError(f"decode (--decode) must be 'regen' or 't2i', got {decode!r}")
        self.janus, self.tok, self.system, self.caption_prompt = janus, tokenizer, system, caption_prompt
        self.decode_mode, self.gen_temperature, self.cfg_scale = decode, gen_temperature, cfg_scale
        c = janus.config
        self.hidden_size = H = c.text_config.hidden_size
        self.image_size = c.vision_config.image_size
        self.grid = self.image_size // c.vision_config.patch_size  # N = grid^2 image tokens, and as many VQ codes
        if not c.vision_config.projection_dim == c.vq_config.projection_dim == c.vq_config.image_token_embed_dim == H:
            raise ValueError("the aligner, the generation aligner and the generation head must all have the LLM width")
        janus.model.generation_head.float()  # it reads states + delta: bf16 would round delta away (perturber.py)
        if tokenizer is not None:  # meta-device builds (counting) have none
            ids = tokenizer.convert_tokens_to_ids
            self.boi, self.eos = ids('<begin_of_image>'), tokenizer.eos_token_id
            # Janus blanks the CFG prompt with <｜▁pad▁｜> (the DeepSeek vocabulary), else the tokenizer's pad
            self.pad = tokenizer.get_vocab().get('<｜▁pad▁｜>', tokenizer.pad_token_id)
            self.bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
            if ids('<image_placeholder>') != c.image_token_id:
                raise ValueError("the tokenizer's <image_placeholder> is not the config's image_token_id")

    @property
    def lm(self):  # the LLM (a peft model after add_lora)
        return self.janus.model.language_model

    @property
    def device(self):
        return self.janus.lm_head.weight.device

    # ---- understanding ------------------------------------------------------------------------------------------

    def _pixels(self, images):
        """(B, 3, h, w) in [0, 1] -> (B, 3, s, s) in [-1, 1]: Janus's image_mean = image_std = 0.5 (SigLIP and VQ)."""
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a (B, 3, h, w) tensor in [0, 1], got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images.float(), size=self.image_size, mode='bicubic', antialias=True).clamp(0, 1)
        return (images * 2 - 1).to(self.janus.model.vision_model.dtype)

    def encode(self, images):
        """SigLIP + aligner: images -> z (B, N, H), N = (s / patch)^2."""
        return self.janus.model.get_image_features(self._pixels(images)).pooler_output

    def _ids(self, text):
        return self.tok(text, add_special_tokens=False)['input_ids']

    def _prompt(self, question):
        """The processor's text: the chat template with the image expanded to <boi> N x <image_placeholder> <eoi>."""
        image = '<begin_of_image>' + '<image_placeholder>' * self.grid ** 2 + '<end_of_image>'
        return self.bos + self._ids(CHAT.format(system=self.system, image=image, question=question))

    def _embeds(self, seqs, z=None):
        """Left-pad id lists to (B, L) and embed them; z (B, N, H) replaces the placeholder embeddings (it is not put
        beside them). Returns embeds (B, L, H), attention mask (B, L), positions (B, L) that skip the padding."""
        B, L, dev = len(seqs), max(map(len, seqs)), self.device
        ids = torch.full((B, L), self.pad, dtype=torch.long, device=dev)
        mask = torch.zeros(B, L, dtype=torch.long, device=dev)
        for i, s in enumerate(seqs):
            ids[i, L - len(s):], mask[i, L - len(s):] = torch.tensor(s, device=dev), 1
        embeds = self.lm.get_input_embeddings()(ids)
        if z is not None:
            slots = (ids == self.janus.config.image_token_id).unsqueeze(-1)  # (B, L, 1)
            if slots.sum() * z.shape[-1] != z.numel():
                raise ValueError(f"z has {z.shape[:2]} tokens but the prompts hold {slots.sum()} placeholders")
            dtype = torch.promote_types(z.dtype, embeds.dtype)  # float32 z + delta stays float32 in the residual
            embeds = embeds.to(dtype).masked_scatter(slots, z.to(dtype))
        return embeds, mask, (mask.cumsum(1) - 1).clamp(min=0)

    def understand_loss(self, z, questions, answers):
        """Eq. 1 per sample: -log p_U(a | z, q) averaged over the answer tokens and <eos>. (B,) float32."""
        targets = [self._ids(' ' + a) + [self.eos] for a in answers]
        embeds, mask, pos = self._embeds([self._prompt(q) + t for q, t in zip(questions, targets)], z)
        hidden = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).last_hidden_state  # (B, L, H)
        L, rows, cols, labels = hidden.shape[1], [], [], []
        for i, t in enumerate(targets):  # left-padded: the targets are the last len(t) tokens; state j-1 predicts j
            rows += [i] * len(t)
            cols += range(L - len(t) - 1, L - 1)
            labels += t
        rows = torch.tensor(rows, device=z.device)
        logits = self.janus.lm_head(hidden[rows, torch.tensor(cols, device=z.device)]).float()  # (M, V), M targets
        ce = F.cross_entropy(logits, torch.tensor(labels, device=z.device), reduction='none')
        count = torch.zeros(len(targets), device=z.device).index_add(0, rows, torch.ones_like(ce))
        return torch.zeros(len(targets), device=z.device).index_add(0, rows, ce) / count  # (B,)

    @torch.no_grad()
    def _greedy(self, z, prompts, max_new_tokens):
        """Greedy text after [chat prompt with z], with a KV cache; each sample stops at its <eos>."""
        embeds, mask, pos = self._embeds([self._prompt(p) for p in prompts], z)
        cache, out, done = None, [], torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        for _ in range(max_new_tokens):
            o = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            cache, nxt = o.cache, self.janus.lm_head(o.last_hidden_state[:, -1]).argmax(-1)  # (B,)
            out.append(nxt.masked_fill(done, self.eos))
            done |= nxt == self.eos
            if done.all():
                break
            embeds = self.lm.get_input_embeddings()(nxt)[:, None].to(embeds.dtype)
            mask, pos = F.pad(mask, (0, 1), value=1), pos[:, -1:] + 1
        rows = [r[:r.index(self.eos)] if self.eos in r else r for r in torch.stack(out, 1).tolist()]
        return [self.tok.decode(r, skip_special_tokens=True).strip() for r in rows]

    def answer(self, z, questions, max_new_tokens=4):
        return self._greedy(z, questions, max_new_tokens)

    def caption(self, images, max_new_tokens=48):
        return self._greedy(self.encode(images), [self.caption_prompt] * len(images), max_new_tokens)

    # ---- generation ---------------------------------------------------------------------------------------------

    def image_codes(self, images):
        """VQ-16 encoder: images -> codes (B, N), the nearest codebook entry by cosine, as the original quantizer
        does (codebook_l2_norm); transformers' JanusVQVAE.encode compares unnormalised vectors."""
        vq = self.janus.model.vqmodel
        h = vq.quant_conv(vq.encoder(self._pixels(images).to(vq.dtype)))                       # (B, 8, g, g)
        h = F.normalize(h.flatten(2).transpose(1, 2).float(), dim=-1)                          # (B, N, 8)
        return (h @ F.normalize(vq.quantize.embedding.weight.float(), dim=-1).T).argmax(-1)   # (B, N)

    def _t2i_prompt(self, prompt):
        return self.bos + self._ids(T2I.format(prompt=prompt)) + [self.boi]

    def gen_states(self, codes, prompts):
        """Teacher forcing: one LLM pass over [prompt, <boi>, codes[:, :-1]] -> (B, N, H), state t predicting code t.
        One parallel pass where t2i makes N sequential ones."""
        B, N = codes.shape
        embeds, mask, pos = self._embeds([self._t2i_prompt(p) for p in prompts])
        img = self.janus.prepare_embeddings_for_image_generation(codes[:, :-1])                # (B, N - 1, H)
        embeds, mask = torch.cat([embeds, img.to(embeds.dtype)], 1), F.pad(mask, (0, N - 1), value=1)
        pos = torch.cat([pos, pos[:, -1:] + torch.arange(1, N, device=pos.device)], 1)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).last_hidden_state[:, -N:]

    def gen_logits(self, states):
        """The generation head, in float32: (B, N, H) -> code logits (B, N, V)."""
        with torch.autocast(states.device.type, enabled=False):
            return self.janus.model.generation_head(states.float())

    def _temperature(self, mode, temperature=None):
        """--gen-temperature; unset: argmax (0) for regen, Janus's sampling at 1 for t2i."""
        t = temperature if temperature is not None else self.gen_temperature
        return t if t is not None else (0.0 if mode == 'regen' else 1.0)

    @staticmethod
    def pick(logits, temperature):
        """Codes from logits (..., V): argmax at temperature 0, else sampled from softmax(logits / temperature)."""
        if temperature <= 0:
            return logits.argmax(-1)
        probs = F.softmax(logits.float() / temperature, -1)
        return torch.multinomial(probs.flatten(0, -2), 1).view(probs.shape[:-1])

    def render(self, codes, logits=None, temperature=1.0):
        """VQ-16 decoder: codes (B, N) -> images (B, 3, s, s) in [0, 1], as decode_image_tokens. Given the logits and
        with grad on, straight-through: the forward uses the codes, gradients flow via softmax(logits) @ codebook."""
        vq, (B, N) = self.janus.model.vqmodel, codes.shape
        book = F.normalize(vq.quantize.embedding.weight.float(), dim=-1)  # decode L2-normalises the codebook
        entries = book[codes]                                                                   # (B, N, 8)
        if logits is not None and torch.is_grad_enabled():
            soft = F.softmax(logits.float() / temperature, -1) @ book
            entries = entries + soft - soft.detach()
        latents = entries.transpose(1, 2).reshape(B, -1, self.grid, self.grid).to(vq.dtype)   # (B, 8, g, g)
        return ((vq.decoder(vq.post_quant_conv(latents)).float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def t2i_codes(self, prompts, perturb=None, temperature=None, cfg_scale=None):
        """Janus's text-to-image: N autoregressive steps with a KV cache and classifier-free guidance (the
        unconditional half is the prompt blanked to <pad>); delta is added to each fed-back code embedding.
        Returns codes (B, N) and delta (B, N - 1, H) float32 or None."""
        T, s = self._temperature('t2i', temperature), self.cfg_scale if cfg_scale is None else cfg_scale
        cond = [self._t2i_prompt(p) for p in prompts]
        uncond = [c[:len(self.bos)] + [self.pad] * (len(c) - len(self.bos) - 1) + c[-1:] for c in cond]
        embeds, mask, pos = self._embeds(cond + uncond)                                        # (2B, L, H)
        cache, codes, deltas = None, [], []
        for t in range(self.grid ** 2):
            o = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            cache = o.cache
            c, u = self.gen_logits(o.last_hidden_state[:, -1:]).chunk(2)                       # (B, 1, V) each
            codes.append(self.pick(u + s * (c - u), T))                                        # (B, 1)
            if t == self.grid ** 2 - 1:
                break
            e = self.janus.prepare_embeddings_for_image_generation(codes[-1])                  # (B, 1, H)
            if perturb is not None:
                deltas.append(perturb(e.float()))
                e = e.float() + deltas[-1]
            embeds, mask, pos = torch.cat([e, e]), F.pad(mask, (0, 1), value=1), pos[:, -1:] + 1
        return torch.cat(codes, 1), torch.cat(deltas, 1) if deltas else None

    def decode(self, images, z, prompts, perturb=None, mode=None, temperature=None):
        """Candidates x~ (B, 3, s, s) and delta. `regen`: x's codes re-predicted by one teacher-forced pass with delta
        on the post-LM image states (differentiable, straight-through); `t2i`: a new image from the prompt."""
        mode = mode or self.decode_mode
        T = self._temperature(mode, temperature)
        if mode == 't2i':
            if perturb is not None and torch.is_grad_enabled():
                raise ValueError("--decode t2i samples autoregressively and is not differentiable: call it under "
                                 "torch.no_grad() (mining), or use --decode regen with --attack decoded")
            codes, delta = self.t2i_codes(prompts, perturb, T)
            return self.render(codes), delta
        if mode != 'regen':
            raise ValueError(f"mode must be 'regen' or 't2i', got {mode!r}")
        with torch.no_grad():  # delta acts after the LLM: nothing before it needs a gradient (nor its memory)
            codes = self.image_codes(images)                                                   # (B, N)
            states = self.gen_states(codes, prompts)                                           # (B, N, H)
        delta = None if perturb is None else perturb(states.float())                          # (B, N, H) float32
        logits = self.gen_logits(states if delta is None else states.float() + delta)          # (B, N, V)
        return self.render(self.pick(logits, T), logits, max(T, 1.0)), delta

    def generate(self, prompts):
        with torch.no_grad():
            return self.render(self.t2i_codes(prompts)[0])

    def t2i_loss(self, prompts, images):
        """Text-image supervision for the generation branch (the CC3M pairs): the CE of x's VQ codes, each predicted
        from the caption and the codes before it, in one teacher-forced pass. (B,) float32."""
        with torch.no_grad():
            codes = self.image_codes(images)                                                   # (B, N)
        logits = self.gen_logits(self.gen_states(codes, prompts))                              # (B, N, V)
        return F.cross_entropy(logits.transpose(1, 2), codes, reduction='none').mean(1)

    # ---- post-training: LoRA on the LLM; SigLIP, aligners, VQ and the generation head frozen ----------------

    def add_lora(self, r=LORA_DEFAULTS['r'], alpha=LORA_DEFAULTS['alpha'], dropout=LORA_DEFAULTS['dropout'],
                 targets=LORA_TARGETS):
        self.requires_grad_(False)  # targets are matched inside the LLM only, not SigLIP
        self.janus.model.language_model = peft_lora(self.lm, r, alpha, dropout, targets)
        return self

    # ---- export: the adapter for plain peft on the whole JanusForConditionalGeneration, or merged weights ----------
    # peft wraps the LLM alone, so its keys and targets are relative to the LLM; other tools load the whole model,
    # where SigLIP has q_proj ... too. The saved adapter is rewritten to the whole model's names.
    LLM = 'model.language_model.'

    def save_trainable(self, directory):
        """The LoRA adapter that `PeftModel.from_pretrained(JanusForConditionalGeneration..., directory)` loads: keys
        under model.language_model, target_modules a regex that matches the LLM's layers only."""
        import json
        from safetensors.torch import load_file, save_file
        self.lm.save_pretrained(directory)
        path = os.path.join(directory, 'adapter_model.safetensors')
        config = os.path.join(directory, 'adapter_config.json')
        weights = {k.replace('base_model.model.', 'base_model.model.' + self.LLM, 1): v
                   for k, v in load_file(path).items()}
        save_file(weights, path)
        with open(config) as f:
            c = json.load(f)
        names = c['target_modules'] if isinstance(c['target_modules'], list) else [c['target_modules']]
        c['target_modules'] = rf"{re.escape(self.LLM)}layers\.\d+\..*({'|'.join(sorted(names))})"
        with open(config, 'w') as f:
            json.dump(c, f, indent=2)

    def load_trainable(self, directory):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights
        weights = load_peft_weights(directory, device=str(self.device))
        prefix = 'base_model.model.' + self.LLM
        set_peft_model_state_dict(self.lm, {k.replace(prefix, 'base_model.model.', 1): v for k, v in weights.items()})

    def export_merged(self, directory):
        """A Hugging Face model directory with the LoRA merged into the LLM (JanusForConditionalGeneration and its
        tokenizer), for tools that load `from_pretrained` (VLMEvalKit, TorchUMM configs). Ends this UMM's LoRA."""
        self.janus.model.language_model = self.lm.merge_and_unload()
        self.janus.model.generation_head.to(self.janus.lm_head.weight.dtype)  # float32 only while training
        self.janus.save_pretrained(directory)
        if self.tok is not None:
            self.tok.save_pretrained(directory)


def janus_config(lm, vision=None, vq=None, image_token_id=100581):
    """A JanusConfig from LLM numbers; vision / vq default to SigLIP-L/16 at 384 px and VQ-16 (16384 codes)."""
    H = lm['hidden_size']
    text = LlamaConfig(**{'vocab_size': 102400, 'max_position_embeddings': 16384, 'rms_norm_eps': 1e-6,
                          'num_key_value_heads': lm['num_attention_heads'], **lm, 'tie_word_embeddings': False})
    return JanusConfig(text_config=text, vision_config=JanusVisionConfig(**(vision or {}), projection_dim=H),
                       vq_config=JanusVQVAEConfig(**(vq or {}), projection_dim=H, image_token_embed_dim=H),
                       image_token_id=image_token_id, tie_word_embeddings=False)


def build_janus(name='janus-pro-7b', dtype=torch.bfloat16, meta=False, decode='regen', gen_temperature=None,
                device=None, **_):
    """Janus-Pro from a registry name, a hub id or a local dir, weights in `dtype` (--dtype) loaded straight onto
    `device` (each torchrun rank its own GPU, no full copy per rank in host RAM); every checkpoint key must match.
    meta=True builds a registry name's architecture on the meta device from JANUS_PRO, offline, without weights."""
    hub, arch = JANUS_PRO.get(name, (name, None))
    if meta:
        if arch is None:
            raise ValueError(f"meta builds need one of {', '.join(JANUS_PRO)}, got {name!r}")
        with torch.device('meta'):
            return JanusUMM(JanusForConditionalGeneration(janus_config(arch)), None)
    what = 'Janus-Pro (--backbone)'
    try:
        config = from_pretrained(AutoConfig, hub, what)
    except MissingWeights as e:  # files found, in DeepSeek's own format (their `janus` package)?
        if 'multi_modality' not in str(e.__cause__):
            raise
        raise ValueError(
            f"{name!r} is DeepSeek's original Janus format (model_type 'multi_modality'); transformers "
            f"reads converted checkpoints: pass deepseek-community/Janus-Pro-7B (or -1B), or convert it with "
            f"transformers' src/transformers/models/janus/convert_janus_weights_to_hf.py --repo_id "
            f"deepseek-ai/Janus-Pro-7B --local_dir {hub} --output_dir OUT and pass OUT") from e.__cause__
    if config.model_type != 'janus':
        raise ValueError(f"--backbone {name!r} holds a {config.model_type!r} model; a hub id or directory must hold a "
                         f"transformers Janus checkpoint (model_type 'janus', e.g. deepseek-community/Janus-Pro-7B)")
    janus, info = from_pretrained(JanusForConditionalGeneration, hub, what, dtype=dtype, output_loading_info=True,
                                  **({} if device is None else {'device_map': {'': device}}))
    bad = [f"{k.replace('_', ' ')} ({len(v)}): {', '.join(map(str, sorted(v)[:5]))}{', ...' * (len(v) > 5)}"
           for k, v in info.items() if k in ('missing_keys', 'unexpected_keys', 'mismatched_keys') and v]
    if bad:  # transformers would only log them and leave the missing weights at random
        raise ValueError(f"{name!r} does not match JanusForConditionalGeneration: {'; '.join(bad)}")
    tok = from_pretrained(AutoTokenizer, hub, 'Janus-Pro tokenizer (--backbone)')
    return JanusUMM(janus, tok, DEFAULT_SYSTEM_PROMPT, 'Describe this image in detail.', decode, gen_temperature)
