"""benchmarks.py on tiny files in each benchmark's released format (read by benchdata.py): a scripted UMM that names
the colour of the image it is shown proves the right image reaches each question, and every score below is worked out
by hand in a comment. Also: the GenEval / WISE layouts from the tiny toy's generate(), the consistency encoders on
tiny random configs (no downloads), the Consistency Score, and atomic writes. Bad benchmark files:
tests/test_benchdata.py. Run: python -m pytest -q tests/test_benchmarks.py"""

import base64
import io
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import backbones
import benchdata as D
import benchmarks as B
import model

COLORS = {'red': (255, 0, 0), 'green': (0, 255, 0), 'blue': (0, 0, 255)}


def png(path, color, size=(20, 12)):
    Image.new('RGB', size, COLORS[color]).save(path)
    return path


def png_bytes(color):
    buf = io.BytesIO()
    Image.new('RGB', (8, 8), COLORS[color]).save(buf, format='PNG')
    return buf.getvalue()


class Scripted(model.UMM):
    """z = the mean colour of each image; answers name that colour, the way each benchmark's prompt asks."""
    hidden_size, image_size = 3, 16

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))  # a device to read
        self.prompts = []

    def encode(self, images):
        return images.mean((2, 3))[:, None]  # (B, 1, 3)

    def answer(self, z, questions, max_new_tokens=4):
        self.prompts += questions
        out = []
        for rgb, q in zip(z[:, 0], questions):
            color = list(COLORS)[rgb.argmax().item()]
            letters = dict(re.findall(r'^\(?([A-D])[.)] (\w+)$', q, re.M))  # 'A. red' (MMBench), '(A) red' (MMMU)
            if letters:
                out.append(next((k for k, v in letters.items() if v == color), 'Z'))
            elif q.startswith('Is there'):
                out.append('Yes, there is.' if color in q else 'No, there is not.')
            else:
                out.append(color)
        return out


def vqa_files(tmp_path, subtype='val2014', name=lambda s, i: f'COCO_{s}_{i:012d}.jpg'):
    images = tmp_path / 'images'
    images.mkdir()
    png(images / name(subtype, 1), 'red')
    png(images / name(subtype, 2), 'green')
    questions = {'data_subtype': subtype, 'questions': [
        dict(question_id=10, image_id=1, question='What color?'), dict(question_id=11, image_id=2, question='Hue?'),
        dict(question_id=12, image_id=2, question='Colour?')]}
    ten = lambda *pairs: [dict(answer=a, answer_id=j) for j, a in enumerate(x for a, k in pairs for x in [a] * k)]
    annotations = {'annotations': [
        dict(question_id=10, answer_type='other', answers=ten(('red', 10))),                 # unanimous: 1.0
        dict(question_id=11, answer_type='other', answers=ten(('Green.', 2), ('lime', 8))),  # "green" k=2: 0.6
        dict(question_id=12, answer_type='other', answers=ten(('blue', 10)))]}               # wrong: 0.0
    (tmp_path / 'q.json').write_text(json.dumps(questions))
    (tmp_path / 'a.json').write_text(json.dumps(annotations))
    return str(tmp_path / 'q.json'), str(tmp_path / 'a.json'), str(images)


def test_vqav2_end_to_end_and_rescoring_the_file(tmp_path):
    q, a, images = vqa_files(tmp_path)
    items = D.load_vqa(q, images, a)
    umm = Scripted()
    predictions = B.predict(umm, items, batch_size=2)
    assert predictions == {10: 'red', 11: 'green', 12: 'green'}   # each question saw its own image
    assert umm.prompts[0] == 'What color?' + D.SHORT
    # (1.0 + 0.6 + 0.0) / 3 = 53.33 %
    assert B.score('vqav2', items, predictions) == {'overall': 53.33, 'perAnswerType': {'other': 53.33}}
    B.write_predictions(str(tmp_path / 'p.json'), items, predictions)
    assert B.read_predictions(str(tmp_path / 'p.json'), items) == predictions


def test_advqa_coco2017_names(tmp_path):
    q, a, images = vqa_files(tmp_path, 'val2017', lambda s, i: f'{i:012d}.jpg')
    assert B.predict(Scripted(), D.load_vqa(q, images, a)) == {10: 'red', 11: 'green', 12: 'green'}


def test_cli_predicts_then_scores_an_existing_file(tmp_path, monkeypatch):
    q, a, images = vqa_files(tmp_path)
    monkeypatch.setattr(B, 'build_umm', lambda args: Scripted())
    out = str(tmp_path / 'run' / 'preds.json')
    B.main(['vqav2', '--questions', q, '--annotations', a, '--images', images, '--out', out, '--device', 'cpu'])
    assert json.load(open(out)) == [{'question_id': 10, 'answer': 'red'}, {'question_id': 11, 'answer': 'green'},
                                    {'question_id': 12, 'answer': 'green'}]
    assert json.load(open(out.replace('.json', '_scores.json')))['overall'] == 53.33
    os.remove(out.replace('.json', '_scores.json'))
    B.main(['vqav2', '--questions', q, '--annotations', a, '--score', out])  # re-scoring needs no images
    assert json.load(open(out.replace('.json', '_scores.json')))['overall'] == 53.33
    assert not [n for n in os.listdir(tmp_path / 'run') if n.endswith('.tmp')]


def test_missing_prediction_ids_are_counted_and_named(tmp_path):
    q, a, images = vqa_files(tmp_path)
    items = D.load_vqa(q, images, a)
    (tmp_path / 'p.json').write_text(json.dumps([{'question_id': 10, 'answer': 'red'}]))
    with pytest.raises(ValueError, match=r"p.json'?: 2 of the benchmark's 3 question ids .* \(first: \[11, 12\]\)"):
        B.read_predictions(str(tmp_path / 'p.json'), items)


def test_pope(tmp_path):
    png(tmp_path / 'COCO_val2014_000000000001.jpg', 'red')
    png(tmp_path / 'COCO_val2014_000000000002.jpg', 'blue')
    lines = [dict(question_id=0, image='COCO_val2014_000000000001.jpg', text='Is there a red car?', label='yes'),
             dict(question_id=1, image='COCO_val2014_000000000001.jpg', text='Is there a blue car?', label='yes'),
             dict(question_id=2, image='COCO_val2014_000000000002.jpg', text='Is there a blue cup?', label='yes'),
             dict(question_id=3, image='COCO_val2014_000000000002.jpg', text='Is there a green cup?', label='no')]
    (tmp_path / 'pope.json').write_text(''.join(json.dumps(x) + '\n' for x in lines))  # JSON lines, as released
    items = D.load_pope(str(tmp_path / 'pope.json'), str(tmp_path))
    out = B.score('pope', items, B.predict(Scripted(), items))
    # answers: yes, no, yes, no -> TP 2 (q0, q2), FN 1 (q1), TN 1 (q3), FP 0
    assert (out['TP'], out['FP'], out['TN'], out['FN']) == (2, 0, 1, 1)
    assert out['accuracy'] == 0.75 and out['precision'] == 1.0 and out['recall'] == pytest.approx(2 / 3)
    rescore = D.load_pope(str(tmp_path / 'pope.json'), None)  # re-scoring: the same items without image paths
    assert [i['image'] for i in rescore] == [None] * 4 and B.score('pope', rescore, B.predict(Scripted(), items)) == out


def test_naturalbench_groups_and_unanswered_cells(tmp_path):
    png(tmp_path / 'r.png', 'red')
    png(tmp_path / 'g.png', 'green')
    yes_no = dict(Question_Type='yes_no', Image_0='r.png', Image_1='g.png', Image_0_Question_0='Yes',
                  Image_1_Question_0='No', Image_0_Question_1='No', Image_1_Question_1='Yes')
    records = [dict(yes_no, Index=0, Question_0='Is there red?', Question_1='Is there green?'),  # all 4 right
               dict(yes_no, Index=1, Question_0='Is there red?', Question_1='Which colour?'),    # q1 says a colour
               dict(Index=2, Question_Type='multiple_choice', Image_0=base64.b64encode(png_bytes('blue')).decode(),
                    Image_1={'bytes': png_bytes('red')}, Question_0='A. blue\nB. red\n', Question_1='A. red\nB. blue\n',
                    Image_0_Question_0='A', Image_1_Question_0='B', Image_0_Question_1='B', Image_1_Question_1='A')]
    (tmp_path / 'nb.jsonl').write_text(''.join(json.dumps(r, default=lambda b: base64.b64encode(b).decode()) + '\n'
                                               for r in records))
    items = D.load_naturalbench(str(tmp_path / 'nb.jsonl'))
    assert [i['id'] for i in items[:4]] == ['0_q0_i0', '0_q0_i1', '0_q1_i0', '0_q1_i1']
    assert items[0]['prompt'] == 'Is there red?Please answer Yes or No.'  # the official plain concatenation
    predictions = B.predict(Scripted(), items)
    assert predictions['1_q1_i0'] == 'red'  # neither yes nor no: -1, a wrong cell
    out = B.score('naturalbench', items, predictions)
    # group 0: all right (Q 2, I 2, G 1). group 1: q0 right on both, q1 cells unanswered -> Q 1, I 0, Acc 2.
    # group 2 (letters): blue image, 'A. blue' -> A (right); red image, 'A. blue B. red' -> B (right); q1: red image
    # -> A, truth A (right); blue image -> B, truth B (right) -> all right. Q 5/6, I 4/6, Acc 10/12, G 2/3
    assert out == pytest.approx({'Q_Acc': 5 / 6, 'I_Acc': 4 / 6, 'Acc': 10 / 12, 'G_Acc': 2 / 3,
                                 'labels_off_pattern': 0})


def mmbench_tsv(path, rows):
    cols = ['index', 'question', 'hint', 'A', 'B', 'C', 'D', 'answer', 'category', 'image']
    path.write_text('\t'.join(cols) + '\n' + ''.join('\t'.join(str(r.get(c, '')) for c in cols) + '\n' for r in rows))
    return str(path)


def test_mmbench_rotates_each_question_and_needs_every_pass(tmp_path):
    b64 = lambda c: base64.b64encode(png_bytes(c)).decode()
    rows = [dict(index=0, question='Colour?', hint='A hint.', A='blue', B='red', C='green', D='pink', answer='B',
                 category='c', image=b64('red')),      # right under every rotation
            dict(index=1, question='Colour?', A='green', B='red', C='blue', answer='A', image=b64('red'))]  # key wrong
    items = D.load_mmbench(mmbench_tsv(tmp_path / 'mm.tsv', rows))
    assert [i['id'] for i in items] == [0, 10 ** 6, 2 * 10 ** 6, 3 * 10 ** 6, 1, 10 ** 6 + 1, 2 * 10 ** 6 + 1]
    assert items[1]['prompt'] == 'A hint.\nColour?\nA. red\nB. green\nC. pink\nD. blue\n' + D.LETTER
    predictions = B.predict(Scripted(), items)
    assert [predictions[i] for i in (0, 10 ** 6, 2 * 10 ** 6, 3 * 10 ** 6)] == ['B', 'A', 'D', 'C']  # red moves
    assert B.score('mmbench', items, predictions) == {'circular_accuracy': 0.5, 'questions': 2}


def test_mmbench_file_with_circular_rows_and_image_references(tmp_path):
    b64 = base64.b64encode(png_bytes('green')).decode()
    rows = [dict(index=5, question='Q', A='green', B='red', answer='A', image=b64),
            dict(index=10 ** 6 + 5, question='Q', A='red', B='green', answer='B', image='5')]  # image: see row 5
    items = D.load_mmbench(mmbench_tsv(tmp_path / 'mm.tsv', rows))
    assert [i['id'] for i in items] == [5, 10 ** 6 + 5] and items[1]['image'] == items[0]['image']
    assert B.score('mmbench', items, B.predict(Scripted(), items)) == {'circular_accuracy': 1.0, 'questions': 1}


def test_mmmu_multiple_choice_and_open(tmp_path):
    png(tmp_path / 'b.png', 'blue')
    records = [dict(id='validation_Art_1', question='<image 1> Which?', options="['red', 'blue']", answer='B',
                    question_type='multiple-choice', image_1='b.png'),
               dict(id='validation_Art_2', question='Name it.', options='[]', answer="['blue', 'navy']",
                    question_type='open', image_1={'path': 'b.png'}),
               dict(id='validation_Art_3', question='Name it.', options=[], answer='red', question_type='open',
                    image_1='b.png')]
    (tmp_path / 'mmmu.json').write_text(json.dumps(records))
    items = D.load_mmmu(str(tmp_path / 'mmmu.json'))
    assert items[0]['prompt'] == '<image 1> Which?\n(A) red\n(B) blue\n\n' + D.LETTER
    # answers: 'B' (right), 'blue' in ['blue', 'navy'] (right), 'blue' vs 'red' (wrong) -> 2/3
    assert B.score('mmmu', items, B.predict(Scripted(), items)) == {'accuracy': pytest.approx(2 / 3), 'questions': 3}


def test_mmmu_parquet(tmp_path):
    pa, pq = pytest.importorskip('pyarrow'), pytest.importorskip('pyarrow.parquet')
    record = dict(id='x', question='Q', options="['red', 'blue']", answer='A', question_type='multiple-choice',
                  image_1={'bytes': png_bytes('red'), 'path': None})
    pq.write_table(pa.Table.from_pylist([record]), tmp_path / 'm.parquet')
    items = D.load_mmmu(str(tmp_path / 'm.parquet'))
    assert B.score('mmmu', items, B.predict(Scripted(), items))['accuracy'] == 1.0


def test_failed_write_leaves_the_old_file(tmp_path):
    path = str(tmp_path / 'scores.json')
    B.write_json(path, {'overall': 1.0})
    with pytest.raises(TypeError):
        B.write_json(path, {'overall': object()})  # not serialisable: fails before anything is written
    assert json.load(open(path)) == {'overall': 1.0} and os.listdir(tmp_path) == ['scores.json']


# ---------------------------------------------------------------------------------------------------------------------
# consistency

def test_consistency_score_reproduces_table_1():
    # footnote 4: 0.6 * UnifiedBench + 0.4 * (WISE * 100). BAGEL: 0.6 * 83.48 + 0.4 * 41 = 50.088 + 16.4 = 66.488,
    # printed 66.49; Janus-Pro: 0.6 * 82.77 + 0.4 * 35 = 49.662 + 14 = 63.662, printed 63.66
    assert B.consistency_score(83.48, 0.41) == pytest.approx(66.488)
    assert B.consistency_score(82.77, 0.35) == pytest.approx(63.662)


@pytest.fixture(scope='module')
def tiny_toy():
    torch.manual_seed(0)
    return backbones.load_backbone('tiny-toy').eval()


def test_geneval_layout_from_tiny_toy(tmp_path, tiny_toy):
    lines = [{'tag': 'single_object', 'include': [{'class': 'cat', 'count': 1}], 'prompt': 'a photo of a cat'},
             {'tag': 'colors', 'include': [{'class': 'dog', 'count': 1, 'color': 'red'}], 'prompt': 'a red dog'}]
    (tmp_path / 'meta.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
    B.write_geneval(tiny_toy, str(tmp_path / 'meta.jsonl'), str(tmp_path / 'out'), samples=3, batch_size=4)
    assert sorted(os.listdir(tmp_path / 'out')) == ['00000', '00001']
    for n, line in enumerate(lines):
        folder = tmp_path / 'out' / f'{n:05d}'
        assert json.load(open(folder / 'metadata.jsonl')) == line   # evaluate_images.py reads it with json.load
        assert sorted(os.listdir(folder / 'samples')) == ['0000.png', '0001.png', '0002.png']
    saved = torch.from_numpy(np.array(Image.open(tmp_path / 'out' / '00001' / 'samples' / '0000.png')))  # (s, s, 3)
    expected = tiny_toy.generate(['a red dog'])[0]  # the toy's generate is deterministic
    assert torch.allclose(saved.permute(2, 0, 1).float() / 255, expected, atol=1 / 255)


def test_wise_layout_named_by_prompt_id_and_resumes(tmp_path, tiny_toy):
    for name, ids in (('cultural_common_sense.json', (1, 2)), ('natural_science.json', (801,))):
        (tmp_path / name).write_text(json.dumps([{'prompt_id': i, 'Prompt': f'prompt {i}', 'Explanation': '',
                                                  'Subcategory': 'x'} for i in ids]))
    files = [str(tmp_path / 'cultural_common_sense.json'), str(tmp_path / 'natural_science.json')]
    B.write_wise(tiny_toy, files, str(tmp_path / 'img'), batch_size=2)
    assert sorted(os.listdir(tmp_path / 'img')) == ['1.png', '2.png', '801.png']
    before = os.path.getmtime(tmp_path / 'img' / '2.png')
    os.remove(tmp_path / 'img' / '1.png')
    B.write_wise(tiny_toy, files, str(tmp_path / 'img'))
    assert os.path.isfile(tmp_path / 'img' / '1.png') and os.path.getmtime(tmp_path / 'img' / '2.png') == before


def tiny_hf(kind, path):
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
    net = (SiglipVisionModel(SiglipVisionConfig(image_size=32, **small)) if kind == 'siglip'
           else Dinov2Model(Dinov2Config(image_size=32, **small)))
    net.save_pretrained(path)
    return net.eval()


@pytest.mark.parametrize('kind, size, mean, std', [('siglip', 32, 0.5, 0.5),
                                                     ('dino', 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_hf_encoders_load_from_a_local_dir_and_take_cosines(tmp_path, kind, size, mean, std):
    net = tiny_hf(kind, str(tmp_path / kind))
    encoder = B.load_encoder(kind, str(tmp_path / kind))
    a, b = torch.rand(3, 3, 20, 20), torch.rand(3, 3, 20, 20)

    def reference(x):  # resize, normalise, the pooled output, unit length: written out independently
        x = torch.nn.functional.interpolate(x, size=(size, size), mode='bicubic', antialias=True).clamp(0, 1)
        m, s = torch.tensor(mean).view(-1, 1, 1).expand(3, 1, 1), torch.tensor(std).view(-1, 1, 1).expand(3, 1, 1)
        with torch.no_grad():
            e = net(pixel_values=(x - m) / s).pooler_output
        return e / e.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        got = encoder.image_image_similarity(a, b)
        assert torch.allclose(got, (reference(a) * reference(b)).sum(-1), atol=1e-5)
        assert torch.allclose(encoder.image_image_similarity(a, a), torch.ones(3), atol=1e-5)


class Constant:
    def __init__(self, value):
        self.value = value

    def image_image_similarity(self, a, b):
        return torch.full((len(a),), self.value)


def test_unified_scores_average_the_encoders():
    x = torch.rand(4, 3, 8, 8)
    out = B.unified_scores(x, x, {'clip': Constant(0.9), 'siglip': Constant(0.6), 'dino': Constant(0.3)})
    assert out == pytest.approx({'clip': 90.0, 'siglip': 60.0, 'dino': 30.0, 'mean': 60.0})


def test_unifiedbench_with_the_tiny_toy_and_a_tiny_judge(tmp_path, tiny_toy):
    from judge import Judge
    for c in COLORS:
        png(tmp_path / f'{c}.png', c, (36, 36))
    out = B.unifiedbench(tiny_toy, str(tmp_path), {'clip': Judge.tiny(['red'])}, batch_size=2,
                         keep=str(tmp_path / 'regen'))
    assert set(out['captions']) == {'blue.png', 'green.png', 'red.png'} and out['mean'] == out['clip']
    assert sorted(os.listdir(tmp_path / 'regen')) == ['blue.png', 'green.png', 'red.png']


@pytest.mark.parametrize('kind, where, match', [
    ('clip', 'ViT-L-14:/nowhere/clip.bin', r"--clip: no CLIP at 'ViT-L-14:/nowhere/clip.bin': pass an open_clip"),
    ('siglip', '/nowhere/siglip', r"siglip weights not found at '/nowhere/siglip': pass --siglip DIR"),
    ('dino', '/nowhere/dino', r"dino weights not found at '/nowhere/dino': pass --dino DIR"),
])
def test_missing_encoder_weights_fail_with_one_clear_message(kind, where, match):
    with pytest.raises(FileNotFoundError, match=match):
        B.load_encoder(kind, where)


def test_a_missing_file_fails_with_one_line_naming_it(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(root, 'benchmarks.py'), 'pope', '--questions',
           str(tmp_path / 'no_such_pope.json'), '--images', str(tmp_path), '--out', str(tmp_path / 'o.json')]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env={**os.environ, 'OMP_NUM_THREADS': '1'},
                       timeout=300)
    assert r.returncode != 0 and 'no_such_pope.json' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
