"""naturalgroups.py: NaturalBench-style groups whose answers really flip across a minimal edit, with every answer
recomputed from the scene by data.answer, and groups that are seeded.  Run: python -m pytest -q
tests/test_naturalgroups.py"""

import torch

import naturalgroups
from data import answer


def test_natural_groups_flip_every_answer():
    groups = naturalgroups.NaturalGroups('test', 120)
    for g in groups:
        (a11, a12), (a21, a22) = g['answers']
        assert {a11, a21} == {'yes', 'no'} and {a12, a22} == {'yes', 'no'}
        assert g['images'].shape == (2, 3, 36, 36)
        assert not torch.equal(g['images'][0], g['images'][1])
        s1, s2 = g['scenes']
        changed = set(s1.objects) ^ set(s2.objects)
        assert 0 < len(changed) <= 4  # a minimal edit: one object recoloured/reshaped, or two swapped
        for i, s in enumerate(g['scenes']):  # answers recomputed from the scene, not trusted
            assert [answer(s, q) for q in g['questions']] == g['answers'][i]


def test_natural_groups_are_seeded_and_splits_differ():
    a, b = naturalgroups.NaturalGroups('val', 8), naturalgroups.NaturalGroups('val', 8)
    assert all(torch.equal(x['images'], y['images']) and x['questions'] == y['questions'] for x, y in zip(a, b))
    other = naturalgroups.NaturalGroups('test', 8)
    assert [g['questions'] for g in a] != [g['questions'] for g in other]
