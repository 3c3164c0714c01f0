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
    objs, kind = scene.objects, ('recolor', 'reshape', 'swap')[rng.integers(3)]
    k = int(rng.integers(len(objs)))
    o = objs[k]
    if kind in ('recolor', 'reshape'):
        if kind == 'recolor':
            new = [replace(o, color=c) for c in data.COLORS if data._find(scene, c, o.shape) is None]
        else:
            new = [replace(o, shape=s) for s in data.SHAPES if data._find(scene, o.color, s) is None]
        if not new:
            return None
        n = new[rng.integers(len(new))]
        edited = data.Scene(objs[:k] + (n,) + objs[k + 1:], scene.background)
        return edited, [f'is there a {o.color} {o.shape} ?', f'is there a {n.color} {n.shape} ?']
    # swap the cells of two objects that differ in column (ask left of) or else in row (ask above)
    j = int(rng.integers(len(objs)))
    p = objs[j]
    if j == k:
        return None
    rel = 'left of' if o.col != p.col else 'above'
    a, b = replace(o, row=p.row, col=p.col), replace(p, row=o.row, col=o.col)
    swapped = list(objs)
    swapped[k], swapped[j] = a, b
    return data.Scene(tuple(swapped), scene.background), [data._spatial(o, rel, p), data._spatial(p, rel, o)]


class NaturalGroups(Dataset):
    """NaturalBench-style groups: images (2, 3, H, W) of two minimally different scenes, two yes/no questions,
    and answers[i][j] = the answer to question j on image i; the edit flips every answer across the two images."""

    def __init__(self, split: str = 'test', size: int = 500, cell: int = 12):
        data._check_split(split)
        self.groups = []
        for g in range(size):
            rng = np.random.default_rng([data.SPLITS[split], 2, g])
            while True:
                scene = data.sample_scene(rng, min_objects=2, cell=cell)
                edit = _edit(scene, rng)
                if edit is not None:
                    break
            other, questions = edit
            scenes = (scene, other)
            images = torch.from_numpy(np.stack([data._to_uint8(data.render(s, cell)) for s in scenes]))  # (2, 3, H, W)
            answers = [[data.answer(s, q) for q in questions] for s in scenes]
            self.groups.append({'images': images, 'questions': questions, 'answers': answers, 'scenes': scenes})

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, i):
        g = self.groups[i]
        return {**g, 'images': g['images'].float() / 255}
