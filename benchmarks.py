"""
The paper's real benchmarks from local files in their released formats: predictions through UMM.answer, scores by
scorers.py; image folders for GenEval's and WISE's official scorers; the UnifiedBench consistency encoders.

    python benchmarks.py vqav2 --questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations v2_mscoco_val2014_annotations.json --images val2014/ --out out/vqav2.json   # also: advqa
    python benchmarks.py pope --questions coco_pope_random.json --images val2014/ --out out/pope.json
    python benchmarks.py naturalbench --data naturalbench.jsonl --out out/nb.json    # the HF release, exported
    python benchmarks.py mmbench --data MMBench_DEV_EN.tsv --out out/mmbench.json    # circular passes
    python benchmarks.py mmmu --data mmmu_validation.jsonl --out out/mmmu.json       # .json / .jsonl / .parquet
    python benchmarks.py pope --questions coco_pope_random.json --score out/pope.json   # score a file, no model
    python benchmarks.py geneval --prompts evaluation_metadata.jsonl --outdir out/geneval   # then GenEval's scorer
    python benchmarks.py wise --prompts data/*.json --outdir out/wise                       # then WISE's gpt_eval.py
    python benchmarks.py unifiedbench --images laion100/ --clip ViT-L-14:clip.bin --siglip siglip/ --dino dinov2/

The model is `--backbone NAME` (default janus-pro-7b; weights local or in HF_HOME) or `--ckpt RUN_DIR` (a train.py
run). Predictions are a JSON list of {"question_id", "answer"} (VQA's results format); scores go to OUT_scores.json.
Every file is written atomically (tmp + os.replace), so an interrupted run leaves no half-written result.
Tests: tests/test_benchmarks.py.
"""

import argparse
import ast
import base64
import csv
import io
import json
import os
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import scorers

UNDERSTANDING = ('vqav2', 'advqa', 'pope', 'naturalbench', 'mmbench', 'mmmu')
SHORT = '\nAnswer the question using a single word or phrase.'    # LLaVA's VQAv2 / MMMU-open suffix
LETTER = "Answer with the option's letter from the given choices directly."
NB_SUFFIX = {'yes_no': 'Please answer Yes or No.',               # NaturalBench's SUFFIX_FOR_VQA, appended as is
             'multiple_choice': 'Please output the letter corresponding to the correct option.'}
CIRCULAR = 1_000_000  # VLMEvalKit: pass k of question i has index i + k * 1e6


# -----------------------------------------------------------------------------
# files: read with errors that name the path and what was expected; write atomically

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
            doc = json.loads(text)
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


def write_atomic(path, text_or_image):
    """Text, or a (3, h, w) image in [0, 1] as an 8-bit PNG, to tmp then os.replace: never a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if isinstance(text_or_image, str):
        with open(f"{path}.tmp", 'w', encoding='utf-8') as f:
            f.write(text_or_image)
    else:
        array = (text_or_image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        Image.fromarray(array).save(f"{path}.tmp", format='PNG')
    os.replace(f"{path}.tmp", path)


def write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False) + '\n')  # serialised first: fails before writing


# -----------------------------------------------------------------------------
# images

def image_source(value, base_dir, where):
    """An image as the released files hold it -> a path or bytes: an HF image dict {'bytes', 'path'}, a path relative
    to the data file, or base64 text (MMBench's TSV)."""
    if isinstance(value, dict):
        value = value.get('bytes') or value.get('path')
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and len(value) < 4096 and os.path.isfile(os.path.join(base_dir, value)):
        return os.path.join(base_dir, value)
    try:
        if isinstance(value, str) and value:
            return base64.b64decode(value, validate=True)
    except ValueError:
        pass
    raise ValueError(f"{where}: expected an image (a path, base64 text or HF image dict), got {str(value)[:80]!r}")


def load_image(source, size):
    """A path or bytes -> (3, size, size) in [0, 1]: padded to a square with grey (as Janus's processor pads, keeping
    the aspect ratio), then resized bicubic."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source).convert('RGB')
    w, h = img.size
    square = Image.new('RGB', (max(w, h),) * 2, (127, 127, 127))
    square.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
    array = np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
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
        names = [f"COCO_{doc.get('data_subtype', '')}_{q['image_id']:012d}.jpg", f"{q['image_id']:012d}.jpg"]
        path = next((p for p in (os.path.join(images, n) for n in names) if os.path.isfile(p)), None) if images \
            else None
        missing += [names[0]] if path is None and images else []
        items.append(dict(id=q['question_id'], prompt=q['question'] + SHORT, image=path))
        if annotations and q['question_id'] not in truth:
            raise ValueError(f"{annotations!r} has no annotation for question_id {q['question_id']}")
        if annotations:
            a = truth[q['question_id']]
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
        items += [dict(id=f"{r.get('Index', k)}_q{q}_i{i}", prompt=r[f'Question_{q}'] + NB_SUFFIX[kind], kind=kind,
                       image=images[i], label=str(r[f'Image_{i}_Question_{q}'])) for q in (0, 1) for i in (0, 1)]
    return items


def load_mmbench(path):
    """MMBench: the official TSV (index, question, hint, A-D, answer, category, base64 image, where an image of <= 64
    characters names the row holding it). Rows with index >= 1e6 (circular passes) are used as they are; else each
    question is asked once per rotation of its options (ABCD, BCDA, ...) with ids index + shift * 1e6."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} not found; expected the MMBench TSV")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding='utf-8', newline='') as f:
        rows = list(csv.DictReader(f, delimiter='\t'))
    lacking = sorted({'index', 'question', 'A', 'B', 'image'} - set(rows[0] if rows else ()))
    if lacking:
        raise ValueError(f"{path!r} lacks columns {lacking}; expected the MMBench TSV (index, question, hint, A, B, "
                         f"C, D, answer, category, image)")
    by_index, circular = {r['index']: r['image'] for r in rows}, any(float(r['index']) >= CIRCULAR for r in rows)
    items = []
    for r in rows:
        image = image_source(by_index.get(r['image'], r['image']) if len(r['image']) <= 64 else r['image'], '',
                             f"{path}: index {r['index']} image")
        options, answer = [r[c] for c in 'ABCDEFGHI' if r.get(c, '') not in ('', 'nan')], r.get('answer') or None
        hint = r['hint'] + '\n' if r.get('hint', '') not in ('', 'nan') else ''
        if answer and answer not in 'ABCDEFGHI'[:len(options)]:
            raise ValueError(f"{path!r}: index {r['index']} answer {answer!r} is not one of its {len(options)} options")
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
    if args.task in ('vqav2', 'advqa', 'pope'):
        return load_pope(args.questions, args.images) if args.task == 'pope' else \
            load_vqa(args.questions, args.images, args.annotations)
    return {'naturalbench': load_naturalbench, 'mmbench': load_mmbench, 'mmmu': load_mmmu}[args.task](args.data)


# -----------------------------------------------------------------------------
# predictions through UMM.answer, and their scores

@torch.no_grad()
def predict(umm, items, batch_size=16, max_new_tokens=16, desc='answer') -> dict:
    """{id: answer}: U's greedy answers on encode(image), in batches."""
    device, out = next(umm.parameters()).device, {}
    for s in tqdm(range(0, len(items), batch_size), desc=desc, unit='batch'):
        batch = items[s:s + batch_size]
        x = torch.stack([load_image(it['image'], umm.image_size) for it in batch]).to(device)  # (B, 3, s, s)
        answers = umm.answer(umm.encode(x), [it['prompt'] for it in batch], max_new_tokens=max_new_tokens)
        out.update((it['id'], a) for it, a in zip(batch, answers))
    return out


def write_predictions(path, items, predictions):
    write_json(path, [{'question_id': it['id'], 'answer': predictions[it['id']]} for it in items])


def read_predictions(path, items) -> dict:
    """A predictions file -> {id: answer}, checked to cover exactly the benchmark's question ids."""
    records = read(path, 'a JSON list of {"question_id", "answer"}', ('question_id', 'answer'))
    predictions, ids = {r['question_id']: r['answer'] for r in records}, [it['id'] for it in items]
    missing, extra = [i for i in ids if i not in predictions], sorted(set(predictions) - set(ids), key=str)
    if missing or extra or len(predictions) < len(records):
        raise ValueError(f"{path!r}: {len(missing)} of the benchmark's {len(ids)} question ids have no prediction "
                         f"(first: {missing[:5]}); {len(extra)} ids are not in the benchmark (first: {extra[:5]}); "
                         f"{len(records) - len(predictions)} ids repeat")
    return predictions


def score(task, items, predictions) -> dict:
    """The official metric of `task` over the items, by the scorers.py functions."""
    p = [predictions[i['id']] for i in items]
    if task in ('vqav2', 'advqa'):
        return scorers.vqa_score(dict(zip([i['id'] for i in items], p)), {i['id']: i['answers'] for i in items},
                                 {i['id']: i['answer_type'] for i in items})
    if task == 'pope':
        return scorers.pope_scores(p, [i['label'] for i in items])
    if task == 'naturalbench':
        # The official get_scores takes the truth to be the pattern yes/A, no/B, no/B, yes/A: a cell goes to it as the
        # pattern's value when right, else the other value (the same scores whenever the labels follow the pattern).
        truth = [scorers.naturalbench_extract(i['label'], i['kind']) for i in items]
        if -1 in truth:
            raise ValueError(f"NaturalBench label {items[truth.index(-1)]['label']!r} is neither yes/no nor A/B")
        want = [(1, 0, 0, 1)[k % 4] for k in range(len(items))]
        cells = [w if scorers.naturalbench_extract(a, i['kind']) == t else 1 - w
                 for a, i, t, w in zip(p, items, truth, want)]
        return {**scorers.naturalbench_scores([cells[k:k + 4] for k in range(0, len(cells), 4)]),
                'labels_off_pattern': sum(t != w for t, w in zip(truth, want))}
    if any(i['answer'] in (None, '?') for i in items):  # MMBench / MMMU test splits withhold the answers
        raise ValueError(f"this {task} file has no answers (a test split?): submit the predictions instead")
    if task == 'mmbench':
        groups = {}
        for a, i in zip(p, items):
            groups.setdefault(i['id'] % CIRCULAR, []).append((a, i['choices'], i['answer']))
        return {'circular_accuracy': scorers.mmbench_circular_accuracy(groups), 'questions': len(groups)}
    rng = random.Random(42)  # MMMU: the official parser's random fallback, seeded 42
    return {'accuracy': scorers.mmmu_accuracy([dict(
        question_type=i['kind'], answer=i['answer'], parsed_pred=scorers.parse_multi_choice_response(
            a, *scorers.mmmu_choices(i['options']), rng) if i['kind'] == 'multiple-choice'
        else scorers.parse_open_response(a)) for a, i in zip(p, items)]), 'questions': len(items)}


def consistency_score(unifiedbench, wise):
    """The paper's Consistency Score (footnote 4): 0.6 x UnifiedBench (in %) + 0.4 x (WISE x 100), WISE in [0, 1]."""
    return 0.6 * unifiedbench + 0.4 * (wise * 100)


# -----------------------------------------------------------------------------
# generation: the folder layouts GenEval's and WISE's official scorers read

@torch.no_grad()
def generate_to(umm, jobs, batch_size=8, desc='generate'):
    """jobs: (prompt, png path) pairs. PNGs already there are kept, so an interrupted run resumes."""
    jobs = [j for j in jobs if not os.path.isfile(j[1])]
    for s in tqdm(range(0, len(jobs), batch_size), desc=desc, unit='batch'):
        batch = jobs[s:s + batch_size]
        for image, (_, path) in zip(umm.generate([p for p, _ in batch]), batch):  # (B, 3, s, s)
            write_atomic(path, image)


def write_geneval(umm, metadata, outdir, samples=4, batch_size=8):
    """GenEval (djghosh13/geneval): line n of evaluation_metadata.jsonl -> OUTDIR/<n:05d>/metadata.jsonl (that one
    line; evaluate_images.py reads it with json.load) and OUTDIR/<n:05d>/samples/<k:04d>.png for k < samples."""
    records, jobs = read(metadata, "GenEval's evaluation_metadata.jsonl ({'tag', 'prompt', ...} per line)",
                         ('prompt',)), []
    for n, record in enumerate(records):
        folder = os.path.join(outdir, f"{n:05d}")
        os.makedirs(os.path.join(folder, 'samples'), exist_ok=True)
        write_atomic(os.path.join(folder, 'metadata.jsonl'), json.dumps(record) + '\n')
        jobs += [(record['prompt'], os.path.join(folder, 'samples', f"{k:04d}.png")) for k in range(samples)]
    generate_to(umm, jobs, batch_size, 'geneval')


def write_wise(umm, prompt_files, outdir, batch_size=8):
    """WISE (PKU-YuanGroup/WISE): the prompts of its data/*.json ([{'prompt_id', 'Prompt', ...}]) ->
    OUTDIR/<prompt_id>.png, the names its gpt_eval.py looks up in --image_dir."""
    records = [r for f in prompt_files for r in read(f, "WISE's prompt JSON [{'prompt_id', 'Prompt'}]",
                                                     ('prompt_id', 'Prompt'))]
    if len({r['prompt_id'] for r in records}) < len(records):
        raise ValueError(f"a prompt_id repeats across {prompt_files}: each image is named by its prompt_id")
    os.makedirs(outdir, exist_ok=True)
    generate_to(umm, [(r['Prompt'], os.path.join(outdir, f"{r['prompt_id']}.png")) for r in records], batch_size,
                'wise')


# -----------------------------------------------------------------------------
# UnifiedBench protocol 1: caption -> regenerate -> image-image cosine by CLIP, SigLIP, DINOv2, averaged

class HFImageEncoder(torch.nn.Module):
    """SigLIP or DINOv2 from transformers: images in [0, 1] resized to `size` (no crop), normalised, then the tower's
    pooler_output (SigLIP: its attention-pool head; DINOv2: the layer-normed CLS token), unit length."""

    def __init__(self, model, size, mean, std):
        super().__init__()
        self.tower, self.size = getattr(model, 'vision_model', model), size
        self.register_buffer('mean', torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def embed(self, images):  # (B, 3, h, w) -> (B, D)
        x = F.interpolate(images.float(), size=(self.size, self.size), mode='bicubic', antialias=True).clamp(0, 1)
        x = ((x - self.mean) / self.std).to(next(self.tower.parameters()).dtype)
        return F.normalize(self.tower(pixel_values=x).pooler_output.float(), dim=-1)

    def image_image_similarity(self, a, b):  # (B,) cosines, as buffer.Judge has it
        return (self.embed(a) * self.embed(b)).sum(-1)


def load_encoder(kind, where):
    """'clip': open_clip MODEL:LOCAL_FILE or local-dir:DIR (buffer.Judge); 'siglip' / 'dino': a transformers DIR."""
    if kind == 'clip':
        from buffer import Judge
        try:
            return Judge.from_pretrained(where).eval()
        except FileNotFoundError as e:  # names the file and what to pass; here, under which flag
            raise FileNotFoundError(f"--clip: {e}") from None
    if not os.path.isdir(where):
        example = {'siglip': '/data/siglip-so400m-patch14-384', 'dino': '/data/dinov2-base'}[kind]
        raise FileNotFoundError(f"{kind} weights not found at {where!r}: pass --{kind} DIR (e.g. {example}), "
                                f"downloaded on a machine with network and copied here")
    from transformers import AutoModel
    net = AutoModel.from_pretrained(where, local_files_only=True)
    size = getattr(getattr(net.config, 'vision_config', net.config), 'image_size', 224) if kind == 'siglip' else 224
    norm = ((0.5,) * 3, (0.5,) * 3) if kind == 'siglip' else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return HFImageEncoder(net, size, *norm).eval()  # DINOv2 at its processor's 224 crop size; ImageNet mean/std


@torch.no_grad()
def unified_scores(originals, regenerated, encoders: dict) -> dict:
    """Per encoder the mean cosine of original vs regenerated image in %, and their 'mean'."""
    out = {k: 100 * e.image_image_similarity(regenerated, originals).mean().item() for k, e in encoders.items()}
    return {**out, 'mean': sum(out.values()) / len(out)}


@torch.no_grad()
def unifiedbench(umm, image_dir, encoders, batch_size=8, keep=None):
    """Caption each image of image_dir with U, regenerate it with G from the caption, and score; `keep`: a dir for
    the regenerated PNGs."""
    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(('.png', '.jpg', '.jpeg', '.webp')))
    if not names:
        raise FileNotFoundError(f"--images {image_dir!r} holds no .png/.jpg/.jpeg/.webp images")
    device, x, x_hat, captions = next(umm.parameters()).device, [], [], []
    for s in tqdm(range(0, len(names), batch_size), desc='unifiedbench', unit='batch'):
        x.append(torch.stack([load_image(os.path.join(image_dir, n), umm.image_size) for n in names[s:s + batch_size]]))
        captions += umm.caption(x[-1].to(device))
        x_hat.append(umm.generate(captions[-len(x[-1]):]).float().cpu())  # (B, 3, s, s)
    x, x_hat = torch.cat(x), torch.cat(x_hat)
    for n, image in zip(names if keep else [], x_hat):
        write_atomic(os.path.join(keep, os.path.splitext(n)[0] + '.png'), image)
    return {**unified_scores(x, x_hat, encoders), 'captions': dict(zip(names, captions))}


# -----------------------------------------------------------------------------
# command line

NEEDS = dict(vqav2='questions images', advqa='questions images', pope='questions images', naturalbench='data',
             mmbench='data', mmmu='data', geneval='prompts outdir', wise='prompts outdir', unifiedbench='images out')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('task', choices=list(NEEDS), help='the benchmark (or image layout) to run')
    # data
    p.add_argument('--questions', help='vqav2/advqa: the questions JSON; pope: its JSON lines file')
    p.add_argument('--annotations', help='vqav2/advqa: the annotations JSON, to score (test-dev has none)')
    p.add_argument('--images', help='vqav2/advqa/pope: the COCO image dir; unifiedbench: the source images')
    p.add_argument('--data', help='naturalbench/mmmu: a .json/.jsonl/.parquet export of the HF dataset; mmbench: TSV')
    p.add_argument('--prompts', nargs='+', help='geneval: evaluation_metadata.jsonl; wise: its data/*.json files')
    # model
    p.add_argument('--backbone', default='janus-pro-7b', help='registry name, hub id or local dir (see model.py)')
    p.add_argument('--ckpt', default=None, help='a train.py run dir (or pretrain dir), used instead of --backbone')
    p.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'), help='Janus weight dtype')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='cpu or cuda')
    p.add_argument('--batch-size', type=int, default=16, help='questions or images per forward pass')
    p.add_argument('--max-new-tokens', type=int, default=16, help='cap on greedy answer length, tokens')
    p.add_argument('--seed', type=int, default=0, help='torch seed (sampled generation)')
    # output
    p.add_argument('--out', default=None, help='the predictions JSON to write (scores: OUT_scores.json); '
                                               'unifiedbench: the scores JSON')
    p.add_argument('--score', default=None, help='score this existing predictions JSON; no model is loaded')
    p.add_argument('--outdir', default=None, help='geneval/wise: the image folder to write (resumes)')
    p.add_argument('--samples', type=int, default=4, help='geneval: images per prompt (GenEval uses 4)')
    # consistency encoders (unifiedbench): one or more
    p.add_argument('--clip', default=None, help='open_clip MODEL:LOCAL_FILE, e.g. ViT-L-14:/data/vit_l14.bin')
    p.add_argument('--siglip', default=None, help='local dir of a transformers SigLIP checkpoint')
    p.add_argument('--dino', default=None, help='local dir of a transformers DINOv2 checkpoint')
    p.add_argument('--wise', type=float, default=None, help='WISE overall in [0, 1]: adds the Consistency Score')
    args = p.parse_args(argv)
    needs = NEEDS[args.task].split() + (['out'] if args.task in UNDERSTANDING and not args.score else [])
    needs = [n for n in needs if not (args.score and n == 'images')]  # re-scoring reads no image
    lacking = [f"--{n}" for n in needs if getattr(args, n) is None]
    if args.task == 'unifiedbench' and not (args.clip or args.siglip or args.dino):
        lacking.append('one of --clip, --siglip, --dino')
    if lacking:
        p.error(f"{args.task} needs {', '.join(lacking)}")
    return args


def build_umm(args):
    import evaluate
    import model
    umm = evaluate.load_checkpoint(args.ckpt)[0] if args.ckpt else \
        model.load_backbone(args.backbone, dtype=getattr(torch, args.dtype))
    return umm.to(args.device).eval()


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    print(json.dumps(vars(args)))
    if args.task in ('geneval', 'wise'):
        umm = build_umm(args)
        write_geneval(umm, args.prompts[0], args.outdir, args.samples, args.batch_size) if args.task == 'geneval' \
            else write_wise(umm, args.prompts, args.outdir, args.batch_size)
        return print(f"wrote the {args.task} images to {args.outdir}")
    if args.task == 'unifiedbench':
        encoders = {k: load_encoder(k, getattr(args, k)).to(args.device)  # a missing file fails before the model loads
                    for k in ('clip', 'siglip', 'dino') if getattr(args, k)}
        result = unifiedbench(build_umm(args), args.images, encoders, args.batch_size, os.path.splitext(args.out)[0])
        if args.wise is not None:
            result['consistency_score'] = consistency_score(result['mean'], args.wise)
        path = args.out
    else:
        items = load_items(args)
        if args.score:
            predictions = read_predictions(args.score, items)
        else:
            predictions = predict(build_umm(args), items, args.batch_size, args.max_new_tokens, args.task)
            write_predictions(args.out, items, predictions)
            print(f"wrote {len(predictions)} predictions to {args.out}")
        if args.task in ('vqav2', 'advqa') and not args.annotations:
            return print('no --annotations: predictions only (for the evaluation server)')
        path = os.path.splitext(args.score or args.out)[0] + '_scores.json'
        result = score(args.task, items, predictions)
    write_json(path, result)
    print(json.dumps({k: v for k, v in result.items() if k != 'captions'}, indent=1), f"\nwrote {path}")


if __name__ == '__main__':
    main()
