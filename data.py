"""
Synthetic shapes VQA: the small world the CPU runs learn in (a Sort-of-CLEVR for unified models).

A scene is 1-5 objects (4 shapes x 6 colours) in distinct cells of a 3x3 grid, drawn on a dark background.
With 12 px cells the image is 36x36, so a 6 px ViT patch sees each cell as exactly 2x2 tokens (8 px patches cut
objects into quarters, ../shared/FEASIBILITY.md). Scene i of split s is drawn from np.random.default_rng([s, 0, i]).
Question families are the failure modes the paper names: counting, attributes (colour / shape), spatial relations,
existence. One oracle, `answer(scene, question)`, answers every question this module writes, from the scene.
OOD shifts (the NaturalBench analogue) re-draw the same test scenes with the same questions: `noise`, `low_contrast`,
`occlusion` (a bar across the image), `background` (an unseen colour). NaturalBench-style groups of two minimally
different scenes are built on these scenes in naturalgroups.py.

    python data.py --preview shapes.png           # a 3x3 grid of train scenes with their questions and answers
    python data.py --preview ood.png --split test --shift occlusion
"""

import argparse
import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

COLORS = {'red': (0.9, 0.1, 0.1), 'green': (0.1, 0.75, 0.1), 'blue': (0.15, 0.25, 0.95),
          'yellow': (0.95, 0.9, 0.1), 'purple': (0.6, 0.15, 0.85), 'cyan': (0.1, 0.85, 0.85)}
SHAPES = ('circle', 'square', 'triangle', 'cross')
PLURAL = {'circle': 'circles', 'square': 'squares', 'triangle': 'triangles', 'cross': 'crosses'}
ROWS, COLS = ('top', 'middle', 'bottom'), ('left', 'center', 'right')
BACKGROUNDS = {'black': (0.0, 0.0, 0.0), 'gray': (0.2, 0.2, 0.2)}  # seen in training
UNSEEN_BACKGROUND = {'brown': (0.42, 0.27, 0.12)}                       # only in the `background` OOD shift
RELATIONS = ('left of', 'right of', 'above', 'below')
QTYPES = ('count', 'attribute', 'spatial', 'existence')
SHIFTS = ('noise', 'low_contrast', 'occlusion', 'background')
SPLITS = {'train': 0, 'val': 1, 'test': 2}  # the first seed word: splits draw from disjoint seed streams
MAX_OBJECTS = 5

ANSWERS = ('yes', 'no', *map(str, range(MAX_OBJECTS + 1)), *COLORS, *SHAPES)
_QUESTION_WORDS = ('how many objects are there ? what color is the shape object ? is there a left of right of above '
                   'below').split()
_CAPTION_WORDS = ('a at on ,', *ROWS, *COLS, *BACKGROUNDS, *UNSEEN_BACKGROUND)
# every word a question, answer or caption can contain: a word-level tokenizer is built from this list
VOCAB = tuple(sorted(set(_QUESTION_WORDS) | set(' '.join(_CAPTION_WORDS).split()) | set(ANSWERS)
                     | set(PLURAL.values())))


# -----------------------------------------------------------------------------
# scenes

@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    row: int
    col: int
    size: int = 8                        # side of the object's box in pixels (at cell = 12)
    dx: int = 2                          # box offset inside its cell
    dy: int = 2
    tint: tuple = (0.0, 0.0, 0.0)        # small per-object colour jitter so colours are not single points


@dataclass(frozen=True)
class Scene:
    objects: tuple
    background: str = 'black'


def sample_scene(rng: np.random.Generator, min_objects: int = 1, cell: int = 12) -> Scene:
    """1-5 objects with distinct cells and distinct (colour, shape) pairs, so every object can be named."""
    n = int(rng.integers(min_objects, MAX_OBJECTS + 1))
    cells = rng.choice(9, size=n, replace=False)
    kinds = rng.choice(len(COLORS) * len(SHAPES), size=n, replace=False)
    smin, smax = max(3, round(0.55 * cell)), cell - 2
    objects = []
    for c, k in zip(cells, kinds):
        size = int(rng.integers(smin, smax + 1))
        dx, dy = (int(v) for v in rng.integers(1, cell - size, size=2))   # at least 1 px from the cell's edge
        tint = tuple(float(t) for t in rng.uniform(-0.06, 0.06, size=3))
        objects.append(Obj(list(COLORS)[k // len(SHAPES)], SHAPES[k % len(SHAPES)], int(c) // 3, int(c) % 3,
                           size, dx, dy, tint))
    return Scene(tuple(objects), str(rng.choice(list(BACKGROUNDS))))


@functools.lru_cache(maxsize=None)
def _mask(shape: str, s: int) -> np.ndarray:
    """A filled shape in an s x s box, as a boolean mask."""
    y, x = np.mgrid[0:s, 0:s] + 0.5
    c = s / 2
    if shape == 'circle':
        return (x - c) ** 2 + (y - c) ** 2 <= c ** 2
    if shape == 'square':
        return np.ones((s, s), bool)
    if shape == 'triangle':  # pointing up: the half-width grows linearly from the apex row to the base
        return np.abs(x - c) <= y / 2
    if shape == 'cross':
        arm = max(1.0, s / 6)
        return (np.abs(x - c) <= arm) | (np.abs(y - c) <= arm)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(scene: Scene, cell: int = 12, background: tuple | None = None) -> np.ndarray:
    """The scene as a float32 image (3, 3·cell, 3·cell) in [0, 1]. `background` overrides the scene's colour."""
    side = 3 * cell
    rgb = background if background is not None else BACKGROUNDS[scene.background]
    img = np.empty((side, side, 3), np.float32)
    img[:] = rgb
    for o in scene.objects:
        y, x = o.row * cell + o.dy, o.col * cell + o.dx
        box = img[y:y + o.size, x:x + o.size]
        box[_mask(o.shape, o.size)] = np.clip(np.add(COLORS[o.color], o.tint), 0, 1)
    return img.transpose(2, 0, 1)


# -----------------------------------------------------------------------------
# questions: writers, and the one oracle that answers them

def _find(scene: Scene, color: str, shape: str) -> Obj | None:
    return next((o for o in scene.objects if o.color == color and o.shape == shape), None)


def answer(scene: Scene, question: str) -> str:
    """Answer any question of the four families from the scene. Raises ValueError on one it cannot answer."""
    try:
        return _answer(scene, question.split())
    except (StopIteration, ValueError, KeyError, AttributeError, IndexError) as e:  # unknown word, absent object
        raise ValueError(f"cannot answer question {question!r} about this scene") from e


def _answer(scene: Scene, w: list[str]) -> str:
    if w[:2] == ['how', 'many']:  # how many objects | how many <color> objects | how many <shapes> are there ?
        target = w[2]
        if target == 'objects':
            return str(len(scene.objects))
        if target in COLORS:
            return str(sum(o.color == target for o in scene.objects))
        shape = next(s for s, p in PLURAL.items() if p == target)
        return str(sum(o.shape == shape for o in scene.objects))
    if w[:4] == ['what', 'color', 'is', 'the']:  # what color is the <shape> ?
        (o,) = [o for o in scene.objects if o.shape == w[4]]
        return o.color
    if w[:4] == ['what', 'shape', 'is', 'the']:  # what shape is the <color> object ?
        (o,) = [o for o in scene.objects if o.color == w[4]]
        return o.shape
    if w[:3] == ['is', 'there', 'a']:  # is there a <color> <shape> ?
        return 'yes' if _find(scene, w[3], w[4]) else 'no'
    if w[:2] == ['is', 'the']:  # is the <color> <shape> <relation> the <color> <shape> ?
        a, b = _find(scene, w[2], w[3]), _find(scene, w[-3], w[-2])
        rel = ' '.join(w[4:-4])
        holds = {'left of': a.col < b.col, 'right of': a.col > b.col, 'above': a.row < b.row, 'below': a.row > b.row}
        return 'yes' if holds[rel] else 'no'
    raise ValueError('not a question of the four families')


def write_question(scene: Scene, qtype: str, rng: np.random.Generator) -> str | None:
    """A question of family `qtype` about the scene, or None if the scene cannot carry one (caller redraws)."""
    objs = scene.objects
    if qtype == 'count':
        kind = rng.choice(3, p=[0.5, 0.25, 0.25])  # counting a colour or a shape mostly gives 1; keep that rarer
        if kind == 0:
            return 'how many objects are there ?'
        present = rng.random() < 0.8  # mostly ask about what is there, so the answers are not mostly 0
        if kind == 1:
            color = objs[rng.integers(len(objs))].color if present else rng.choice(list(COLORS))
            return f'how many {color} objects are there ?'
        shape = objs[rng.integers(len(objs))].shape if present else rng.choice(SHAPES)
        return f'how many {PLURAL[shape]} are there ?'
    if qtype == 'attribute':
        by_shape = [o for o in objs if sum(p.shape == o.shape for p in objs) == 1]
        by_color = [o for o in objs if sum(p.color == o.color for p in objs) == 1]
        options = [f'what color is the {o.shape} ?' for o in by_shape] + \
                  [f'what shape is the {o.color} object ?' for o in by_color]
        return options[rng.integers(len(options))] if options else None
    if qtype == 'existence':
        if rng.random() < 0.5:  # balanced yes / no
            o = objs[rng.integers(len(objs))]
            return f'is there a {o.color} {o.shape} ?'
        absent = [(c, s) for c in COLORS for s in SHAPES if _find(scene, c, s) is None]
        c, s = absent[rng.integers(len(absent))]
        return f'is there a {c} {s} ?'
    if qtype == 'spatial':
        if len(objs) < 2:
            return None
        i, j = rng.choice(len(objs), size=2, replace=False)
        a, b = objs[i], objs[j]
        want = 'yes' if rng.random() < 0.5 else 'no'  # balanced yes / no
        options = [r for r in RELATIONS if answer(scene, _spatial(a, r, b)) == want]
        return _spatial(a, options[rng.integers(len(options))], b)
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QTYPES}")


def question_set(scene: Scene, rng: np.random.Generator, spatial: int = 1) -> list[tuple[str, str]]:
    """Several turns of VQA about one image: one question of each family the scene can carry (`spatial` of the
    spatial family, the one a base learns last), with its answer."""
    questions = [write_question(scene, qtype, rng)
                 for qtype in QTYPES for _ in range(spatial if qtype == 'spatial' else 1)]
    return [(q, answer(scene, q)) for q in questions if q is not None]


def _spatial(a: Obj, rel: str, b: Obj) -> str:
    return f'is the {a.color} {a.shape} {rel} the {b.color} {b.shape} ?'


def caption(scene: Scene, by: str = 'row') -> str:
    """Enough words to re-draw the scene: each object's colour, shape and cell, and the background. Objects are listed
    row by row (by='row': the caption of the data, T2I and the judge) or column by column (by='col': a pretraining
    turn that teaches left and right as the row-major one teaches above and below; docs/toy.md)."""
    if by not in ('row', 'col'):
        raise ValueError(f"caption order by={by!r}; expected 'row' or 'col'")
    objs = sorted(scene.objects, key=lambda o: (o.row, o.col) if by == 'row' else (o.col, o.row))
    parts = [f'a {o.color} {o.shape} at {ROWS[o.row]} {COLS[o.col]}' for o in objs]
    return ' , '.join(parts) + f' on {scene.background}'


def hard_negative(caption: str, rng: np.random.Generator) -> str:
    """The caption with one object's shape or colour changed: one word away, yet no longer the scene. The judge
    trains against these (NegCLIP-style) so that its filter sees a square turned into a circle."""
    words = caption.split()
    slots = [i for i, w in enumerate(words) if w in SHAPES or w in COLORS]
    i = slots[rng.integers(len(slots))]
    pool = SHAPES if words[i] in SHAPES else tuple(COLORS)
    words[i] = pool[(pool.index(words[i]) + rng.integers(1, len(pool))) % len(pool)]  # any other word of its kind
    return ' '.join(words)


# -----------------------------------------------------------------------------
# OOD shifts: same scenes, same questions, natural conditions the model never saw

def apply_shift(image: np.ndarray, scene: Scene, shift: str, rng: np.random.Generator, cell: int = 12) -> np.ndarray:
    """Shift a clean (3, H, W) float image of `scene`. Randomness comes from `rng`, a stream of its own."""
    if shift == 'noise':
        return np.clip(image + rng.normal(0, 0.1, image.shape).astype(np.float32), 0, 1)
    if shift == 'low_contrast':
        return 0.5 + 0.35 * (image - 0.5)
    if shift == 'occlusion':  # a mid-gray bar a quarter of a cell thick: covers part of an object, never all of it
        out, t = image.copy(), max(1, cell // 4)
        pos = int(rng.integers(0, image.shape[1] - t + 1))
        if rng.random() < 0.5:
            out[:, pos:pos + t, :] = 0.5
        else:
            out[:, :, pos:pos + t] = 0.5
        return out
    if shift == 'background':
        return render(scene, cell, background=next(iter(UNSEEN_BACKGROUND.values())))
    raise ValueError(f"unknown shift {shift!r}; expected one of {SHIFTS}")


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2, max_sigma: float = 1.0):
    """A generic augmentation, not one of the test shifts (a positive control, train.py --mode augment): each image
    moved by up to `max_shift` px (edges repeated, so no object leaves its cell) and blurred by a Gaussian of
    sigma ~ U(0, max_sigma). Every answer still holds. (B, 3, H, W) in [0, 1] -> the same shape."""
    B, _, H, W = images.shape
    out = torch.empty_like(images)
    shifts = torch.randint(-max_shift, max_shift + 1, (B, 2), generator=generator).tolist()
    sigmas = (torch.rand(B, generator=generator) * max_sigma).tolist()
    padded = torch.nn.functional.pad(images, [max_shift] * 4, mode='replicate')     # (B, 3, H + 2m, W + 2m)
    k = torch.arange(-2, 3, dtype=images.dtype)
    for i, ((dy, dx), sigma) in enumerate(zip(shifts, sigmas)):
        x = padded[i:i + 1, :, max_shift + dy:max_shift + dy + H, max_shift + dx:max_shift + dx + W]
        if sigma > 0.05:  # a separable 5-tap Gaussian, reflect-padded
            g = torch.exp(-k ** 2 / (2 * sigma ** 2))
            g = (g / g.sum()).repeat(3, 1, 1, 1)                                  # (3, 1, 1, 5)
            x = torch.nn.functional.pad(x, [2, 2, 2, 2], mode='reflect')
            x = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, g, groups=3), g.transpose(2, 3), groups=3)
        out[i] = x[0]
    return out.clamp(0, 1)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255).astype(np.uint8)


def _check_split(split: str):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")


# -----------------------------------------------------------------------------
# datasets

class ShapesVQA(Dataset):
    """Sample i of a split: one scene, one question of a uniformly drawn family, its answer, and the caption. `first`
    skips the split's first scenes: post-training reads scenes after those the base was pretrained on.
    `min_objects` and `families` (drawn uniformly from the tuple, so a family named twice comes twice as often)
    make a harder distribution: post-training's `--train-min-objects 3 --train-families ...,spatial,spatial,...`.

    Built eagerly (about 7k samples per second on one core) and held as uint8: 50k samples take about 200 MB.
    """

    def __init__(self, split: str = 'train', size: int = 1000, shift: str | None = None, cell: int = 12,
                 first: int = 0, min_objects: int = 1, families: tuple = QTYPES):
        _check_split(split)
        if shift is not None and shift not in SHIFTS:
            raise ValueError(f"unknown shift {shift!r}; expected one of {SHIFTS} or None")
        if size < 1 or first < 0:
            raise ValueError(f"size must be >= 1 and first >= 0, got {size} and {first}")
        if not 1 <= min_objects <= MAX_OBJECTS or not families or set(families) - set(QTYPES):
            raise ValueError(f"min_objects must be in 1..{MAX_OBJECTS} and families a non-empty list of {QTYPES}, got "
                             f"{min_objects} and {families}")
        self.split, self.shift, self.cell, self.first = split, shift, cell, first
        images, self.scenes, self.questions, self.answers, self.qtypes = [], [], [], [], []
        for i in range(first, first + size):  # scenes first, ..., first + size - 1 of the split
            rng = np.random.default_rng([SPLITS[split], 0, i])
            qtype = families[rng.integers(len(families))]  # a family named twice is drawn twice as often
            while True:  # redraw the scene until it can carry a question of this family (e.g. spatial needs two)
                scene = sample_scene(rng, min_objects, cell=cell)
                question = write_question(scene, qtype, rng)
                if question is not None:
                    break
            image = render(scene, cell)
            if shift is not None:  # a separate stream, so clean and shifted sets share scenes and questions
                image = apply_shift(image, scene, shift, np.random.default_rng([SPLITS[split], 1, i]), cell)
            images.append(_to_uint8(image))
            self.scenes.append(scene)
            self.questions.append(question)
            self.answers.append(answer(scene, question))
            self.qtypes.append(qtype)
        self.images = torch.from_numpy(np.stack(images))  # (size, 3, H, W) uint8
        self.captions = [caption(s) for s in self.scenes]

    def __len__(self):
        return len(self.questions)

    def __getitem__(self, i):
        return {'image': self.images[i].float() / 255, 'question': self.questions[i], 'answer': self.answers[i],
                'qtype': self.qtypes[i], 'caption': self.captions[i]}


@functools.lru_cache(maxsize=2)
def _epoch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def batch_indices(step: int, size: int, batch_size: int, seed: int = 0) -> list[int]:
    """The sample indices of training batch `step`: a pure function of (step, seed), so a resumed run reads exactly
    the batches it would have read. Each epoch is a fresh shuffle; its last incomplete batch is dropped."""
    if not 0 < batch_size <= size:
        raise ValueError(f"batch_size must be in [1, {size}] (the dataset size), got {batch_size}")
    epoch, k = divmod(step, size // batch_size)
    return _epoch_order(size, seed, epoch)[k * batch_size:(k + 1) * batch_size].tolist()


def collate(batch: list[dict]) -> dict:
    """List of samples -> {'images': (B, 3, H, W) float in [0, 1], 'questions': [...], 'answers': [...], ...}."""
    out = {'images': torch.stack([b['image'] for b in batch])}
    for key in ('question', 'answer', 'qtype', 'caption'):
        out[key + 's'] = [b[key] for b in batch]
    return out


# -----------------------------------------------------------------------------
def preview(path: str, split: str = 'train', shift: str | None = None, scale: int = 5):
    """Write a 3x3 grid of scenes, each with its question (and type) and answer under it, to a PNG."""
    from PIL import Image, ImageDraw
    ds = ShapesVQA(split, 9, shift=shift)
    side, text_h, tile_w = ds.images.shape[-1] * scale, 40, max(ds.images.shape[-1] * scale, 300)
    sheet = Image.new('RGB', (3 * tile_w, 3 * (side + text_h)), 'white')
    for i in range(9):
        x, y = (i % 3) * tile_w, (i // 3) * (side + text_h)
        img = Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).resize((side, side), Image.NEAREST)
        sheet.paste(img, (x + (tile_w - side) // 2, y))
        ImageDraw.Draw(sheet).text((x + 4, y + side + 2), f'[{ds.qtypes[i]}] {ds.questions[i]}', fill='black')
        ImageDraw.Draw(sheet).text((x + 4, y + side + 20), f'answer: {ds.answers[i]}', fill='darkgreen')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    print(f"wrote {path} ({split}{'' if shift is None else ', shift ' + shift})")


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preview', metavar='PNG', required=True, help='where to write the 3x3 grid of samples')
    parser.add_argument('--split', default='train', choices=list(SPLITS), help='which split to draw from')
    parser.add_argument('--shift', default=None, choices=SHIFTS, help='an OOD shift to apply (default: none)')
    args = parser.parse_args()
    preview(args.preview, args.split, args.shift)
