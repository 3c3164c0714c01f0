"""
The paper's real benchmarks from local files in their released formats (read by benchdata.py): predictions through
UMM.answer, scores by scorers.py and mmmu.py; image folders for GenEval's and WISE's official scorers; the
UnifiedBench consistency encoders.

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
import json
import os
import random

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import benchdata
import mmmu
import model
import scorers

UNDERSTANDING = ('vqav2', 'advqa', 'pope', 'naturalbench', 'mmbench', 'mmmu')


# -----------------------------------------------------------------------------
# files: written atomically (benchdata.read reads them back)

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
# predictions through UMM.answer, and their scores

@torch.no_grad()
def predict(umm, items, batch_size=16, max_new_tokens=16, desc='answer') -> dict:
    """{id: answer}: U's greedy answers on encode(image), in batches."""
    device, out = next(umm.parameters()).device, {}
    for s in tqdm(range(0, len(items), batch_size), desc=desc, unit='batch'):
        batch = items[s:s + batch_size]
        x = torch.stack([benchdata.load_image(it['image'], umm.image_size) for it in batch]).to(device)  # (B, 3, s, s)
        answers = umm.answer(umm.encode(x), [it['prompt'] for it in batch], max_new_tokens=max_new_tokens)
        out.update((it['id'], a) for it, a in zip(batch, answers))
    return out


def write_predictions(path, items, predictions):
    write_json(path, [{'question_id': it['id'], 'answer': predictions[it['id']]} for it in items])


def read_predictions(path, items) -> dict:
    """A predictions file -> {id: answer}, checked to cover exactly the benchmark's question ids."""
    records = benchdata.read(path, 'a JSON list of {"question_id", "answer"}', ('question_id', 'answer'))
    predictions, ids = {r['question_id']: r['answer'] for r in records}, [it['id'] for it in items]
    missing, extra = [i for i in ids if i not in predictions], sorted(set(predictions) - set(ids), key=str)
    if missing or extra or len(predictions) < len(records):
        raise ValueError(f"{path!r}: {len(missing)} of the benchmark's {len(ids)} question ids have no prediction "
                         f"(first: {missing[:5]}); {len(extra)} ids are not in the benchmark (first: {extra[:5]}); "
                         f"{len(records) - len(predictions)} ids repeat")
    return predictions


def score(task, items, predictions) -> dict:
    """The official metric of `task` over the items, by the scorers.py functions (MMMU: mmmu.py)."""
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
            groups.setdefault(i['id'] % benchdata.CIRCULAR, []).append((a, i['choices'], i['answer']))
        return {'circular_accuracy': scorers.mmbench_circular_accuracy(groups), 'questions': len(groups)}
    rng = random.Random(42)  # MMMU: the official parser's random fallback, seeded 42
    return {'accuracy': mmmu.mmmu_accuracy([dict(
        question_type=i['kind'], answer=i['answer'], parsed_pred=mmmu.parse_multi_choice_response(
            a, *mmmu.mmmu_choices(i['options']), rng) if i['kind'] == 'multiple-choice'
        else mmmu.parse_open_response(a)) for a, i in zip(p, items)]), 'questions': len(items)}


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
    records, jobs = benchdata.read(metadata, "GenEval's evaluation_metadata.jsonl ({'tag', 'prompt', ...} per line)",
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
    records = [r for f in prompt_files for r in benchdata.read(f, "WISE's prompt JSON [{'prompt_id', 'Prompt'}]",
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

    def image_image_similarity(self, a, b):  # (B,) cosines, as judge.Judge has it
        return (self.embed(a) * self.embed(b)).sum(-1)


def load_encoder(kind, where):
    """'clip': open_clip MODEL:LOCAL_FILE or local-dir:DIR (judge.Judge); 'siglip' / 'dino': a transformers DIR."""
    if kind == 'clip':
        from judge import Judge
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
        x.append(torch.stack([benchdata.load_image(os.path.join(image_dir, n), umm.image_size)
                              for n in names[s:s + batch_size]]))  # (B, 3, s, s)
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
    import backbones
    import evaluate
    umm = evaluate.load_checkpoint(args.ckpt)[0] if args.ckpt else \
        backbones.load_backbone(args.backbone, dtype=getattr(torch, args.dtype))
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
        items = benchdata.load_items(args)
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
    try:
        main()
    except (FileNotFoundError, ValueError, model.MissingWeights) as e:  # a missing or malformed file, absent weights:
        raise SystemExit(f"benchmarks.py: {e}")                         # one message naming it, not a traceback
