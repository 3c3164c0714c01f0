"""
The toy UMM: a small unified model whose visual tokens z are truly shared by understanding and generation.

    understanding  x -> SigLIP2 vision encoder -> MLP projector -> z (B, N, H) -> Qwen2.5-VL language model -> answer
    generation     z -> adapter -> SD-1.5 VAE decoder -> x~                    (one step, differentiable in z)
                   or, with decoder='diffusion', SD-1.5's UNet img2img reading a projection of z by cross-attention
    text-to-image  prompt + N learned queries -> the same LM -> head -> z^ -> the same decoder

Two sizes from the same transformers / diffusers classes:
  `tiny-toy`  tiny configs and a word-level tokenizer over data.VOCAB; trained from scratch on the shapes data on a
              CPU by `train.py --mode pretrain` (pretrain.py: the paper's Eq. 3 joint objective plus the T2I token
              loss).
  `toy`       pretrained parts (SigLIP2-base, the Qwen2.5-VL-3B language model, SD-1.5's VAE) for a small GPU; the
              projector, adapter and T2I head are new and need the same pretraining before post-training.

decoder='diffusion' is shape-tested only (a tiny UNet took 1.8 s a training step on a CPU, ../shared/FEASIBILITY.md):
bases hold no UNet, so it (random in tiny-toy, SD-1.5's in toy) and its cross-attention adapter start untrained, and
tiny-toy's VAE encoder, which img2img reads x through, is never trained (pretraining trains the decoder only).

    python -c "import torch, toy_umm; u = toy_umm.build_tiny_toy(); z = u.encode(torch.rand(2, 3, 36, 36)); \\
               print(tuple(z.shape), tuple(u.render(z).shape))"
    # (2, 36, 128) (2, 3, 36, 36): z (B, N, H) and G(z), random init (about 15 s, most of it imports)
    python -c "import data, toy_base; u = toy_base.tiny_toy(init=toy_base.BASE_DIR).eval(); \\
               b = data.collate([data.ShapesVQA('val', 3)[i] for i in range(3)]); \\
               print(b['questions'], u.answer(u.encode(b['images']), b['questions']), b['answers'])"
    # three val questions, the shipped base's answers, the true answers
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, Siglip2VisionConfig,
                          Siglip2VisionModel)

import data
from model import LORA_DEFAULTS, LORA_TARGETS, UMM, from_pretrained, peft_lora

SPECIALS = ('<pad>', '<unk>', '<eos>', '<answer>', '<caption>', '<image>')
TINY = dict(  # sizes of `tiny-toy`; see ../shared/FEASIBILITY.md for why 36 px images and 6 px patches
    image_size=36, patch_size=6, vision=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                                             num_attention_heads=4),
    lm=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    # no attention in the VAE's mid block and 16/32 channels: 30 ms to decode 64 images instead of 125 ms
    vae=dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
             mid_block_add_attention=False),
    unet=dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
              attention_head_dim=4, down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
              up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D')),
)
# SD-1.5's noise schedule (its scheduler_config.json), sampled with DDIM
SD15_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', clip_sample=False,
                     set_alpha_to_one=False, steps_offset=1)


def word_tokenizer(vocab=data.VOCAB) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (whitespace split) over the synthetic vocabulary, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate((*SPECIALS, *vocab))}, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix='##', cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>', unk_token='<unk>', eos_token='<eos>')


class ToyUMM(UMM):
    def __init__(self, vision, lm, lm_head, vae, tokenizer, image_size, patch_size, marks, unet=None, steps=4,
                 strength=0.5):
        super().__init__()
        self.vision, self.lm, self.lm_head, self.vae, self.tok = vision, lm, lm_head, vae, tokenizer
        self.image_size, self.patch_size, self.grid = image_size, patch_size, image_size // patch_size
        self.marks = marks  # the words that open an answer, a caption (by row, by column), an image
        self.hidden_size = H = lm.config.hidden_size
        self.projector = nn.Sequential(nn.Linear(vision.config.hidden_size, H), nn.GELU(), nn.Linear(H, H))
        # G's adapter: each token becomes an r x r patch of VAE latents (pixel shuffle), then a 3x3 conv smooths seams
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        latent_side, c = image_size // vae_factor, vae.config.latent_channels
        if latent_side % self.grid:
            raise ValueError(f"the VAE latent side {latent_side} is not a multiple of the token grid {self.grid}")
        self.r = latent_side // self.grid
        self.adapter = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, c * self.r ** 2))
        self.adapter_conv = nn.Conv2d(c, c, 3, padding=1)
        # T2I: N learned query embeddings read after the prompt; a head maps their LM states to predicted tokens z^
        self.queries = nn.Parameter(torch.randn(self.grid ** 2, H) * 0.02)
        self.t2i_head = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.Linear(H, H))
        # decoder='diffusion' (a `unet` given): DDIM, `steps` steps from noise or strength * steps from x's latents
        self.unet, self.decoder, self.latent_side = unet, 'vae' if unet is None else 'diffusion', latent_side
        if unet is not None:
            self.cross_adapter = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, unet.config.cross_attention_dim))
            self.scheduler, self.steps, self.strength = DDIMScheduler(**SD15_SCHEDULE), steps, strength

    # ---- understanding ------------------------------------------------------------------------------------------

    def encode(self, images):
        """Enc + Proj: images (B, 3, s, s) in [0, 1] -> z (B, N, H), N = (s / patch)^2."""
        check_images(images, self.image_size)
        B, C, s, p = images.shape[0], 3, self.image_size, self.patch_size
        pixels = images * 2 - 1  # SigLIP's normalisation: mean 0.5, std 0.5
        # Siglip2 takes pre-cut patches (NaFlex): (B, N, p*p*C), row-major over the grid, as its image processor cuts
        patches = pixels.reshape(B, C, s // p, p, s // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, p * p * C)
        shapes = torch.tensor([[s // p, s // p]] * B, device=images.device)
        mask = torch.ones(patches.shape[:2], dtype=torch.long, device=images.device)
        h = self.vision(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).last_hidden_state
        return self.projector(h)  # (B, N, H)

    def _ids(self, texts):
        return [self.tok(t, add_special_tokens=False)['input_ids'] for t in texts]

    def _grid_positions(self, start):
        """Qwen2.5-VL's M-RoPE positions of the N image tokens: (time 0, row, col), each offset by start (B,)."""
        idx = torch.arange(self.grid ** 2, device=start.device)
        thw = torch.stack([torch.zeros_like(idx), idx // self.grid, idx % self.grid])     # (3, N)
        return thw[:, None, :] + start[None, :, None]                                     # (3, B, N)

    def _lm_hidden(self, z, ids, segments=None):
        """Run the LM on [z, ids] (ids right-padded) -> (B, N + L, H). Image tokens get 2-D (row, col) rotary positions
        as in Qwen2.5-VL; text continues after the grid. `segments` (B, L) packs several texts after one image: text
        position l of sample b belongs to text segments[b, l] (0, 1, ... in order), which sees the image and itself
        only and whose positions restart after the grid, so each text gets the states it would have alone."""
        B, L, N = len(ids), max(map(len, ids)), z.shape[1]
        padded = torch.full((B, L), self.tok.pad_token_id, dtype=torch.long, device=z.device)
        for i, seq in enumerate(ids):
            padded[i, :len(seq)] = torch.tensor(seq, device=z.device)
        text = self.lm.get_input_embeddings()(padded)                                   # (B, L, H)
        wide = torch.promote_types(z.dtype, text.dtype)  # float32 z + delta is never rounded to bf16 weights' dtype
        embeds = torch.cat([z.to(wide), text.to(wide)], 1)
        steps, mask = torch.arange(L, device=z.device).expand(B, L), None
        if segments is not None:  # restart each text's positions; let it see the image and itself, causally
            if 'flash' in (self.lm.config._attn_implementation or ''):  # it drops 4-D masks: turns would see each other
                raise ValueError("packed turns need a 4-D attention mask, which flash-attention ignores: build the LM "
                                 "with attn_implementation='sdpa' or 'eager'")
            starts = torch.cat([torch.ones_like(segments[:, :1], dtype=torch.bool), segments.diff(dim=1) != 0], 1)
            steps = steps - torch.where(starts, steps, 0).cummax(1).values
            seg = torch.cat([segments.new_full((B, N), -1), segments], 1)                  # (B, N + L), image -1
            causal = torch.ones(N + L, N + L, dtype=torch.bool, device=z.device).tril()
            allowed = causal & ((seg[:, None, :] == -1) | (seg[:, None, :] == seg[:, :, None]))        # (B, T, T)
            # additive, so that eager attention reads it as sdpa does (flash-attention ignores 4-D masks)
            mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=z.device).masked_fill(
                ~allowed, torch.finfo(embeds.dtype).min)[:, None]                                   # (B, 1, T, T)
        grid = self._grid_positions(torch.zeros(B, dtype=torch.long, device=z.device))   # (3, B, N)
        positions = torch.cat([grid, (self.grid + steps).expand(3, B, L)], -1)
        return self.lm(inputs_embeds=embeds, position_ids=positions, attention_mask=mask).last_hidden_state

    def _target_loss(self, z, prefixes, targets):
        """Per-sample mean CE (float32) of `targets` given [z, prefix] — only target positions reach the LM head."""
        return self._turns_loss(z, [[(p, t)] for p, t in zip(prefixes, targets)])

    def _turns_loss(self, z, turns):
        """Mean CE (float32) of each turn's target given [z, its prefix], with several turns per image in one LM pass
        (turns[b] lists the (prefix ids, target ids) read after z[b]): the image's states are computed once, and each
        turn's loss is what it would be alone. (T,) in the order given, T the number of turns."""
        eos, N = self.tok.eos_token_id, z.shape[1]
        ids, segments, rows, cols, labels, owner, T = [], [], [], [], [], [], 0  # owner: each target token's turn
        for b, sample in enumerate(turns):
            seq, seg = [], []
            for k, (p, t) in enumerate(sample):
                text = p + t + [eos]
                for j in range(len(p), len(text)):  # the target words and the closing <eos>: state j-1 predicts j
                    rows.append(b), cols.append(N + len(seq) + j - 1), labels.append(text[j]), owner.append(T)
                seq, seg, T = seq + text, seg + [k] * len(text), T + 1
            ids.append(seq), segments.append(seg)
        packed = None  # one turn per image: plain causal attention
        if any(len(sample) != 1 for sample in turns):
            L = max(map(len, ids))  # padding becomes a text of its own, after the last turn
            packed = torch.tensor([seg + [len(sample)] * (L - len(seg)) for seg, sample in zip(segments, turns)],
                                  device=z.device)
        hidden = self._lm_hidden(z, ids, packed)  # (B, N + L, H)
        logits = self.lm_head(hidden[torch.tensor(rows, device=z.device), torch.tensor(cols, device=z.device)])
        ce = F.cross_entropy(logits.float(), torch.tensor(labels, device=z.device), reduction='none')  # (M,)
        owner_t = torch.tensor(owner, device=z.device)
        total = torch.zeros(T, device=z.device).index_add(0, owner_t, ce)
        return total / torch.zeros(T, device=z.device).index_add(0, owner_t, torch.ones_like(ce))

    def understand_loss(self, z, questions, answers):
        """Eq. 1 per sample: -log p_U(a | z, q), averaged over the answer's tokens. (B,) float32."""
        return self._target_loss(z, self._ids([f"{q} {self.marks['answer']}" for q in questions]), self._ids(answers))

    def caption_loss(self, z, captions):
        """CE of the caption given z: a pretraining signal that makes z carry the whole scene. (B,) float32."""
        return self._target_loss(z, self._ids([self.marks['caption']] * len(captions)), self._ids(captions))

    def questions_and_caption_loss(self, z, asked, captions, column_captions=None):
        """Pretraining's understanding and caption losses with several questions per image, all in one LM pass (the
        image's states are computed once; each loss is what its own pass would give): asked[b] lists the (question,
        answer) pairs about z[b]. `column_captions`, if given, are the same scenes captioned column by column
        (data.caption(by='col')): one more turn per image, after marks['column_caption'], whose CE is added to the
        image's caption loss. Returns the per-question losses (Q,) in order and the per-image caption losses (B,)."""
        marks = [self.marks['caption']] + ([] if column_captions is None else [self.marks['column_caption']])
        marks = self._ids(marks)
        texts = [[c] for c in captions] if column_captions is None else [*map(list, zip(captions, column_captions))]
        turns = []
        for pairs, caps in zip(asked, texts):
            questions = self._ids([f"{q} {self.marks['answer']}" for q, _ in pairs])
            turns.append([*zip(questions, self._ids([a for _, a in pairs])), *zip(marks, self._ids(caps))])
        losses = self._turns_loss(z, turns)                                       # (Q + B * len(marks),)
        is_caption = torch.tensor([k >= len(t) - len(marks) for t in turns for k in range(len(t))],
                                  device=losses.device)
        return losses[~is_caption], losses[is_caption].view(-1, len(marks)).sum(1)

    @torch.no_grad()
    def _greedy(self, z, prefixes, max_new_tokens):
        """Greedy decoding without a KV cache: answers are a word or two; captions are short."""
        seqs, out, eos = [list(p) for p in prefixes], [[] for _ in prefixes], self.tok.eos_token_id
        live = list(range(len(seqs)))
        for _ in range(max_new_tokens):
            hidden = self._lm_hidden(z[live], [seqs[i] for i in live])
            last = torch.tensor([z.shape[1] + len(seqs[i]) - 1 for i in live], device=z.device)
            nxt = self.lm_head(hidden[torch.arange(len(live)), last]).argmax(-1).tolist()
            for i, t in zip(live, nxt):
                seqs[i].append(t)
                if t != eos:
                    out[i].append(t)
            live = [i for i, t in zip(live, nxt) if t != eos]
            if not live:
                break
        return [self.tok.decode(o, skip_special_tokens=True).strip() for o in out]

    def answer(self, z, questions, max_new_tokens=4):
        return self._greedy(z, self._ids([f"{q} {self.marks['answer']}" for q in questions]), max_new_tokens)

    def caption(self, images, max_new_tokens=48):
        z = self.encode(images)
        return self._greedy(z, self._ids([self.marks['caption']] * len(images)), max_new_tokens)

    # ---- generation ---------------------------------------------------------------------------------------------

    def render(self, z):
        """G: tokens (B, N, H) -> images (B, 3, s, s) in [0, 1]; one adapter + VAE-decoder pass, differentiable."""
        B, c, g, r = z.shape[0], self.vae.config.latent_channels, self.grid, self.r
        lat = self.adapter(z.to(torch.promote_types(z.dtype, self.adapter[1].weight.dtype)))  # (B, N, c*r*r)
        lat = lat.transpose(1, 2).reshape(B, c * r * r, g, g)                     # token grid
        lat = self.adapter_conv(F.pixel_shuffle(lat, r))                          # (B, c, g*r, g*r)
        return ((self.vae.decode(lat).sample + 1) / 2).clamp(0, 1)                # (B, 3, s, s)

    def diffuse(self, z, images=None):
        """G with decoder='diffusion': DDIM img2img from x's VAE latents noised to `strength` (from pure noise when
        images is None), the UNet reading cross_adapter(z) (B, N, D) by cross-attention; no guidance. Differentiable in
        z through every step, so it costs a UNet pass per step in memory too. Noise from torch's global RNG."""
        sched, sf = self.scheduler, self.vae.config.scaling_factor
        cond = self.cross_adapter(z.to(torch.promote_types(z.dtype, self.unet.dtype)))  # (B, N, D)
        sched.set_timesteps(self.steps, device=z.device)
        timesteps = sched.timesteps
        if images is None:
            lat = torch.randn(z.shape[0], self.unet.config.in_channels, self.latent_side, self.latent_side,
                              device=z.device, dtype=self.unet.dtype)             # (B, c, s/f, s/f)
        else:  # img2img skips the noisiest (1 - strength) share of the steps
            timesteps = timesteps[len(timesteps) - max(1, round(self.strength * len(timesteps))):]
            x0 = self.vae.encode(images.to(self.vae.dtype) * 2 - 1).latent_dist.mean * sf
            lat = sched.add_noise(x0, torch.randn_like(x0), timesteps[:1])        # (B, c, s/f, s/f)
        for t in timesteps:
            lat = sched.step(self.unet(lat, t, encoder_hidden_states=cond).sample, t, lat).prev_sample
        return ((self.vae.decode(lat / sf).sample + 1) / 2).clamp(0, 1)           # (B, 3, s, s)

    def decode(self, images, z, prompts, perturb=None):
        """Candidates x~ = G(z + delta). The toy's z is shared, so delta goes on z itself, added in float32."""
        delta = None if perturb is None else perturb(z.float())                   # (B, N, H) float32
        z = z if delta is None else z.float() + delta
        return (self.render(z) if self.unet is None else self.diffuse(z, images)), delta

    def reconstruction_loss(self, images, z):
        """Eq. 2's l_gen per sample: MSE between G(z) and x. (B,) float32."""
        return (self.render(z).float() - images.float()).pow(2).flatten(1).mean(1)

    def predict_tokens(self, prompts):
        """T2I's first half: the LM reads [prompt, <image>, N queries]; the head maps query states to z^ (B, N, H)."""
        ids = self._ids([f"{p} {self.marks['image']}" for p in prompts])
        B, L, N = len(ids), max(map(len, ids)), self.queries.shape[0]
        device = self.queries.device
        # left-pad the prompts so the queries sit at the same positions for every sample
        padded = torch.full((B, L), self.tok.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(B, L + N, dtype=torch.long, device=device)
        for i, seq in enumerate(ids):
            padded[i, L - len(seq):] = torch.tensor(seq, device=device)
            mask[i, L - len(seq):] = 1
        text = self.lm.get_input_embeddings()(padded)
        embeds = torch.cat([text, self.queries.to(text.dtype).expand(B, -1, -1)], 1)
        text_pos = (mask[:, :L].cumsum(1) - 1).clamp(min=0).expand(3, B, L)
        lengths = torch.tensor([len(seq) for seq in ids], device=device)
        positions = torch.cat([text_pos, self._grid_positions(lengths)], -1)  # the queries sit on the image grid
        hidden = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        return self.t2i_head(hidden[:, L:])  # (B, N, H)

    def t2i_loss(self, prompts, images, z=None):
        """The T2I token loss: MSE between predicted tokens z^ and z = Enc(x) of the captioned image (pass z if it is
        at hand). (B,) float32."""
        z = self.encode(images) if z is None else z
        return (self.predict_tokens(prompts).float() - z.detach().float()).pow(2).flatten(1).mean(1)

    def generate(self, prompts):
        z = self.predict_tokens(prompts)                                          # (B, N, H)
        return self.render(z) if self.unet is None else self.diffuse(z)

    # ---- post-training: LoRA on the LM, everything else frozen -------------------------------------------------

    def add_lora(self, r=LORA_DEFAULTS['r'], alpha=LORA_DEFAULTS['alpha'], dropout=LORA_DEFAULTS['dropout'],
                 targets=LORA_TARGETS):
        self.requires_grad_(False)
        self.lm = peft_lora(self.lm, r, alpha, dropout, targets)
        return self


def check_images(images, size):
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (B, 3, {size}, {size}) tensor, got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    if images.shape[-2:] != (size, size):
        raise ValueError(f"images must be {size}x{size} for this backbone, got {tuple(images.shape[-2:])}")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"images must be in [0, 1], got values in [{lo:.3f}, {hi:.3f}]")


# -----------------------------------------------------------------------------
# builders

def _diffusion(decoder):
    if decoder not in ('vae', 'diffusion'):
        raise ValueError(f"--decoder must be 'vae' or 'diffusion', got {decoder!r}")
    return decoder == 'diffusion'


def build_tiny_toy(decoder='vae', **_):
    """`tiny-toy` from its tiny configs, random init (toy_base.tiny_toy loads a base into it).
    decoder='diffusion' adds a tiny UNet (random init, also over a loaded base)."""
    diffusion, tok = _diffusion(decoder), word_tokenizer()
    s, p = TINY['image_size'], TINY['patch_size']
    vision = Siglip2VisionModel(Siglip2VisionConfig(**TINY['vision'], patch_size=p, num_patches=(s // p) ** 2,
                                                    vision_use_head=False))
    _sincos_positions(vision.embeddings.position_embedding.weight, s // p)
    head_dim = TINY['lm']['hidden_size'] // TINY['lm']['num_attention_heads']
    lm_cfg = Qwen2_5_VLTextConfig(**TINY['lm'], vocab_size=len(tok), max_position_embeddings=256,
                                  pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=tok.eos_token_id,
                                  rope_parameters=dict(rope_type='default', rope_theta=10000.0,
                                                       mrope_section=_mrope_section(head_dim)))
    lm = Qwen2_5_VLTextModel(lm_cfg)
    lm_head = nn.Linear(lm_cfg.hidden_size, len(tok), bias=False)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=('DownEncoderBlock2D',) * 2,
                        up_block_types=('UpDecoderBlock2D',) * 2, **TINY['vae'])
    unet = UNet2DConditionModel(**TINY['unet'], in_channels=4, out_channels=4) if diffusion else None
    # the column-by-column caption opens with '<caption> left', not a new token: the vocabulary, and so the judge's
    # init (next in the torch stream), stay what they were
    marks = dict(answer='<answer>', caption='<caption>', image='<image>', column_caption='<caption> left')
    return ToyUMM(vision, lm, lm_head, vae, tok, s, p, marks, unet)


def _sincos_positions(table, grid):
    """Set SigLIP2's position table (grid * grid, width), row-major as the patches, to a 2-D sin-cos grid (MAE's
    init): a quarter of the channels each for the sin and cos of the row and of the column, at frequencies
    1 / 10000^(k / (width / 4)). From scratch the default table (std 1 / sqrt(width)) stays a fifth of the patch
    embeddings' size, an object's column can hardly be read from its token in z, and left of / right of are never
    learnt (docs/toy.md). Deterministic: it draws nothing from the torch stream."""
    q = table.shape[1] // 4
    omega = 10000.0 ** -(torch.arange(q, dtype=torch.float32) / q)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing='ij')
    angles = [t.reshape(-1, 1).float() * omega for t in (rows, cols)]
    with torch.no_grad():
        table.copy_(torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], 1))


def _mrope_section(head_dim):
    """Qwen2.5-VL splits the rotary frequencies over (time, height, width), about 1/4 : 3/8 : 3/8."""
    half = head_dim // 2
    return [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]


def build_toy(siglip='google/siglip2-base-patch16-224', qwen='Qwen/Qwen2.5-VL-3B-Instruct',
              sd='stable-diffusion-v1-5/stable-diffusion-v1-5', decoder='vae', **_):
    """`toy` from pretrained parts (hub ids or local dirs), weights in their checkpoints' dtype (Qwen2.5-VL's: bf16);
    z + delta reaches the LM and G in float32 all the same (promoted, never rounded). Never downloaded in tests.
    decoder='diffusion' adds SD-1.5's UNet (`sd`, subfolder unet); its cross-attention adapter is new."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    diffusion = _diffusion(decoder)
    vision = from_pretrained(Siglip2VisionModel, siglip, 'SigLIP2 (--toy-siglip)')
    full = from_pretrained(Qwen2_5_VLForConditionalGeneration, qwen, 'Qwen2.5-VL (--toy-qwen)')
    tok = from_pretrained(AutoTokenizer, qwen, 'Qwen2.5-VL tokenizer (--toy-qwen)')
    vae = from_pretrained(AutoencoderKL, sd, 'SD-1.5 VAE (--toy-sd)', subfolder='vae')
    unet = from_pretrained(UNet2DConditionModel, sd, 'SD-1.5 UNet (--toy-sd)', subfolder='unet') if diffusion else None
    lm, lm_head = full.model.language_model, full.lm_head  # the Qwen vision tower is dropped: SigLIP2 replaces it
    del full.model.visual
    s = int(vision.config.num_patches ** 0.5) * vision.config.patch_size  # SigLIP2 (NaFlex) stores patches, not size
    return ToyUMM(vision, lm, lm_head, vae, tok, s, vision.config.patch_size,
                  dict(answer='Answer:', caption='Caption:', image='Image:',
                       column_caption='Caption, column by column:'), unet)
