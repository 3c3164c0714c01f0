"""
NaturalBench-style groups in the shapes world (data.py): two minimally different scenes x two yes/no questions whose
answers flip across them, so a model that answers from the question alone has a G-Acc of 0. evaluate.py scores
them with NaturalBench's official Q-Acc, I-Acc and G-Acc (scorers.py); G-Acc needs all four answers of a group right.

    python evaluate.py --ckpt out/base --ckpt out/unigame --json out/suite.json   # its 'natural' rows come from here
    python -c "import naturalgroups as n; g = n.NaturalGroups('test', 1)[0]; print(g['questions'], g['answers'])"

Group g of split s is drawn from np.random.default_rng([s, 2, g]), a seed stream apart from data.ShapesVQA's scenes
([s, 0, i]) and shifts ([s, 1, i]). Tests: tests/test_naturalgroups.py.
"""

from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset

import data


def _edit(scene: data.Scene, rng: np.random.Generator) -> tuple[data.Scene, list[str]] | None:
    """A minimal edit of the scene and two yes/no questions whose answers it flips, or None if there is none."""
    objs, kind = scene.objects, ('recolor', 'reshape', 'swap')[rng.integers(3)]  # three edits, equally likely
    k = int(rng.integers(len(objs)))  # the object to edit (or the first of the two to swap)
    o = objs[k]
    if kind in ('recolor', 'reshape'):
        # only a (colour, shape) pair the scene lacks: every object stays nameable and the old pair leaves the scene
        if kind == 'recolor':
            new = [replace(o, color=c) for c in data.COLORS if data._find(scene, c, o.shape) is None]
        else:
            new = [replace(o, shape=s) for s in data.SHAPES if data._find(scene, o.color, s) is None]
        if not new:
            return None
        n = new[rng.integers(len(new))]
        edited = data.Scene(objs[:k] + (n,) + objs[k + 1:], scene.background)  # same cell, size and offset
        # q0 asks for the old object (yes -> no), q1 for the new one (no -> yes)
        return edited, [f'is there a {o.color} {o.shape} ?', f'is there a {n.color} {n.shape} ?']
    # swap the cells of two objects that differ in column (ask left of) or else in row (ask above)
    j = int(rng.integers(len(objs)))
    p = objs[j]
    if j == k:
        return None  # no partner to swap with: the caller draws a new scene
    rel = 'left of' if o.col != p.col else 'above'
    a, b = replace(o, row=p.row, col=p.col), replace(p, row=o.row, col=o.col)  # each keeps its size and offset
    swapped = list(objs)
    swapped[k], swapped[j] = a, b
    # 'o rel p' and 'p rel o': exactly one holds before the swap and the other after, so q0 can start from 'no'
    return data.Scene(tuple(swapped), scene.background), [data._spatial(o, rel, p), data._spatial(p, rel, o)]


def edited_image(scene: data.Scene, rng: np.random.Generator, cell: int = 12) -> torch.Tensor:
    """A rendered minimal edit of the scene (one object recoloured, reshaped or swapped), float (3, H, W) in [0, 1]:
    the label-breaking change at which --filter cosine puts its calibrated 0 (buffer.SemanticFilter.fit)."""
    while (edit := _edit(scene, rng)) is None:  # a swap that drew one object twice: draw again (recolour always can)
        pass
    return torch.from_numpy(data._to_uint8(data.render(edit[0], cell))).float() / 255


class NaturalGroups(Dataset):
    """NaturalBench-style groups: images (2, 3, H, W) of two minimally different scenes, two yes/no questions,
    and answers[i][j] = the answer to question j on image i; the edit flips every answer across the two images."""

    def __init__(self, split: str = 'test', size: int = 500, cell: int = 12):
        data._check_split(split)
        self.groups = []
        for g in range(size):
            rng = np.random.default_rng([data.SPLITS[split], 2, g])  # per group: group g is the same at any `size`
            while True:  # redraw when the edit drew nothing (a swap's same object twice, no free shape)
                scene = data.sample_scene(rng, min_objects=2, cell=cell)
                edit = _edit(scene, rng)
                if edit is not None:
                    break
            other, questions = edit
            scenes = (scene, other)
            images = torch.from_numpy(np.stack([data._to_uint8(data.render(s, cell)) for s in scenes]))  # (2, 3, H, W)
            answers = [[data.answer(s, q) for q in questions] for s in scenes]  # (2 images, 2 questions), the oracle's
            self.groups.append({'images': images, 'questions': questions, 'answers': answers, 'scenes': scenes})

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, i):
        g = self.groups[i]  # held as uint8, a quarter of float32's memory (1000 groups: 7.8 MB)
        return {**g, 'images': g['images'].float() / 255}  # (2, 3, H, W) in [0, 1]
