"""evaluate.py's toy measurements: the T2I ranking counts a win only when the picture is nearer its own scene, and the
reconstruction picture has the layout it claims. Run: python -m pytest -q tests/test_evaluate.py"""

import torch
from PIL import Image

import data
import evaluate
from buffer import Judge


class Oracle:
    """A stand-in generator that draws exactly the scene of each caption (or, with shift=1, the previous one)."""

    def __init__(self, dataset, shift=0):
        self.by_caption = {c: dataset[i]['image'] for i, c in enumerate(dataset.captions)}
        self.shift = shift

    def generate(self, captions):
        return torch.stack([self.by_caption[c] for c in captions]).roll(self.shift, 0)

    def render(self, z):
        return z

    def encode(self, x):
        return x


def test_t2i_ranking_counts_wins_against_another_scene():
    torch.manual_seed(0)
    ds, judge = data.ShapesVQA('val', 40), Judge.tiny(data.VOCAB)
    assert evaluate.t2i_ranking(Oracle(ds), judge, ds, batch_size=16) == 1.0      # its own scene: always nearer
    assert evaluate.t2i_ranking(Oracle(ds, shift=1), judge, ds, batch_size=40) == 0.0  # always the other scene


def test_reconstruction_picture_has_three_rows(tmp_path):
    ds = data.ShapesVQA('val', 4)
    path = str(tmp_path / 'recon.png')
    evaluate.save_reconstructions(Oracle(ds), ds, path, n=4, scale=2)
    picture = Image.open(path)
    assert picture.size == (4 * 36 * 2, 3 * 36 * 2)
    top = torch.tensor(list(picture.getdata())).view(3 * 72, 4 * 72, 3)[:72:2, :72:2].permute(2, 0, 1) / 255
    assert torch.allclose(top, ds[0]['image'], atol=1 / 255)


def test_step_cost_leaves_out_step_zero_and_divides_by_the_first_run(tmp_path, capsys):
    import json
    for name, times in (('sft', [9.0, 0.10, 0.20]), ('ug', [9.0, 0.30, 0.30])):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / 'metrics.jsonl', 'w') as f:
            f.writelines(json.dumps({'step': i, 'step_time': t}) + '\n' for i, t in enumerate(times))
    means = evaluate.step_cost([str(tmp_path / 'sft'), str(tmp_path / 'ug')])
    assert abs(means[str(tmp_path / 'sft')] - 0.15) < 1e-9 and abs(means[str(tmp_path / 'ug')] - 0.30) < 1e-9
    assert '2.00x' in capsys.readouterr().out
