"""
The judge: the CLIP that scores how plausible a candidate is for the semantic filter (buffer.py, Eq. 4's s).

It wraps open_clip's own CLIP class, never a copy of it, in one of two ways:
- a real CLIP from local files (`Judge.from_pretrained`): `--judge ViT-L-14:/weights/open_clip_vit_l14.bin` (an
  open_clip model name and its checkpoint) or `--judge local-dir:DIR` (a downloaded open_clip folder with
  open_clip_config.json); nothing is downloaded;
- a tiny word-level CLIP (`Judge.tiny`, about 250K parameters) that the toy's pretraining trains from scratch on the
  synthetic captions and ships as weights/tiny-toy/judge.pt, so the whole game runs on a CPU.

Raw scores are cosines: text-image (`--filter clip`) or image-image (`--filter cosine`). They are put on one
calibrated scale by buffer.calibrate before a threshold is applied, since a real CLIP's matched cosines sit near
0.3 and the toy judge's near 0.9.

    python -c "from judge import Judge; print(Judge.load('weights/tiny-toy/judge.pt'))"
"""

import os
import re

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from buffer import check_images


class WordTokenizer:
    """Lowercased words -> ids. 0 = pad, 1 = <unk>, words from 2, EOT = the largest id (open_clip's 'argmax' pool)."""

    def __init__(self, vocab: list[str], context_length: int):
        self.vocab = list(dict.fromkeys(w.lower() for w in vocab))  # dedupe, keep order: ids are stable on reload
        self.ids = {w: i + 2 for i, w in enumerate(self.vocab)}
        self.eot, self.context_length = len(self.vocab) + 2, context_length
        self.vocab_size = self.eot + 1

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)  # (B, L), 0 = pad
        for i, t in enumerate(texts):
            # words only: "shape?" and "shape" are the same token; long texts keep their first L-1 words
            ids = [self.ids.get(w, 1) for w in re.findall(r"[\w']+", t.lower())][:self.context_length - 1]
            out[i, :len(ids) + 1] = torch.tensor(ids + [self.eot])
        return out


class Judge(nn.Module):
    """The semantic filter's scorer: an open_clip CLIP with its tokenizer and image preprocessing."""

    def __init__(self, model: open_clip.model.CLIP, tokenizer, config: dict | None = None):
        super().__init__()
        self.model, self.tokenizer, self.config = model, tokenizer, config  # config: the tiny judge's, for save()
        pp = getattr(model.visual, "preprocess_cfg", {})
        size = pp.get("size", model.visual.image_size)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def device(self):  # where the judge scores: callers move images there
        return self.mean.device

    @classmethod
    def tiny(cls, vocab: list[str], image_size: int = 36, patch_size: int = 6, width: int = 64, layers: int = 2,
             embed_dim: int = 64, context_length: int = 48) -> "Judge":
        """A ~250K-parameter CLIP with a word-level text side, trained from scratch by train.py (contrastive_loss)."""
        config = dict(vocab=list(vocab), image_size=image_size, patch_size=patch_size, width=width, layers=layers,
                      embed_dim=embed_dim, context_length=context_length)
        tok = WordTokenizer(vocab, context_length)
        model = open_clip.model.CLIP(
            embed_dim,
            open_clip.model.CLIPVisionCfg(layers=layers, width=width, head_width=32, patch_size=patch_size,
                                          image_size=image_size),
            open_clip.model.CLIPTextCfg(context_length=context_length, vocab_size=tok.vocab_size, width=width,
                                        heads=max(1, width // 32), layers=layers),  # pool 'argmax' finds our EOT
        )
        return cls(model, tok, config)

    @classmethod
    def from_pretrained(cls, spec: str) -> "Judge":
        """A real CLIP from local files, never the network: 'MODEL:FILE' (an open_clip model name and its checkpoint,
        e.g. 'ViT-B-32:/weights/clip.bin') or 'local-dir:DIR' (open_clip_config.json beside the weights, as in a
        downloaded open_clip hub folder). Anything else raises FileNotFoundError saying what to pass."""
        name, _, where = spec.partition(':')
        local = name == 'local-dir'
        found = os.path.isfile(os.path.join(where, 'open_clip_config.json')) and any(
            f.endswith(('.safetensors', '.bin', '.pth')) for f in os.listdir(where)) if local else os.path.isfile(where)
        if not found:
            raise FileNotFoundError(
                f"no CLIP at {spec!r}: pass an open_clip MODEL:FILE (e.g. ViT-B-32:/weights/clip.bin) or local-dir:DIR "
                f"(a folder with open_clip_config.json and its weights), downloaded on a machine with network")
        model, _, _ = open_clip.create_model_and_transforms(spec if local else name,
                                                           pretrained=None if local else where)
        return cls(model.eval(), open_clip.get_tokenizer(spec if local else name))

    def save(self, path: str) -> None:
        """One file, written atomically; plain types only, so Judge.load works with weights_only=True."""
        if self.config is None:
            raise ValueError("only a tiny judge can be saved; a pretrained one is rebuilt from its checkpoint file")
        tmp = f"{path}.tmp"
        torch.save(dict(config=self.config, state_dict=self.model.state_dict()), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, map_location="cpu") -> "Judge":
        """A tiny judge saved by `save`. A truncated or foreign file raises ValueError naming it, not a torch trace."""
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
            judge = cls.tiny(**payload["config"])
            judge.model.load_state_dict(payload["state_dict"])
        except Exception as e:  # unreadable, not a dict, wrong keys or shapes: the same advice for each
            raise ValueError(f"{path!r} is not a readable tiny judge ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:120]}); rebuild the base and its judge "
                             f"with `python train.py --mode pretrain --out_dir DIR`") from None
        return judge

    def _embed(self, images: torch.Tensor | None, texts: list[str] | None) -> tuple:
        """Unit-norm float32 embeddings; resize shortest side, centre crop, normalise: open_clip's eval transform."""
        img = txt = None
        with torch.autocast(self.mean.device.type, enabled=False):  # small cosine gaps must not drown in bf16
            if images is not None:
                check_images(images)
                x = images.float()  # (B, 3, h, w)
                S, (h, w) = self.image_size, x.shape[-2:]
                if (h, w) != S:
                    scale = max(S[0] / h, S[1] / w)
                    x = F.interpolate(x, size=(max(S[0], round(h * scale)), max(S[1], round(w * scale))),
                                      mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
                    top, left = (x.shape[-2] - S[0]) // 2, (x.shape[-1] - S[1]) // 2
                    x = x[..., top:top + S[0], left:left + S[1]]  # (B, 3, S, S)
                img = self.model.encode_image((x - self.mean) / self.std, normalize=True).float()  # (B, D)
            if texts is not None:
                tokens = self.tokenizer(list(texts)).to(self.mean.device)  # (B, L)
                txt = self.model.encode_text(tokens, normalize=True).float()  # (B, D)
        return img, txt

    def image_text_similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """cos(image_i, text_i) for each pair, (B,) in [-1, 1]: the `clip` filter."""
        if len(texts) != len(images):
            raise ValueError(f"texts has {len(texts)} items but images has {len(images)}")
        img, txt = self._embed(images, texts)
        return (img * txt).sum(-1)  # (B,)

    def image_image_similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """cos(a_i, b_i) of image embeddings, (B,): the `cosine` filter (candidate vs original)."""
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
        return (self._embed(a, None)[0] * self._embed(b, None)[0]).sum(-1)  # (B,)

    def contrastive_loss(self, images: torch.Tensor, texts: list[str], negatives: list[str] | None = None):
        """Symmetric CLIP InfoNCE over the batch; pair i is (images[i], texts[i]), every other pair a negative.
        `negatives` (e.g. data.hard_negative of each text) are extra wrong texts every image must rank below its own."""
        if len(texts) != len(images):
            raise ValueError(f"texts has {len(texts)} items but images has {len(images)}")
        img, txt = self._embed(images, list(texts) + list(negatives or []))
        scale = self.model.logit_scale.float().exp().clamp(max=100)  # CLIP caps the temperature at 100
        logits = scale * img @ txt.T  # (B, B + negatives)
        labels = torch.arange(len(img), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :len(img)].T, labels)) / 2
