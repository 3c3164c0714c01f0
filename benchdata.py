"""
The benchmarks' official file formats, read: each loader turns a released file (VQAv2 / AdVQA, POPE, NaturalBench,
MMBench, MMMU) into items {'id', 'prompt', 'image', ...ground truth} in the file's order, the prompt worded as the
benchmark's evaluation asks it. benchmarks.py predicts and scores these items; realdata.py trains on VQAv2 through
load_vqa and load_image. Nothing here loads a model or writes a file.

    python benchmarks.py pope --questions coco_pope_random.json --images val2014/ --out out/pope.json  # reads here
    python -c "import benchdata; print(benchdata.load_pope('coco_pope_random.json', 'val2014/')[0])"   # one item
    python -c "import benchdata; print(len(benchdata.load_mmbench('MMBench_DEV_EN.tsv')))"  # questions x rotations

Every error names the file and the format it expected, so a wrong download fails at start, not mid-run.
Items hold an image's path or bytes; load_image opens it when a batch needs it, so a loaded benchmark holds no
decoded image. Tests: tests/test_benchdata.py, and tests/test_benchmarks.py end to end.
"""

import ast
import base64
import csv
import io
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

import scorers

# the prompt suffixes the benchmarks' evaluations ask with
SHORT = '\nAnswer the question using a single word or phrase.'    # LLaVA's VQAv2 / MMMU-open suffix
LETTER = "Answer with the option's letter from the given choices directly."
NB_SUFFIX = {'yes_no': 'Please answer Yes or No.',               # NaturalBench's SUFFIX_FOR_VQA, appended as is
             'multiple_choice': 'Please output the letter corresponding to the correct option.'}
CIRCULAR = 1_000_000  # VLMEvalKit: pass k of question i has index i + k * 1e6


# -----------------------------------------------------------------------------
# files: read with errors that name the path and what was expected

def read(path, expected, fields=None):
    """JSON, JSON lines (POPE's .json files are JSON lines) or .parquet (pyarrow) -> the document, or with `fields` a
    list of records each checked to hold them. Every error names the path and what was expected."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} not found; expected {expected}")
    if path.endswith('.parquet'):
        import pyarrow.parquet as pq  # only for parquet exports; or export the dataset to JSONL
        doc = pq.read_table(path).to_pylist()
    else:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        try:
            doc = json.loads(text)  # one JSON document; JSON lines fail here ("Extra data") and are read line by line
        except json.JSONDecodeError as e:
            try:
                doc = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError:
                raise ValueError(f"{path!r} is neither JSON nor JSON lines ({e}); expected {expected}") from None
    if fields is None:
        return doc
    doc = [doc] if isinstance(doc, dict) else doc  # JSON lines with one line
    if not isinstance(doc, list) or not doc or not all(isinstance(r, dict) for r in doc):
        raise ValueError(f"{path!r} holds no list of records; expected {expected}")
    for k, r in enumerate(doc):
        if any(f not in r for f in fields):
            raise ValueError(f"{path!r}: record {k} lacks {[f for f in fields if f not in r]}; expected {expected}")
    return doc


# -----------------------------------------------------------------------------
# images

def image_source(value, base_dir, where):
    """An image as the released files hold it -> a path or bytes: an HF image dict {'bytes', 'path'}, a path relative
    to the data file, or base64 text (MMBench's TSV)."""
    if isinstance(value, dict):
        value = value.get('bytes') or value.get('path')  # an exported HF Image feature: the bytes, else its path
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    # a path is short; base64 image text runs to many KB, so only short strings are looked up on disk
    if isinstance(value, str) and len(value) < 4096 and os.path.isfile(os.path.join(base_dir, value)):
        return os.path.join(base_dir, value)
    try:
        if isinstance(value, str) and value:
            return base64.b64decode(value, validate=True)  # strict: a missing file's name ('x.jpg') is no base64
    except ValueError:
        pass
    raise ValueError(f"{where}: expected an image (a path, base64 text or HF image dict), got {str(value)[:80]!r}")


def load_image(source, size):
    """A path or bytes -> (3, size, size) in [0, 1]: padded to a square with grey (as Janus's processor pads, keeping
    the aspect ratio), then resized bicubic."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source).convert('RGB')
    w, h = img.size
    square = Image.new('RGB', (max(w, h),) * 2, (127, 127, 127))
    square.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))  # centred on the grey square
    array = np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255  # (s, s, 3) in [0, 1]
    return torch.from_numpy(array).permute(2, 0, 1)  # (3, s, s)


# -----------------------------------------------------------------------------
# loaders: each returns items {'id', 'prompt', 'image', ...ground truth} in the file's order

def load_vqa(questions, images, annotations=None):
    """VQAv2 / AdVQA: the official questions JSON (+ the annotations JSON, to score) and a COCO image dir, images
    named COCO_<data_subtype>_<image_id:012d>.jpg (VQAv2), else <image_id:012d>.jpg (COCO 2017, as AdVQA uses).
    images=None: no image paths (re-scoring a predictions file needs none)."""
    form = 'the official VQA questions JSON {"data_subtype", "questions": [{"question_id", "image_id", "question"}]}'
    doc = read(questions, form)
    if not isinstance(doc, dict) or not isinstance(doc.get('questions'), list):
        raise ValueError(f"{questions!r} has no 'questions' list; expected {form}")
    truth = {}
    if annotations:
        form = 'the official VQA annotations JSON {"annotations": [{"question_id", "answers": [{"answer"}]}]}'
        ann = read(annotations, form)
        if not isinstance(ann, dict) or not isinstance(ann.get('annotations'), list):
            raise ValueError(f"{annotations!r} has no 'annotations' list; expected {form}")
        truth = {a['question_id']: a for a in ann['annotations']}
    items, missing = [], []
    for k, q in enumerate(doc['questions']):
        if not all(f in q for f in ('question_id', 'image_id', 'question')):
            raise ValueError(f"{questions!r}: question {k} lacks question_id, image_id or question")
        # e.g. COCO_val2014_000000262148.jpg (VQAv2), else 000000262148.jpg (COCO 2017)
        names = [f"COCO_{doc.get('data_subtype', '')}_{q['image_id']:012d}.jpg", f"{q['image_id']:012d}.jpg"]
        path = next((p for p in (os.path.join(images, n) for n in names) if os.path.isfile(p)), None) if images \
            else None
        missing += [names[0]] if path is None and images else []
        items.append(dict(id=q['question_id'], prompt=q['question'] + SHORT, image=path))
        if annotations and q['question_id'] not in truth:
            raise ValueError(f"{annotations!r} has no annotation for question_id {q['question_id']}")
        if annotations:
            a = truth[q['question_id']]
            # the 10 human answers vqa_accuracy scores against; answer_type: yes/no, number or other
            items[-1].update(answers=[x['answer'] for x in a['answers']], answer_type=a.get('answer_type', 'all'))
    if missing:
        raise FileNotFoundError(f"{len(missing)} images are not in --images {images!r} (first: {missing[:3]})")
    return items


def load_pope(questions, images):
    """POPE: the official JSON lines {"question_id", "image", "text", "label"} and the COCO val2014 image dir (None:
    no image paths, for re-scoring)."""
    records = read(questions, 'POPE JSON lines {"question_id", "image", "text", "label"}',
                   ('question_id', 'image', 'text', 'label'))
    missing = [r['image'] for r in records if images and not os.path.isfile(os.path.join(images, r['image']))]
    if missing:
        raise FileNotFoundError(f"{len(missing)} POPE images are not in {images!r} (first: {missing[:3]})")
    # POPE asks its own question ("Is there a <object> in the image?") with no suffix; image None without --images
    return [dict(id=r['question_id'], prompt=r['text'], image=images and os.path.join(images, r['image']),
                 label=r['label'])
            for r in records]


def load_naturalbench(path):
    """NaturalBench (HF BaiqiL/NaturalBench, exported): two questions x two images per record -> 4 items in the
    official cell order q0_i0, q0_i1, q1_i0, q1_i1, each question + SUFFIX_FOR_VQA[Question_Type]."""
    cells = [f'Image_{i}_Question_{q}' for q in range(2) for i in range(2)]
    records = read(path, f"NaturalBench records (Question_0/1, Image_0/1, {', '.join(cells)}, Question_Type)",
                   ('Question_0', 'Question_1', 'Image_0', 'Image_1', *cells))
    items = []
    for k, r in enumerate(records):
        kind = r.get('Question_Type', r.get('Question Type'))  # the field's older spelling
        if kind not in NB_SUFFIX:
            raise ValueError(f"{path!r}: record {k} has Question_Type {kind!r}; expected one of {list(NB_SUFFIX)}")
        images = [image_source(r[f'Image_{i}'], os.path.dirname(path), f"{path}: record {k} Image_{i}") for i in (0, 1)]
        # label: the record's answer for that cell (yes/no, or A/B), read by naturalbench_extract when scored
        items += [dict(id=f"{r.get('Index', k)}_q{q}_i{i}", prompt=r[f'Question_{q}'] + NB_SUFFIX[kind], kind=kind,
                       image=images[i], label=str(r[f'Image_{i}_Question_{q}'])) for q in (0, 1) for i in (0, 1)]
    return items


def load_mmbench(path):
    """MMBench: the official TSV (index, question, hint, A-D, answer, category, base64 image, where an image of <= 64
    characters names the row holding it). Rows with index >= 1e6 (circular passes) are used as they are; else each
    question is asked once per rotation of its options (ABCD, BCDA, ...) with ids index + shift * 1e6."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} not found; expected the MMBench TSV")
    csv.field_size_limit(sys.maxsize)  # a base64 image can exceed csv's default 128 KiB field limit
    with open(path, encoding='utf-8', newline='') as f:
        rows = list(csv.DictReader(f, delimiter='\t'))
    lacking = sorted({'index', 'question', 'A', 'B', 'image'} - set(rows[0] if rows else ()))
    if lacking:
        raise ValueError(f"{path!r} lacks columns {lacking}; expected the MMBench TSV (index, question, hint, A, B, "
                         f"C, D, answer, category, image)")
    # circular: the file already holds VLMEvalKit's rotated copies (indices >= 1e6), so none are made here
    by_index, circular = {r['index']: r['image'] for r in rows}, any(float(r['index']) >= CIRCULAR for r in rows)
    items = []
    for r in rows:
        image = image_source(by_index.get(r['image'], r['image']) if len(r['image']) <= 64 else r['image'], '',
                             f"{path}: index {r['index']} image")
        # options: the letter columns that are filled ('nan': an empty cell as a pandas export may write it)
        options, answer = [r[c] for c in 'ABCDEFGHI' if r.get(c, '') not in ('', 'nan')], r.get('answer') or None
        hint = r['hint'] + '\n' if r.get('hint', '') not in ('', 'nan') else ''
        if answer and answer not in 'ABCDEFGHI'[:len(options)]:
            raise ValueError(f"{path!r}: index {r['index']} answer {answer!r} is not one of its {len(options)} options")
        # n options: n passes, each a full prediction (the cost of circular evaluation); a test split has no answer,
        # so 'A' stands in for the rotation and the items carry answer None
        for shift in range(1 if circular else len(options)):
            opts, gt = scorers.mmbench_rotate(options, answer or 'A', shift)
            prompt = hint + r['question'] + '\n' + ''.join(f"{chr(65 + j)}. {o}\n" for j, o in enumerate(opts)) + LETTER
            items.append(dict(id=int(float(r['index'])) + shift * CIRCULAR, prompt=prompt, image=image,
                              answer=answer and gt, choices=dict(zip('ABCDEFGHI', opts))))
    return items


def load_mmmu(path):
    """MMMU (HF MMMU/MMMU, exported): id, question, options (a list or its Python text), answer, question_type,
    image_1 (..image_7). The model sees image_1 only: the UMM contract takes one image per question."""
    records = read(path, 'MMMU records with id, question, options, answer, question_type, image_1',
                   ('id', 'question', 'options', 'answer', 'question_type', 'image_1'))
    items = []
    for r in records:
        # the HF release stores options as Python text "['a', 'b']"; literal_eval parses it without running code
        options = ast.literal_eval(r['options']) if isinstance(r['options'], str) else list(r['options'])
        answer = r['answer']
        if isinstance(answer, str) and answer.startswith('['):  # an open answer with several accepted forms
            answer = ast.literal_eval(answer)
        example = ''.join(f"({chr(65 + j)}) {o}\n" for j, o in enumerate(options))  # MMMU's LLaVA eval config
        prompt = f"{r['question']}\n{example}\n{LETTER}" if r['question_type'] == 'multiple-choice' else \
            r['question'] + SHORT
        items.append(dict(id=r['id'], prompt=prompt, options=options, answer=answer, kind=r['question_type'],
                          image=image_source(r['image_1'], os.path.dirname(path), f"{path}: {r['id']} image_1")))
    return items


def load_items(args):
    """The items of benchmarks.py's `task` from its flags (--questions, --images, --annotations or --data)."""
    if args.task in ('vqav2', 'advqa', 'pope'):
        return load_pope(args.questions, args.images) if args.task == 'pope' else \
            load_vqa(args.questions, args.images, args.annotations)
    return {'naturalbench': load_naturalbench, 'mmbench': load_mmbench, 'mmmu': load_mmmu}[args.task](args.data)
