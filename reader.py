"""
A reader that is not part of the game: it reads a toy image back into a scene, so that the data's own oracle
(data.answer) can say whether a candidate still carries its label. It shares nothing with the UMM, the judge or C;
train.py asks it about every mined candidate, accepted or rejected by the filter, and logs how often each kind
broke its label (metrics `broken_accepted`, `broken_rejected`; Issue: "the filter rejects candidates whose label
broke").

Each of the 3x3 cells is classified on its own: empty, or one of the 24 colour-shape objects. A read scene answers
every question family but none about the background (the questions never ask about it).

    python reader.py                       # train it (87 s on 2 cores), write weights/tiny-toy/reader.pt
    python reader.py --check               # its accuracy on val renders and on the shipped base's decodes G(z)
"""

import argparse
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data

CLASSES = [None] + [(c, s) for c in data.COLORS for s in data.SHAPES]  # class 0: an empty cell; 1 + 6 x 4 = 25
PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights', 'tiny-toy', 'reader.pt')


class SceneReader(nn.Module):
    """(B, 3, 3c, 3c) images -> (B, 9, 25) logits, one classifier shared by the nine c x c cells."""

    def __init__(self, cell=12, width=32):
        super().__init__()
        self.cell = cell
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),                  # c x c
                                 nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),   # c/2 x c/2
                                 # (B*9, width * 36) at c = 12: a linear layer over the whole cell
                                 nn.Flatten(), nn.Linear(width * (cell // 2) ** 2, 128), nn.ReLU(),
                                 nn.Linear(128, len(CLASSES)))

    def forward(self, images):
        c, B = self.cell, len(images)
        cells = images.unfold(2, c, c).unfold(3, c, c)                  # (B, 3, 3, 3, c, c)
        cells = cells.permute(0, 2, 3, 1, 4, 5).reshape(B * 9, 3, c, c)  # row-major cells
        return self.net(cells).view(B, 9, len(CLASSES))                 # (B, 9, 25): nine cells, one batch pass

    @torch.no_grad()
    def read(self, images) -> list[data.Scene]:
        """The scenes the images show: one object per non-empty cell (position and identity only)."""
        classes = self(images.float().clamp(0, 1)).argmax(-1).tolist()   # (B, 9)
        # size, offset, tint and background keep their defaults: no question asks about them
        return [data.Scene(tuple(data.Obj(*CLASSES[k], cell // 3, cell % 3) for cell, k in enumerate(row) if k))
                for row in classes]


def labels(scene: data.Scene) -> list[int]:
    """The 9 cell classes of a scene, row-major."""
    out = [0] * 9
    for o in scene.objects:
        out[3 * o.row + o.col] = CLASSES.index((o.color, o.shape))
    return out


def broken(reader, images, questions, answers) -> list[bool]:
    """Whether each image no longer carries its label: the oracle's answer to its question about the scene the reader
    sees differs from the label, or the question cannot be asked of that scene (an object it names is gone)."""
    out = []
    for scene, q, a in zip(reader.read(images), questions, answers):
        try:
            out.append(data.answer(scene, q) != a)  # the oracle that labelled the data, on what the reader sees
        except ValueError:
            out.append(True)  # e.g. 'what color is the circle ?' with no circle (or two) in the read scene
    return out


def train(steps=1500, batch_size=64, lr=2e-3, noise=0.05, seed=0, size=20000):
    """Cell CE on train renders, each with Gaussian pixel noise of a random std up to `noise`, so that it reads
    decoded images too (the toy decoder's RMS error is about 0.04). Any train scenes do: the reader is not the UMM."""
    torch.manual_seed(seed)
    ds, reader = data.ShapesVQA('train', size), SceneReader()
    y_all = torch.tensor([labels(s) for s in ds.scenes])                  # (size, 9) cell classes
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=0.01)
    for step in (bar := tqdm(range(steps), desc='reader', dynamic_ncols=True)):
        idx = data.batch_indices(step, len(ds), batch_size, seed)        # a fresh shuffle each epoch
        x = ds.images[idx].float() / 255                                  # (B, 3, 36, 36) uint8 -> [0, 1]
        # per image a std drawn uniformly in [0, noise): clean renders and decoder-like errors alike
        x = (x + noise * torch.rand(len(x), 1, 1, 1) * torch.randn_like(x)).clamp(0, 1)
        loss = F.cross_entropy(reader(x).flatten(0, 1), y_all[idx].flatten())  # (B*9, 25) vs (B*9,): CE per cell
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return reader.eval()


def load(path=PATH) -> SceneReader:
    """The reader saved by `python reader.py`; a missing or foreign file names itself and the command."""
    try:
        reader = SceneReader()
        reader.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
    except (OSError, RuntimeError, KeyError, EOFError) as e:
        raise ValueError(f"{path}: not a reader checkpoint ({type(e).__name__}); rebuild it with "
                         f"`python reader.py --out {path}`") from e
    return reader.eval()


def check(reader, size=1000, base=None):
    """Share of images whose label the reader finds broken: val renders (should be ~0), and if a base is given, the
    base's clean decodes G(z) of the same images (the floor under any candidate's rate)."""
    ds = data.ShapesVQA('val', size)
    x = ds.images.float() / 255                                           # (size, 3, 36, 36)
    out = {'renders': float(np.mean(broken(reader, x, ds.questions, ds.answers)))}
    if base is not None:
        with torch.no_grad():  # G(Enc(x)) with no perturbation, 250 images a pass
            decoded = torch.cat([base.decode(x[i:i + 250], base.encode(x[i:i + 250]), ds.questions[i:i + 250])[0]
                                 for i in range(0, size, 250)])
        out['clean_decodes'] = float(np.mean(broken(reader, decoded, ds.questions, ds.answers)))
    return out


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=PATH, help='where to write (or, with --check, read) the reader')
    p.add_argument('--steps', type=int, default=1500, help='training steps at batch 64')
    p.add_argument('--seed', type=int, default=0, help='seed of init and data order')
    p.add_argument('--check', action='store_true', help='only measure the saved reader (val renders, base decodes)')
    args = p.parse_args()
    if args.steps < 1:
        p.error(f"--steps: must be >= 1, got {args.steps}")
    if args.check:
        try:
            reader = load(args.out)
        except ValueError as e:
            p.error(f"--out: {e}")
    else:
        reader = train(args.steps, seed=args.seed)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        torch.save(reader.state_dict(), args.out)  # the state dict only (0.6 MB); load() rebuilds the module
    import toy_base  # the base only to measure the reader on its decodes; the reader never sees the UMM in training
    base = toy_base.tiny_toy(init=toy_base.BASE_DIR)
    print(f"label broken, per the reader and data.answer, on 1000 val images: {check(reader, base=base.eval())}")
