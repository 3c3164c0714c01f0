"""reader.py, the check from outside the game: the shipped reader reads scenes back, and says a label broke exactly
when an edit of the scene changed the answer. Run: python -m pytest -q tests/test_reader.py   (a few seconds)"""

import dataclasses

import numpy as np
import pytest
import torch

import data
import reader as scene_reader


@pytest.fixture(scope='module')
def reader():
    return scene_reader.load()


def image(scene):
    return torch.from_numpy(data.render(scene))[None]


def test_reads_val_renders_back(reader):
    ds = data.ShapesVQA('val', 300)
    x = ds.images.float() / 255
    read = reader.read(x)
    cells = np.array([scene_reader.labels(s) for s in read]) == np.array([scene_reader.labels(s) for s in ds.scenes])
    assert cells.mean() > 0.995
    assert np.mean(scene_reader.broken(reader, x, ds.questions, ds.answers)) < 0.01


def test_an_edit_that_changes_the_answer_breaks_the_label(reader):
    ds = data.ShapesVQA('val', 200)
    checked = 0
    for scene in ds.scenes:
        o = scene.objects[0]
        other = next(s for s in data.SHAPES if s != o.shape and data._find(scene, o.color, s) is None)
        edited = dataclasses.replace(scene, objects=(dataclasses.replace(o, shape=other), *scene.objects[1:]))
        q = f'is there a {o.color} {o.shape} ?'           # yes before the edit, no after
        count = f'how many {data.PLURAL[other]} are there ?'  # one more after the edit
        both = torch.cat([image(scene), image(edited)])
        assert scene_reader.broken(reader, both, [q, q], ['yes', 'yes']) == [False, True]
        assert scene_reader.broken(reader, both, [count] * 2, [data.answer(scene, count)] * 2) == [False, True]
        # the object gone: a question that names it can no longer be asked, so its label broke
        gone = dataclasses.replace(scene, objects=scene.objects[1:])
        if gone.objects:
            asked = f'what shape is the {o.color} object ?'
            if sum(p.color == o.color for p in scene.objects) == 1:
                assert scene_reader.broken(reader, image(gone), [asked], [o.shape]) == [True]
        checked += 1
    assert checked == 200


def test_a_bad_reader_file_names_itself(tmp_path):
    path = tmp_path / 'reader.pt'
    path.write_bytes(open(scene_reader.PATH, 'rb').read()[:1000])
    with pytest.raises(ValueError, match='reader.pt.*python reader.py'):
        scene_reader.load(str(path))
