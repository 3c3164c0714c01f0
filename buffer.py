"""
Hard-sample buffer B — where the understanding branch keeps the decoded images it found hardest (Sec. 3.3, Eq. 4).

Every mining step decodes perturbed candidates x~ = G(z + C(z)), scores them, and pushes the hard, plausible ones:

    H(x~) = CE(U(Enc(x~), q), a) - lam · max(0, tau - s(x~))     # hardness: answer loss, less a plausibility hinge
    B     = { x~ : H(x~) >= quantile_0.6(H over the mining batch),  s(x~) >= min_sim }           # Eq. 4

s is the judge's score on a calibrated scale (`calibrate`): 1 is as similar as the sample's own clean pair, 0 as
similar as a label-breaking edit of it (shapes: its caption one word away for clip, its scene with one object changed
for cosine) or, where no edit can be made (vqav2), another scene's; so one threshold means the same for the toy judge
(matched cosines near 0.9) and a real CLIP (matched cosines near 0.3). The raw score is CLIP text-image cosine
(`--filter clip`), image-image cosine of candidate vs original (`--filter cosine`), or absent (`--filter none`). The
hinge only ever lowers H: a less plausible candidate never ranks harder. Defaults from Appendix F.2: the threshold is
the 60th percentile of H within each mining batch, the minimum similarity is 0.6 (here on the calibrated scale), and
B holds at most 50 decoded images ranked by H. The understand step replays entries of B mined at earlier steps next
to clean data and this step's accepted candidates (Eq. 6, beta = 0.5).

The judge that gives s (a CLIP) is in judge.py.

    python -c "import torch, buffer; ce, s = torch.tensor([.1, .9, .5, .7, .3]), torch.tensor([1, 1, 1, .2, 1]); \\
               h = buffer.hardness(ce, s, tau=.6, lam=1.); print(h, buffer.select_hard(h, s, min_sim=.6, quantile=.6))"
    # Eq. 4 on five candidates: H = [.1, .9, .5, .3, .3] (the 4th, at s = 0.2, loses 0.4 to the hinge and fails
    # min_sim); H >= 0.38, the 60th percentile, keeps the 2nd and 3rd
    python -c "import torch, buffer; B = buffer.HardBuffer(capacity=2); x = torch.rand(3, 3, 8, 8); \\
               print(B.push(x, ['q'] * 3, ['a'] * 3, [.5, 2., 1.], step=0), [e.hardness for e in B.entries])"
    # 2 [2.0, 1.0]: 2 of the 3 pushed survive; a full B keeps the hardest, highest H first
"""

import contextlib
import math
from dataclasses import dataclass

import torch

import data


EDITS = {'clip': 'its caption, one word edited', 'cosine': 'its scene, one object edited'}  # zero='edit' per filter


def calibrate(pos: torch.Tensor, neg: torch.Tensor):
    """The filter's scale from clean data: s -> (s - mean neg) / (mean pos - mean neg), where pos are the judge's
    scores of matched clean pairs (an image and its own caption or original) and neg of mismatched ones (an edit
    of it, or another scene's: SemanticFilter.fit)."""
    lo, hi = neg.float().mean().item(), pos.float().mean().item()
    if not hi - lo > 1e-6:
        raise ValueError(f"the judge does not tell matched from mismatched pairs (mean {hi:.4f} vs {lo:.4f}); "
                         f"train or pass a real judge, or use --filter none")
    return lambda s: (s.float() - lo) / (hi - lo)


class SemanticFilter:
    """Eq. 4's s per candidate, on the calibrated scale: the judge's raw score (`clip`: text-image cosine with the
    sample's caption; `cosine`: image-image cosine with the original; in token space, the mean token cosine with the
    clean tokens), mapped by the scale `fit` measures on clean pairs. Calling it gives s, (B,) float32."""

    def __init__(self, judge, kind: str, space: str = 'decoded'):
        if kind not in ('clip', 'cosine') or space not in ('decoded', 'token'):
            raise ValueError(f"a filter is clip or cosine over decoded images or tokens, got {kind!r} on {space!r}")
        self.judge, self.kind, self.space, self.scale = judge, kind, space, None

    def raw(self, candidates, originals, captions) -> torch.Tensor:
        if self.kind == 'clip':
            return self.judge.image_text_similarity(candidates, captions)                    # (B,)
        if self.space == 'token':                                                            # (B, N, H) tokens
            return torch.nn.functional.cosine_similarity(candidates.float(), originals.float(), dim=-1).mean(1)
        return self.judge.image_image_similarity(candidates, originals)                      # (B,)

    @torch.no_grad()
    def fit(self, umm, batches, zero='scene', rng=None, ctx=contextlib.nullcontext()) -> tuple:
        """Measure the scale on clean batches (dicts of images, questions, captions; umm in eval mode): 1 is the raw
        score of the clean decode G(z) with its own caption (or original), 0 with a label-breaking edit of it
        (zero='edit': for clip its caption one shape or colour word away, drawn by `rng`; for cosine the batch's
        'edited' images, each a rendered one-object edit of its scene) or with the next sample's caption or image
        ('scene'). A candidate must stay nearer its label than an edit. Returns (mean raw score at 1, at 0)."""
        pos, neg = [], []
        for b in batches:
            with ctx:
                z = umm.encode(b['images'])                                                  # (B, N, H)
                clean, ref = (umm.decode(b['images'], z, b['questions'])[0], b['images']) \
                    if self.space == 'decoded' else (z, z)
                c = b['captions']
                pos.append(self.raw(clean, ref, c))
                if zero == 'edit' and self.kind == 'cosine':  # the original's one-object edit, seen as U's input is
                    if 'edited' not in b:
                        raise ValueError("zero='edit' with the cosine filter needs each batch's 'edited' images")
                    wrong = b['edited'] if self.space == 'decoded' else umm.encode(b['edited'])
                    neg.append(self.raw(clean, wrong, c))
                else:
                    wrong = [data.hard_negative(t, rng) for t in c] if zero == 'edit' else c[1:] + c[:1]
                    neg.append(self.raw(clean, ref.roll(1, 0), wrong))               # an edited caption, another scene
        pos, neg = torch.cat(pos), torch.cat(neg)
        self.scale = calibrate(pos, neg)
        return pos.mean().item(), neg.mean().item()

    def __call__(self, candidates, originals, captions) -> torch.Tensor:
        return self.scale(self.raw(candidates, originals, captions))


def hardness(ce: torch.Tensor, sim: torch.Tensor | None, tau: float, lam: float) -> torch.Tensor:
    """H = ce - lam · max(0, tau - sim) per candidate, float32 (B,): a candidate below tau loses hardness, one above
    keeps its CE, so low similarity never makes a candidate rank harder. sim=None means no filter: H = ce."""
    if ce.dim() != 1:
        raise ValueError(f"ce must be 1-D (B,), got shape {tuple(ce.shape)}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0 (a negative weight would reward off-manifold images), got {lam}")
    if sim is None:
        return ce.float()
    if sim.shape != ce.shape:
        raise ValueError(f"sim must have the same shape as ce {tuple(ce.shape)}, got {tuple(sim.shape)}")
    return ce.float() - lam * (tau - sim.float()).clamp(min=0)  # (B,)


def select_hard(h: torch.Tensor, sim: torch.Tensor | None, min_sim: float, quantile: float) -> torch.Tensor:
    """Bool mask (B,): H at or above the batch's `quantile`-quantile of H, and sim >= min_sim (Eq. 4, F.2 filter)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile (--hard-quantile) must be in (0, 1), got {quantile}")
    if h.dim() != 1 or h.numel() == 0:
        raise ValueError(f"h must be a non-empty 1-D tensor (B,), got shape {tuple(h.shape)}")
    # The threshold is taken over ALL H of the mining batch, before the similarity filter: "the 60th percentile of H
    # within each mining batch". So the filter can only shrink the hard set, and a batch of implausible candidates
    # yields nothing rather than its least-bad members. float64 so ties at the threshold compare exactly (as numpy).
    threshold = torch.quantile(h.double(), quantile)  # linear interpolation, numpy's default
    keep = h.double() >= threshold  # (B,)
    if sim is not None:
        if sim.shape != h.shape:
            raise ValueError(f"sim must have the same shape as h {tuple(h.shape)}, got {tuple(sim.shape)}")
        keep &= sim >= min_sim  # a real filter: low similarity is dropped, never forced in
    return keep


def check_images(images: torch.Tensor, name: str = "images", tol: float = 1e-3) -> None:
    if not (torch.is_tensor(images) and images.is_floating_point() and images.dim() == 4 and images.shape[1] == 3):
        raise ValueError(f"{name} must be a float tensor (B, 3, h, w), got {getattr(images, 'shape', type(images))}")
    if images.numel() and (images.min() < -tol or images.max() > 1 + tol):
        raise ValueError(f"{name} must be in [0, 1], got range [{images.min():.3f}, {images.max():.3f}]")


@dataclass
class _Entry:
    image: torch.Tensor  # float32 (3, h, w) on CPU, the very pixels H scored; or float32 tokens (N, H) in token space
    question: str
    answer: str
    hardness: float
    step: int  # training step at which it was mined
    qtype: str | None = None
    hinge: float = 0.0  # H - CE at mining: the filter's part of H (<= 0), which a rescore keeps
    original: torch.Tensor | None = None  # uint8 (3, h, w): the clean image it was decoded from, for galleries only


class HardBuffer:
    """At most `capacity` entries, the highest H kept; harder ones push the rest out. What replay does to an entry is
    the caller's choice (train.py --buffer-policy): nothing (`keep`), rescore its H with the current CE (`rescore`), so
    entries U has learnt sink and leave, or take it out (`consume`)."""

    def __init__(self, capacity: int = 50, space: str = 'decoded'):
        if capacity < 1:  # "no buffer" is the caller not building one (--buffer-size 0), not an empty store
            raise ValueError(f"capacity (--buffer-size) must be >= 1, got {capacity}")
        if space not in ('decoded', 'token'):
            raise ValueError(f"space (--space) must be 'decoded' or 'token', got {space!r}")
        self.capacity, self.space = int(capacity), space
        # decoded: images (3, h, w) kept as float32, exactly what H was scored on (50 toy images: 0.8 MB; Janus at
        # 384 px: 88 MB); token (Table 4's embedding-only ablation): the perturbed tokens z~ (N, H) themselves
        self.key = 'images' if space == 'decoded' else 'tokens'
        self.entries: list[_Entry] = []  # always sorted by hardness, highest first
        self.spent: list[_Entry] = []    # the last `capacity` entries consumed by replay, newest last: for galleries

    def __len__(self) -> int:
        return len(self.entries)

    def mean_hardness(self) -> float:
        """Mean H of the stored entries; nan when empty, so an empty buffer is never logged as 'easy'."""
        return sum(e.hardness for e in self.entries) / len(self) if self.entries else math.nan

    def min_hardness(self) -> float:
        """The H a candidate must beat once the buffer is full; nan when empty."""
        return self.entries[-1].hardness if self.entries else math.nan

    def push(self, images, questions, answers, hardness, step: int, qtypes=None, ce=None, originals=None) -> int:
        """Insert candidates (images float (B, 3, h, w) in [0, 1], or tokens (B, N, H) in token space); returns how
        many survived the ranking. `ce` (B,), the CE part of `hardness`, lets rescore() keep the filter's part;
        `originals` (B, 3, h, w), the clean images they came from, are kept as uint8 for galleries."""
        if self.space == 'decoded':
            check_images(images)
        elif not (torch.is_tensor(images) and images.is_floating_point() and images.dim() == 3):
            raise ValueError(f"a token-space buffer stores float tokens (B, N, H), "
                             f"got {getattr(images, 'shape', images)}")
        hs = [float(h) for h in (hardness.detach().flatten().tolist() if torch.is_tensor(hardness) else hardness)]
        qtypes = [None] * len(images) if qtypes is None else list(qtypes)
        for name, seq in (("questions", questions), ("answers", answers), ("hardness", hs), ("qtypes", qtypes)):
            if len(seq) != len(images):
                raise ValueError(f"{name} has {len(seq)} items but images has {len(images)}")
        if not all(math.isfinite(h) for h in hs):
            raise ValueError(f"hardness must be finite, got {hs}")
        if self.entries and images.shape[1:] != self.entries[0].image.shape:
            raise ValueError(f"{self.key} are {tuple(images.shape[1:])} but the buffer holds "
                             f"{tuple(self.entries[0].image.shape)}; sample() must be able to stack them")
        pixels = images.detach().float().cpu()                        # (B, 3, h, w) or (B, N, H), float32
        hinge = [0.0] * len(hs) if ce is None else [h - float(c) for h, c in zip(hs, ce.flatten().tolist())]
        clean = [None] * len(hs) if originals is None else \
            (originals.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()            # (B, 3, h, w)
        new = [_Entry(pixels[i].clone(), str(questions[i]), str(answers[i]), hs[i], int(step), qtypes[i], hinge[i],
                      None if clean[i] is None else clean[i].clone()) for i in range(len(images))]
        # Stable sort, old entries first: on a tie in H the incumbent stays; a full buffer only takes strictly harder.
        ranked = sorted(self.entries + new, key=lambda e: -e.hardness)[:self.capacity]
        kept = {id(e) for e in ranked}
        self.entries = ranked
        return sum(id(e) in kept for e in new)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None,
               remove: bool = False) -> dict:
        """n entries without replacement (n clipped to len): uniform, or with p ∝ exp(H / temperature). `remove`
        takes them out of the buffer; else 'index' names them for rescore()."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be > 0 or None (uniform), got {temperature}")
        n = min(n, len(self))
        if temperature is None:
            idx = torch.randperm(len(self), generator=generator)[:n].tolist()
        elif n == 0:
            idx = []
        else:
            h = torch.tensor([e.hardness for e in self.entries], dtype=torch.float64)  # (N,)
            # log-weights floored at -80 (relative e^-80): a tiny temperature cannot zero out entries, so
            # multinomial without replacement can always draw n <= len distinct ones.
            w = ((h - h.max()) / temperature).clamp(min=-80).exp()  # (N,)
            idx = torch.multinomial(w, n, replacement=False, generator=generator).tolist()
        picked = [self.entries[i] for i in idx]
        if remove:
            taken = set(idx)
            self.entries = [e for i, e in enumerate(self.entries) if i not in taken]
            self.spent = (self.spent + picked)[-self.capacity:]
        if self.space == 'token':
            stored = torch.stack([e.image for e in picked]) if picked else torch.zeros(0, 0, 0)  # (n, N, H)
        else:
            stored = (torch.stack([e.image for e in picked]) if picked
                      else torch.zeros(0, 3, 0, 0))  # (n, 3, h, w) float32; h, w unknown while empty
        return {self.key: stored, 'questions': [e.question for e in picked], 'answers': [e.answer for e in picked],
                'hardness': torch.tensor([e.hardness for e in picked], dtype=torch.float32),
                'steps': torch.tensor([e.step for e in picked], dtype=torch.long), 'qtypes': [e.qtype for e in picked],
                'index': [] if remove else idx}

    def rescore(self, index: list[int], ce) -> None:
        """H of entries `index` (from sample) := their CE under the current U + their filter part; then re-rank."""
        ce = [float(c) for c in (ce.detach().flatten().tolist() if torch.is_tensor(ce) else ce)]
        if len(ce) != len(index) or not all(math.isfinite(c) for c in ce):
            raise ValueError(f"need one finite CE per index ({len(index)}), got {ce}")
        for i, c in zip(index, ce):
            self.entries[i].hardness = c + self.entries[i].hinge
        self.entries.sort(key=lambda e: -e.hardness)  # stable: ties keep their order

    @staticmethod
    def _columns(entries) -> dict:
        return dict(images=[e.image.clone() for e in entries], questions=[e.question for e in entries],
                    answers=[e.answer for e in entries], hardness=[e.hardness for e in entries],
                    steps=[e.step for e in entries], qtypes=[e.qtype for e in entries],
                    hinges=[e.hinge for e in entries], originals=[e.original for e in entries])

    @staticmethod
    def _entries(sd) -> list:
        fields = ("images", "questions", "answers", "hardness", "steps", "qtypes")
        if len({len(sd[k]) for k in fields}) != 1:
            raise ValueError(f"corrupt buffer state: lengths {[len(sd[k]) for k in fields]}")
        n = len(sd["images"])
        extra = zip(sd.get("hinges", [0.0] * n), sd.get("originals", [None] * n))
        return [_Entry(*row, h, o) for *row, (h, o) in zip(*(sd[k] for k in fields), extra)]

    def state_dict(self) -> dict:
        """Plain tensors, lists, str, int, float, None: loads with torch.load(weights_only=True)."""
        return dict(capacity=self.capacity, space=self.space, **self._columns(self.entries),
                    spent=self._columns(self.spent))

    def load_state_dict(self, sd: dict) -> None:
        if sd["capacity"] != self.capacity:
            raise ValueError(f"capacity mismatch: checkpoint buffer has {sd['capacity']}, this one {self.capacity}")
        if sd.get("space", "decoded") != self.space:
            raise ValueError(f"space mismatch: checkpoint buffer holds {sd.get('space', 'decoded')}, "
                             f"this one {self.space}")
        if len(sd["images"]) > self.capacity:
            raise ValueError(f"corrupt buffer state: {len(sd['images'])} entries, capacity {self.capacity}")
        self.entries = self._entries(sd)  # stored order = ranked order
        self.spent = self._entries(sd["spent"]) if "spent" in sd else []
