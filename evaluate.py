"""
Measurement: how well a UMM answers, on clean data, under OOD shifts, and on its own re-generations.

    python evaluate.py --ckpt out/base            # the toy suite for a checkpoint (more of it lands with issue 6)
"""

import argparse
import json
import os
from collections import defaultdict

import torch

import data


@torch.no_grad()
def accuracy(umm, dataset, batch_size=256, transform=None) -> dict:
    """Exact-match accuracy of greedy answers, overall and per question family. `transform` maps the images first
    (e.g. x -> G(Enc(x)) for re-reading)."""
    was_training = umm.training
    umm.eval()
    right, total = defaultdict(int), defaultdict(int)
    for start in range(0, len(dataset), batch_size):
        batch = data.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        images = batch['images'] if transform is None else transform(batch['images'])
        predictions = umm.answer(umm.encode(images), batch['questions'])
        for p, a, t in zip(predictions, batch['answers'], batch['qtypes']):
            for key in ('all', t):
                right[key] += p == a
                total[key] += 1
    umm.train(was_training)
    return {k: right[k] / total[k] for k in total}


def base_vs_trained(umm, size, label='trained') -> dict:
    """Val accuracy, clean and under each OOD shift, with and without the LoRA adapter (the same base weights);
    prints a table and returns {'base': {...}, 'trained': {...}}."""
    sets = {'clean': data.ShapesVQA('val', size), **{s: data.ShapesVQA('val', size, shift=s) for s in data.SHIFTS}}
    trained = {k: accuracy(umm, v)['all'] for k, v in sets.items()}
    with umm.lm.disable_adapter():  # peft: the base model, adapters off
        base = {k: accuracy(umm, v)['all'] for k, v in sets.items()}
    print(f"\nval accuracy ({size} questions each)\n{'':14}{'base':>8}{label:>10}{'diff':>8}")
    for k in sets:
        print(f"{k:14}{base[k]:8.3f}{trained[k]:10.3f}{trained[k] - base[k]:+8.3f}")
    return {'base': base, 'trained': trained}


@torch.no_grad()
def t2i_ranking(umm, judge, dataset, batch_size=256) -> float:
    """Share of captions whose text-to-image picture the judge finds closer to the captioned scene than to another
    scene (the next one in the split, which is a random draw): image-image cosine in the judge's embedding."""
    wins = []
    for start in range(0, len(dataset), batch_size):
        batch = data.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        generated, x = umm.generate(batch['captions']), batch['images']
        wins.append(judge.image_image_similarity(generated, x) > judge.image_image_similarity(generated, x.roll(1, 0)))
    return torch.cat(wins).float().mean().item()


@torch.no_grad()
def save_reconstructions(umm, dataset, path, n=8, scale=4):
    """A picture: n originals (top row) over their reconstructions G(Enc(x)) (middle) and T2I from their captions
    (bottom), each scaled up `scale` times."""
    from PIL import Image
    batch = data.collate([dataset[i] for i in range(n)])
    x = batch['images']
    rows = [x, umm.render(umm.encode(x)), umm.generate(batch['captions'])]
    grid = torch.cat([torch.cat(list(r.clamp(0, 1)), 2) for r in rows], 1)          # (3, 3 s, n s)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype('uint8')
    Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST).save(path)


def majority_baseline(train, test) -> dict:
    """Accuracy of always answering the most common train answer of the question's family."""
    answers = defaultdict(lambda: defaultdict(int))
    for a, t in zip(train.answers, train.qtypes):
        answers[t][a] += 1
    top = {t: max(c, key=c.get) for t, c in answers.items()}
    right, total = defaultdict(int), defaultdict(int)
    for a, t in zip(test.answers, test.qtypes):
        for key in ('all', t):
            right[key] += top[t] == a
            total[key] += 1
    return {k: right[k] / total[k] for k in total}


def step_cost(run_dirs) -> dict:
    """Mean `step_time` of each run's metrics.jsonl (the first line, step 0, is warm-up and left out), and its ratio
    to the first run's: `python evaluate.py --step-cost out/cost_sft out/cost_unigame`."""
    means = {}
    for d in run_dirs:
        with open(os.path.join(d, 'metrics.jsonl')) as f:
            rows = [json.loads(line) for line in f][1:]
        if not rows:
            raise ValueError(f"{d}/metrics.jsonl has no line after step 0; run more steps")
        means[d] = sum(r['step_time'] for r in rows) / len(rows)
    first = means[run_dirs[0]]
    for d, m in means.items():
        print(f"{d:40} {1000 * m:8.1f} ms/step {m / first:6.2f}x")
    return means


if __name__ == '__main__':
    import model
    parser = argparse.ArgumentParser(description='Evaluate tiny-toy checkpoints on the synthetic shapes suite.')
    parser.add_argument('--ckpt', help='a pretrain output dir (holding base.pt)')
    parser.add_argument('--step-cost', nargs='+', metavar='RUN_DIR',
                        help='instead: mean step time of train.py runs, and each one relative to the first')
    parser.add_argument('--split', default='test', choices=list(data.SPLITS), help='which split to score')
    parser.add_argument('--size', type=int, default=2000, help='questions per split and per shift')
    parser.add_argument('--picture', default=None,
                        help='save originals over reconstructions over T2I(caption) to this PNG')
    args = parser.parse_args()
    if args.step_cost:
        step_cost(args.step_cost)
        raise SystemExit(0)
    if not args.ckpt:
        parser.error('--ckpt is required (or --step-cost RUN_DIR ...)')
    umm = model.load_backbone('tiny-toy', init=args.ckpt)
    clean = data.ShapesVQA(args.split, args.size)
    result = {'clean': accuracy(umm, clean),
              'majority': majority_baseline(data.ShapesVQA('train', 20000), clean),
              'reread': accuracy(umm, clean, transform=lambda x: umm.render(umm.encode(x)))}
    judge_path = os.path.join(args.ckpt, 'judge.pt')
    if os.path.isfile(judge_path):
        from buffer import Judge
        result['t2i_ranking'] = t2i_ranking(umm, Judge.load(judge_path), clean)
    if args.picture:
        save_reconstructions(umm, clean, args.picture)
        print(f"wrote {args.picture}: originals / reconstructions / T2I from their captions")
    for shift in data.SHIFTS:
        result[shift] = accuracy(umm, data.ShapesVQA(args.split, args.size, shift=shift))['all']
    print(json.dumps(result, indent=1))
