"""Synthetic shapes data: determinism, disjoint splits, hand-checked answers, OOD shifts that keep the questions.
NaturalBench-style groups: tests/test_naturalgroups.py.  Run: python -m pytest -q tests/test_data.py"""

import numpy as np
import pytest
import torch

import data
from data import Obj, Scene, answer


def _scene():
    # . R .      R = red circle (0,1)
    # B . .      B = blue square (1,0), G = green triangle (1,2) is not there: Y = yellow triangle (2,2)
    # . . Y      plus a red square at (2,0)
    return Scene((Obj('red', 'circle', 0, 1), Obj('blue', 'square', 1, 0), Obj('yellow', 'triangle', 2, 2),
                  Obj('red', 'square', 2, 0)))


@pytest.mark.parametrize('question, expected', [
    ('how many objects are there ?', '4'),
    ('how many red objects are there ?', '2'),
    ('how many green objects are there ?', '0'),
    ('how many squares are there ?', '2'),
    ('how many crosses are there ?', '0'),
    ('what color is the circle ?', 'red'),
    ('what color is the triangle ?', 'yellow'),
    ('what shape is the blue object ?', 'square'),
    ('is there a yellow triangle ?', 'yes'),
    ('is there a yellow circle ?', 'no'),
    ('is the blue square left of the yellow triangle ?', 'yes'),
    ('is the yellow triangle left of the blue square ?', 'no'),
    ('is the red circle left of the blue square ?', 'no'),
    ('is the red circle right of the blue square ?', 'yes'),
    ('is the red circle above the red square ?', 'yes'),
    ('is the red square below the red circle ?', 'yes'),
    ('is the blue square above the red square ?', 'yes'),
    ('is the red square left of the blue square ?', 'no'),   # same column: neither left nor right
    ('is the red square right of the blue square ?', 'no'),
    ('is the yellow triangle above the red square ?', 'no'),  # same row
])
def test_oracle_on_a_hand_built_scene(question, expected):
    assert answer(_scene(), question) == expected


def test_render_puts_objects_in_their_cells():
    img = data.render(_scene())  # (3, 36, 36)
    assert img.shape == (3, 36, 36) and img.min() >= 0 and img.max() <= 1
    lit = img.sum(0) > 0.3  # background is black
    cells = {(r, c) for r in range(3) for c in range(3) if lit[12 * r:12 * r + 12, 12 * c:12 * c + 12].any()}
    assert cells == {(0, 1), (1, 0), (2, 2), (2, 0)}
    # the red circle's pixels are red
    red = img[:, 0:12, 12:24][:, lit[0:12, 12:24]]
    assert (red[0] > 0.7).all() and (red[1] < 0.3).all() and (red[2] < 0.3).all()


def test_same_seed_same_data_and_dataset_fields():
    a, b = data.ShapesVQA('train', 64), data.ShapesVQA('train', 64)
    assert torch.equal(a.images, b.images) and a.questions == b.questions and a.answers == b.answers
    s = a[3]
    assert s['image'].dtype == torch.float32 and s['image'].shape == (3, 36, 36)
    assert 0 <= s['image'].min() and s['image'].max() <= 1
    assert s['qtype'] in data.QTYPES and s['answer'] in data.ANSWERS
    batch = data.collate([a[i] for i in range(8)])
    assert batch['images'].shape == (8, 3, 36, 36) and len(batch['questions']) == 8 and len(batch['qtypes']) == 8


def test_answers_are_what_the_oracle_says_and_families_are_balanced():
    ds = data.ShapesVQA('val', 800)
    for scene, q, a in zip(ds.scenes, ds.questions, ds.answers):
        assert answer(scene, q) == a
        assert set(q.split()) <= set(data.VOCAB)
    for qtype in data.QTYPES:
        share = ds.qtypes.count(qtype) / len(ds)
        assert 0.15 < share < 0.35, (qtype, share)
    for qtype in ('existence', 'spatial'):  # yes / no are balanced, so chance is 50%
        yes = [a for a, t in zip(ds.answers, ds.qtypes) if t == qtype].count('yes')
        n = ds.qtypes.count(qtype)
        assert 0.38 < yes / n < 0.62, (qtype, yes / n)


def test_captions_determine_the_scene():
    ds = data.ShapesVQA('train', 200)
    for scene, cap in zip(ds.scenes, ds.captions):
        assert set(cap.split()) <= set(data.VOCAB)
        parsed = set()
        for part in cap.rsplit(' on ', 1)[0].split(' , '):
            _, color, shape, _, row, col = part.split()
            parsed.add((color, shape, data.ROWS.index(row), data.COLS.index(col)))
        assert parsed == {(o.color, o.shape, o.row, o.col) for o in scene.objects}
        assert cap.endswith(' on ' + scene.background)


def test_column_captions_list_the_same_objects_column_by_column():
    ds = data.ShapesVQA('train', 200)
    reordered = 0
    for scene, cap in zip(ds.scenes, ds.captions):
        by_col = data.caption(scene, by='col')
        objects, background = by_col.rsplit(' on ', 1)
        parts = objects.split(' , ')
        assert sorted(parts) == sorted(cap.rsplit(' on ', 1)[0].split(' , ')) and background == scene.background
        cells = [(data.COLS.index(p.split()[-1]), data.ROWS.index(p.split()[-2])) for p in parts]
        assert cells == sorted(cells)  # left to right, and top to bottom within a column
        reordered += by_col != cap
    assert reordered > 20
    with pytest.raises(ValueError, match='by='):
        data.caption(ds.scenes[0], by='diagonal')


def test_question_sets_ask_each_family_the_scene_can_carry_once():
    rng, sizes = np.random.default_rng(0), set()
    family = {'how many': 'count', 'what color': 'attribute', 'what shape': 'attribute', 'is there': 'existence',
              'is the': 'spatial'}  # the families' question forms, as the oracle parses them
    for scene in data.ShapesVQA('train', 200).scenes:
        pairs = data.question_set(scene, rng)
        families = [family[' '.join(q.split()[:2])] for q, _ in pairs]
        assert len(set(families)) == len(families)  # one per family
        assert ('spatial' in families) == (len(scene.objects) >= 2) and {'count', 'existence'} <= set(families)
        assert all(a == answer(scene, q) for q, a in pairs)
        sizes.add(len(pairs))
    assert sizes == {3, 4}  # small scenes cannot carry every family


def test_hard_negatives_change_one_shape_or_colour_word():
    rng = np.random.default_rng(0)
    kinds = set()
    for cap in data.ShapesVQA('train', 200).captions:
        neg = data.hard_negative(cap, rng)
        changed = [(a, b) for a, b in zip(cap.split(), neg.split()) if a != b]
        assert len(neg.split()) == len(cap.split()) and len(changed) == 1
        (a, b), = changed
        assert (a in data.SHAPES and b in data.SHAPES) or (a in data.COLORS and b in data.COLORS)
        kinds.add(a in data.SHAPES)
    assert kinds == {True, False}  # both kinds of change happen


def test_splits_are_disjoint():
    train, val, test = (data.ShapesVQA(s, 300) for s in ('train', 'val', 'test'))
    flat = lambda ds: {bytes(img.numpy().tobytes()) for img in ds.images}
    assert not flat(train) & flat(val) and not flat(train) & flat(test) and not flat(val) & flat(test)


@pytest.mark.parametrize('shift', data.SHIFTS)
def test_ood_shifts_change_images_not_questions(shift):
    clean, shifted = data.ShapesVQA('test', 50), data.ShapesVQA('test', 50, shift=shift)
    assert clean.questions == shifted.questions and clean.answers == shifted.answers
    diff = (clean.images.float() - shifted.images.float()).abs().flatten(1).amax(1)
    assert (diff > 20).all()  # every image visibly changed (> 20 / 255 somewhere)
    assert shifted.images.float().mean() > 0  # and is still an image
    again = data.ShapesVQA('test', 50, shift=shift)
    assert torch.equal(again.images, shifted.images)  # shifts are seeded too


def test_augment_moves_and_blurs_each_image_within_its_bounds():
    """data.augment (the augmentation control): at zero strength the images come back unchanged; without blur each
    image is the original moved by at most max_shift px with its edges repeated, and the moves differ between images;
    blur keeps the mean brightness."""
    x = data.collate([data.ShapesVQA('val', 16)[i] for i in range(16)])['images']
    assert torch.equal(data.augment(x, torch.Generator().manual_seed(0), 0, 0.0), x)
    moved = data.augment(x, torch.Generator().manual_seed(0), 2, 0.0)
    padded = torch.nn.functional.pad(x, [2] * 4, mode='replicate')
    found = []
    for i in range(len(x)):
        fits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if torch.equal(moved[i], padded[i, :, 2 + dy:2 + dy + 36, 2 + dx:2 + dx + 36])]
        assert fits, i
        found.append(fits[0])
    assert len(set(found)) > 3
    blurred = data.augment(x, torch.Generator().manual_seed(1), 0, 1.0)
    assert not torch.equal(blurred, x)
    assert torch.allclose(blurred.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.02)


def test_vocab_covers_answers_and_is_unique():
    assert len(set(data.VOCAB)) == len(data.VOCAB)
    assert set(data.ANSWERS) <= set(data.VOCAB)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='split'):
        data.ShapesVQA('training', 4)
    with pytest.raises(ValueError, match='shift'):
        data.ShapesVQA('test', 4, shift='fog')
    with pytest.raises(ValueError, match='size'):
        data.ShapesVQA('test', 0)
    with pytest.raises(ValueError, match='question'):
        answer(_scene(), 'why is the sky blue ?')


def test_generation_is_fast_enough():
    import time
    t = time.perf_counter()
    data.ShapesVQA('train', 2000)
    assert time.perf_counter() - t < 5.0  # about 0.3 s here; tens of thousands take seconds


def test_a_harder_distribution_has_the_scenes_and_families_it_asks_for():
    hard = data.ShapesVQA('train', 300, first=50000, min_objects=3, families=('count', 'spatial', 'spatial'))
    assert min(len(s.objects) for s in hard.scenes) == 3
    share = {f: hard.qtypes.count(f) / len(hard) for f in ('count', 'spatial')}
    assert set(hard.qtypes) == {'count', 'spatial'} and 0.55 < share['spatial'] < 0.78, share
    plain = data.ShapesVQA('train', 300, first=50000)
    assert min(len(s.objects) for s in plain.scenes) == 1 and set(plain.qtypes) == set(data.QTYPES)
    for i in range(len(hard)):  # every answer is still the oracle's
        assert hard.answers[i] == data.answer(hard.scenes[i], hard.questions[i])
    for bad in (dict(min_objects=0), dict(min_objects=6), dict(families=()), dict(families=('colour',))):
        with pytest.raises(ValueError):
            data.ShapesVQA('train', 5, **bad)
