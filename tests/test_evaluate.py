"""evaluate.py's toy measurements: the T2I ranking counts a win only when the picture is nearer its own scene, the
reconstruction picture has the layout it claims, PGD never beats clean accuracy and is clean accuracy at eps 0, an
oracle generator is more consistent than a shuffled one, a run dir loads its adapter, and bad paths fail naming
themselves (--plot and --step-cost are tests/test_plots.py). Run: python -m pytest -q tests/test_evaluate.py"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import data
import evaluate
import model
import naturalgroups
import toy_umm
from judge import Judge


class Oracle:
    """A stand-in generator that draws exactly the scene of each caption (or, with shift=1, the previous one)."""
    device = torch.device('cpu')  # where evaluate puts the images (UMM.device, Judge.device)

    def __init__(self, dataset, shift=0):
        self.by_caption = {c: dataset[i]['image'] for i, c in enumerate(dataset.captions)}
        self.by_image = {dataset[i]['image'].numpy().tobytes(): c for i, c in enumerate(dataset.captions)}
        self.shift = shift

    def caption(self, images):
        return [self.by_image[x.numpy().tobytes()] for x in images]

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


class CaptionJudge:
    """A stand-in judge that scores an image 1 with its scene's own caption and 0 with any other text (or, with
    inverted=True, the other way round)."""
    device = torch.device('cpu')  # where evaluate puts the images (UMM.device, Judge.device)

    def __init__(self, dataset, inverted=False):
        self.caption_of = {dataset[i]['image'].numpy().tobytes(): c for i, c in enumerate(dataset.captions)}
        self.inverted = inverted

    def image_text_similarity(self, images, texts):
        own = torch.tensor([self.caption_of[x.numpy().tobytes()] == t for x, t in zip(images, texts)]).float()
        return 1 - own if self.inverted else own


def test_edit_ranking_counts_the_own_caption_above_a_one_word_edit():
    ds = data.ShapesVQA('val', 40)
    assert evaluate.edit_ranking(CaptionJudge(ds), ds, batch_size=16) == 1.0
    assert evaluate.edit_ranking(CaptionJudge(ds, inverted=True), ds, batch_size=16) == 0.0
    torch.manual_seed(0)
    blind = Judge.tiny(data.VOCAB)  # random weights: some edits win, some lose
    assert 0.0 < evaluate.edit_ranking(blind, ds) < 1.0


def test_reconstruction_picture_has_three_rows(tmp_path):
    ds = data.ShapesVQA('val', 4)
    path = str(tmp_path / 'recon.png')
    evaluate.save_reconstructions(Oracle(ds), ds, path, n=4, scale=2)
    picture = Image.open(path)
    assert picture.size == (4 * 36 * 2, 3 * 36 * 2)
    top = torch.from_numpy(np.array(picture))[:72:2, :72:2].permute(2, 0, 1) / 255  # (3 * 72, 4 * 72, 3) -> (3, 36, 36)
    assert torch.allclose(top, ds[0]['image'], atol=1 / 255)


def test_consistency_of_an_oracle_generator_beats_a_shuffled_one():
    torch.manual_seed(0)
    ds, judge = data.ShapesVQA('val', 24), Judge.tiny(data.VOCAB)
    oracle = evaluate.consistency(Oracle(ds), ds, judge, batch_size=10)
    shuffled = evaluate.consistency(Oracle(ds, shift=1), ds, judge, batch_size=10)  # each caption, another scene
    assert oracle['caption_exact'] == 1.0 and abs(oracle['mean'] - 1) < 1e-5  # regenerated == original
    for encoder in ('judge', 'encoder', 'mean'):
        assert oracle[encoder] > shuffled[encoder] + 1e-4, encoder  # a random judge sees small gaps
    assert abs(shuffled['mean'] - (shuffled['judge'] + shuffled['encoder']) / 2) < 1e-6


@pytest.fixture(scope='module')
def fresh():
    torch.manual_seed(0)
    return toy_umm.build_tiny_toy().eval()


def test_pgd_is_clean_accuracy_at_eps_zero_and_never_raises_it(fresh):
    ds = data.ShapesVQA('val', 16)
    x = data.collate([ds[i] for i in range(16)])['images']
    with torch.no_grad():
        own = fresh.answer(fresh.encode(x), ds.questions)
    ds.answers = [p if i % 2 else a for i, (p, a) in enumerate(zip(own, ds.answers))]  # half right by construction
    clean = evaluate.accuracy(fresh, ds)['all']
    assert clean >= 0.5
    assert evaluate.pgd_accuracy(fresh, ds, eps=0.0, batch_size=16) == clean
    assert torch.equal(evaluate.pgd_attack(fresh, x, ds.questions, ds.answers, eps=0.0), x)
    eps = 8 / 255
    x_adv = evaluate.pgd_attack(fresh, x, ds.questions, ds.answers, eps=eps, steps=5, step_size=2 / 255)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():  # ascent: the attack raises the loss it climbs (a sign error would lower it)
        before = fresh.understand_loss(fresh.encode(x), ds.questions, ds.answers)
        after = fresh.understand_loss(fresh.encode(x_adv), ds.questions, ds.answers)
    assert after.mean() > before.mean()
    assert evaluate.pgd_accuracy(fresh, ds, eps=eps, steps=5, batch_size=8) <= clean


def test_a_run_dir_loads_its_adapter_over_its_base(run_dir):
    root, trained = run_dir
    loaded, judge = evaluate.load_checkpoint(str(root / 'run'))
    base, _ = evaluate.load_checkpoint(str(root / 'base'))
    assert judge is not None  # the base's judge.pt
    saved = dict(trained.lm.named_parameters())
    for name, p in loaded.lm.named_parameters():
        if 'lora_' in name:
            assert torch.equal(p, saved[name]), name
    b = data.collate([data.ShapesVQA('val', 8)[i] for i in range(8)])
    with torch.no_grad():
        loss = {k: m.understand_loss(m.encode(b['images']), b['questions'], b['answers'])
                for k, m in (('trained', trained), ('loaded', loaded), ('base', base))}
    assert torch.allclose(loss['loaded'], loss['trained'], atol=1e-5)
    assert (loss['loaded'] - loss['base']).abs().max() > 1e-3


def test_bad_paths_fail_naming_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match='base.pt.*config.json and adapter/'):
        evaluate.load_checkpoint(str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        evaluate.checkpoint_kind(str(tmp_path))
    cli = subprocess.run([sys.executable, 'evaluate.py', '--ckpt', str(tmp_path / 'nowhere')], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert cli.returncode == 2 and str(tmp_path / 'nowhere') in cli.stderr and 'Traceback' not in cli.stderr


def test_a_pgd_radius_in_train_py_units_fails_naming_the_flag():
    """evaluate.py reads --pgd-eps in pixels (4/255); train.py and study.py in 1/255 units. A 4 meant as 4/255 would
    attack with no bound at all and score a meaningless PGD accuracy, so it stops before any scoring."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cli = subprocess.run([sys.executable, 'evaluate.py', '--ckpt', 'weights/tiny-toy', '--pgd-eps', '4'],
                         capture_output=True, text=True, cwd=root, timeout=120)
    assert cli.returncode == 2 and '--pgd-eps' in cli.stderr and '4/255' in cli.stderr
    assert 'Traceback' not in cli.stderr and 'suite:' not in cli.stdout


def test_a_pgd_question_count_below_one_fails_naming_the_flag():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cli = subprocess.run([sys.executable, 'evaluate.py', '--ckpt', 'weights/tiny-toy', '--pgd-questions', '0'],
                         capture_output=True, text=True, cwd=root, timeout=120)
    assert cli.returncode == 2 and 'error: --pgd-questions' in cli.stderr and 'suite:' not in cli.stdout


def test_pgd_reads_the_first_n_clean_questions_however_many_the_clean_set_holds():
    """--pgd-questions N: PGD on the first N questions of the clean set, fewer or more than the set's --size (the
    same questions: each is drawn from its split and index); by default the first --subset."""
    for n, expected in ((None, 5), (3, 3), (12, 12)):
        sets, few = evaluate.suite_sets('val', 8, 5, 2, n)
        assert len(sets['pgd']) == expected and len(few) == 5
        for i in range(min(expected, 8)):
            a, b = sets['pgd'][i], sets['clean'][i]
            assert torch.equal(a['image'], b['image']) and (a['question'], a['answer']) == (b['question'], b['answer'])
    assert sets['pgd'][11]['question'] == data.ShapesVQA('val', 12)[11]['question']


class Lookup:
    """A stand-in U that answers from a table {(image bytes, question): answer}, or 'yes' to everything."""
    device = torch.device('cpu')  # where evaluate puts the images (UMM.device, Judge.device)

    def __init__(self, table=None):
        self.table = table

    def encode(self, x):
        return x

    def answer(self, z, questions):
        return [self.table[(x.numpy().tobytes(), q)] if self.table else 'yes' for x, q in zip(z, questions)]


def test_natural_scores_count_a_group_only_when_all_four_answers_are_right():
    groups = naturalgroups.NaturalGroups('val', 6)
    table = {(g['images'][i].numpy().tobytes(), q): g['answers'][i][j]
             for g in groups for i in range(2) for j, q in enumerate(g['questions'])}
    assert evaluate.natural_scores(Lookup(table), groups, batch_size=5) == \
        {'Acc': 1.0, 'Q_Acc': 1.0, 'I_Acc': 1.0, 'G_Acc': 1.0}
    g = groups[0]  # one wrong cell: its group, one question and one image are lost
    key = (g['images'][1].numpy().tobytes(), g['questions'][0])
    table[key] = 'no' if table[key] == 'yes' else 'yes'
    assert evaluate.natural_scores(Lookup(table), groups) == \
        {'Acc': 23 / 24, 'Q_Acc': 11 / 12, 'I_Acc': 11 / 12, 'G_Acc': 5 / 6}
    yes = evaluate.natural_scores(Lookup(), groups)  # answers flip across the two images: a constant never wins
    assert yes['Acc'] == 0.5 and yes['Q_Acc'] == 0 and yes['G_Acc'] == 0


class Brighter:
    """A stand-in U that says 'yes' when the image is brighter than 0.5 and whose loss (oddly) rises with brightness,
    so ascending the loss makes the image brighter: the attack turns a wrong answer right."""
    device = torch.device('cpu')  # where evaluate puts the images (UMM.device, Judge.device)

    def encode(self, x):
        return x

    def understand_loss(self, z, questions, answers):
        return z.flatten(1).mean(1)

    def answer(self, z, questions):
        return ['yes' if v > 0.5 else 'no' for v in z.flatten(1).mean(1).tolist()]


def test_pgd_accuracy_counts_only_samples_right_before_and_after_the_attack():
    items = [dict(image=torch.full((3, 4, 4), 0.49), question='q', answer='yes', qtype='existence', caption='c')] * 4
    x_adv = evaluate.pgd_attack(Brighter(), torch.full((4, 3, 4, 4), 0.49), ['q'] * 4, ['yes'] * 4, eps=0.1)
    assert Brighter().answer(x_adv, ['q'] * 4) == ['yes'] * 4  # the "attack" made every answer right ...
    assert evaluate.pgd_accuracy(Brighter(), items, eps=0.1) == 0.0  # ... which does not count: clean was wrong


class OnMeta(model.UMM):
    """A stand-in UMM whose weights sit on the meta device (a device that is not the default, as a GPU would be): it
    records where each image batch reaches it and answers 'yes', so evaluate's loops can be checked to feed the model
    on its own device. Its outputs that evaluate reads back (.item(), strings) come from shapes only."""
    hidden_size, image_size = 4, 36

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4, device='meta'))
        self.seen = []

    def encode(self, images):                                            # (B, 3, s, s) -> (B, 1, 4) on meta
        self.seen.append(images.device.type)
        return images.mean((1, 2, 3))[:, None, None] * self.w

    def understand_loss(self, z, questions, answers):
        return z.float().sum((1, 2))

    def answer(self, z, questions, max_new_tokens=4):
        return ['yes'] * len(questions)

    def caption(self, images, max_new_tokens=48):
        self.seen.append(images.device.type)
        return ['a scene'] * len(images)

    def generate(self, prompts):
        return torch.zeros(len(prompts), 3, 36, 36, device=self.device)


def test_evaluation_feeds_the_model_on_its_own_device():
    """accuracy, natural_scores and the PGD attack move the CPU-built batches to the model's device."""
    umm = OnMeta()
    evaluate.accuracy(umm, data.ShapesVQA('val', 4))
    evaluate.natural_scores(umm, naturalgroups.NaturalGroups('val', 2))
    b = next(evaluate._batches(data.ShapesVQA('val', 2), 2, umm.device))
    x_adv = evaluate.pgd_attack(umm, b['images'], b['questions'], b['answers'], steps=1)
    assert umm.seen and set(umm.seen) == {'meta'} and x_adv.device.type == 'meta'
