"""benchdata.py: the benchmarks' files read, and bad files failing with their path and the format they should have
had; images padded to a square as Janus pads them. The loaders' items end to end (prompts, ids, scores):
tests/test_benchmarks.py. Run: python -m pytest -q tests/test_benchdata.py"""

import base64
import io

import pytest
import torch
from PIL import Image

import benchdata as D


def png_bytes(size, rgb):
    buf = io.BytesIO()
    Image.new('RGB', size, rgb).save(buf, format='PNG')
    return buf.getvalue()


def test_load_image_pads_to_a_grey_square_keeping_the_aspect():
    # a 20 x 12 red image -> a 20 x 20 square: 4 grey rows above, 12 red, 4 grey below (20 -> 20 resizes nothing)
    x = D.load_image(png_bytes((20, 12), (255, 0, 0)), 20)
    grey, red = torch.full((3,), 127 / 255), torch.tensor([1.0, 0.0, 0.0])
    assert x.shape == (3, 20, 20)
    for rows, rgb in ((slice(0, 4), grey), (slice(4, 16), red), (slice(16, 20), grey)):
        assert torch.allclose(x[:, rows], rgb.view(3, 1, 1).expand(3, rows.stop - rows.start, 20), atol=1e-6)


def test_image_source_takes_each_released_form(tmp_path):
    raw = png_bytes((4, 4), (0, 0, 255))
    (tmp_path / 'a.png').write_bytes(raw)
    assert D.image_source('a.png', str(tmp_path), 'x') == str(tmp_path / 'a.png')   # a path next to the data file
    assert D.image_source({'bytes': raw, 'path': None}, '', 'x') == raw             # an HF image dict
    assert D.image_source({'bytes': None, 'path': 'a.png'}, str(tmp_path), 'x') == str(tmp_path / 'a.png')
    assert D.image_source(base64.b64encode(raw).decode(), '', 'x') == raw           # MMBench's base64 text
    with pytest.raises(ValueError, match=r"mm.tsv: index 3 image: expected an image .* got 'not an image!'"):
        D.image_source('not an image!', '', 'mm.tsv: index 3 image')


@pytest.mark.parametrize('content, match', [
    (None, r"q.json' not found; expected the official VQA questions JSON"),
    ('{"questions": [', r"q.json' is neither JSON nor JSON lines .*expected the official VQA questions JSON"),
    ('{"qs": []}', r"q.json' has no 'questions' list"),
    ('{"questions": [{"question_id": 1}]}', r"q.json': question 0 lacks question_id, image_id or question"),
])
def test_bad_vqa_files_name_path_and_expectation(tmp_path, content, match):
    if content is not None:
        (tmp_path / 'q.json').write_text(content)
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        D.load_vqa(str(tmp_path / 'q.json'), str(tmp_path))


def test_bad_files_of_other_benchmarks(tmp_path):
    (tmp_path / 'pope.json').write_text('{"question_id": 0, "image": "x.jpg", "text": "Is there a cat?"}\n')
    with pytest.raises(ValueError, match=r"pope.json': record 0 lacks \['label'\]; expected POPE JSON lines"):
        D.load_pope(str(tmp_path / 'pope.json'), str(tmp_path))
    (tmp_path / 'pope.json').write_text('{"question_id": 0, "image": "x.jpg", "text": "Q", "label": "no"}\n')
    with pytest.raises(FileNotFoundError, match=r"1 POPE images are not in .* \(first: \['x.jpg'\]\)"):
        D.load_pope(str(tmp_path / 'pope.json'), str(tmp_path))
    (tmp_path / 'mm.tsv').write_text('index\tquestion\n0\tQ\n')
    with pytest.raises(ValueError, match=r"mm.tsv' lacks columns \['A', 'B', 'image'\]; expected the MMBench TSV"):
        D.load_mmbench(str(tmp_path / 'mm.tsv'))
    with pytest.raises(FileNotFoundError, match=r"nb.jsonl' not found; expected NaturalBench records"):
        D.load_naturalbench(str(tmp_path / 'nb.jsonl'))
