"""
Measurement: how well a UMM answers, on clean data, under OOD shifts, under attack, and on its own re-generations.

    python evaluate.py --ckpt out/base --ckpt out/sft --ckpt out/unigame --json out/suite.json   # the toy suite
    python evaluate.py --plot out/unigame          # plots.py: eps, L_U vs L_C, buffer curves, a gallery -> plots/
    python evaluate.py --step-cost out/cost_sft out/cost_unigame      # plots.py: step time relative to the first

A --ckpt DIR is a pretrain base (base.pt) or a train.py run (config.json + adapter/). Per model the suite reports
test accuracy (overall and per question family), each OOD shift, NaturalBench-style Q/I/G-Acc, PGD accuracy on
pixels, the re-reading of G(Enc(x)), the T2I judge ranking and the caption -> regenerate consistency, side by side.
Two tiny-toy checkpoints at the default sizes take about 2 minutes on 2 CPU cores (110 s measured, machine idle).
"""

import argparse
import json
import os
import signal
import sys
import time
from collections import defaultdict
from fractions import Fraction

if __name__ == '__main__':  # Ctrl-C, while torch imports or later: one line and 130, never a traceback
    def interrupted(*_):
        print("\nevaluate.py: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130)
    signal.signal(signal.SIGINT, interrupted)

import numpy as np  # noqa: E402 (after the handler: importing torch takes seconds)
import torch
import torch.nn.functional as F

import data
import naturalgroups
import scorers


def _ordered(right, total) -> dict:
    """Shares right / total keyed 'all' first, then the question families in data.QTYPES order."""
    return {k: right[k] / total[k] for k in sorted(total, key=lambda k: ('all', *data.QTYPES).index(k))}


def _batches(dataset, batch_size, device='cpu'):
    """Collated batches with the images on `device`: the model's (or the judge's), which need not be the CPU."""
    for start in range(0, len(dataset), batch_size):
        b = data.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        yield {**b, 'images': b['images'].to(device)}


@torch.no_grad()
def accuracy(umm, dataset, batch_size=256, transform=None) -> dict:
    """Exact-match accuracy of greedy answers, overall and per question family. `transform` maps the images first
    (e.g. x -> G(Enc(x)) for re-reading)."""
    was_training = umm.training
    umm.eval()
    right, total = defaultdict(int), defaultdict(int)
    for batch in _batches(dataset, batch_size, umm.device):
        images = batch['images'] if transform is None else transform(batch['images'])   # (B, 3, s, s)
        predictions = umm.answer(umm.encode(images), batch['questions'])                 # z (B, N, H) -> B strings
        for p, a, t in zip(predictions, batch['answers'], batch['qtypes']):
            for key in ('all', t):
                right[key] += p == a  # exact match: the toy's answers are single words of data.ANSWERS
                total[key] += 1
    umm.train(was_training)
    return _ordered(right, total)


def wrong(umm, z, questions, answers, chunks=lambda n: [slice(0, n)]) -> list:
    """Which of U's greedy answers to z (B, N, H) are wrong, free-form answers compared after VQA normalisation: a list
    of bool. `chunks(n)` gives the row slices of each pass (train.py's micro-batches)."""
    predictions = [p for r in chunks(len(questions)) for p in umm.answer(z[r], questions[r])]
    return [scorers.normalize_answer(p) != scorers.normalize_answer(t) for p, t in zip(predictions, answers)]


def base_vs_trained(umm, size, label='trained') -> dict:
    """Val accuracy, clean and under each OOD shift, with and without the LoRA adapter (the same base weights);
    prints a table and returns {'base': {...}, 'trained': {...}}."""
    sets = {'clean': data.ShapesVQA('val', size), **{s: data.ShapesVQA('val', size, shift=s) for s in data.SHIFTS}}
    trained = {k: accuracy(umm, v)['all'] for k, v in sets.items()}  # 1 + 4 shifts sets, each scored twice
    with umm.lm.disable_adapter():  # peft: the base model, adapters off
        base = {k: accuracy(umm, v)['all'] for k, v in sets.items()}
    print(f"\nval accuracy ({size} questions each)\n{'':14}{'base':>8}{label:>10}{'diff':>8}")
    for k in sets:
        print(f"{k:14}{base[k]:8.3f}{trained[k]:10.3f}{trained[k] - base[k]:+8.3f}")
    return {'base': base, 'trained': trained}


# -----------------------------------------------------------------------------
# robustness: PGD on pixels against U, and NaturalBench-style groups

def pgd_attack(umm, images, questions, answers, eps=4 / 255, steps=10, step_size=1 / 255):
    """L-inf PGD (Madry et al., no random start, so it is deterministic) on the pixels: `steps` signed-gradient ascent
    steps of `step_size` on the per-sample understand_loss through encode, projected on the eps-ball around `images`
    and on [0, 1]. Call with the model in eval mode (LoRA dropout off). Returns (B, 3, s, s)."""
    x_adv = images.clone()                                                      # (B, 3, s, s), starts at x itself
    with torch.enable_grad():
        # cost: a step is a forward and a backward (about two forwards) through Enc and U: ~30 forwards at steps=10
        for _ in range(steps if eps > 0 else 0):
            x_adv.requires_grad_(True)
            # the sum of per-sample losses: samples do not interact, so each image gets its own sample's gradient
            loss = umm.understand_loss(umm.encode(x_adv), questions, answers).sum()
            grad, = torch.autograd.grad(loss, x_adv)                                # no weight gradients kept
            # L-inf steepest ascent: every pixel moves by exactly step_size (1/255 by default) up or down
            x_adv = x_adv.detach() + step_size * grad.sign()
            # projection: |x_adv - x| <= eps per pixel (4/255 is 4 steps of 1/255 away), then the valid range [0, 1]
            x_adv = (images + (x_adv - images).clamp(-eps, eps)).clamp(0, 1)      # (B, 3, s, s)
    return x_adv.detach()


def pgd_accuracy(umm, dataset, eps=4 / 255, steps=10, step_size=1 / 255, batch_size=100) -> float:
    """Adversarial accuracy: the share answered right both on the clean image and after the attack. The attacker may
    always leave x unchanged, so a sample counts only if it is right on both (as AutoAttack counts it); this can never
    exceed clean accuracy, and equals it at eps = 0."""
    right = 0
    for b in _batches(dataset, batch_size, umm.device):
        x, q, a = b['images'], b['questions'], b['answers']
        x_adv = pgd_attack(umm, x, q, a, eps, steps, step_size)                  # (B, 3, s, s)
        with torch.no_grad():  # two greedy answers per sample on top of the attack's `steps` forward + backward passes
            clean, attacked = umm.answer(umm.encode(x), q), umm.answer(umm.encode(x_adv), q)
        right += sum(c == t and d == t for c, d, t in zip(clean, attacked, a))  # right before AND after the attack
    return right / len(dataset)


@torch.no_grad()
def natural_scores(umm, groups, batch_size=256) -> dict:
    """NaturalBench's Acc, Q-Acc, I-Acc and G-Acc on naturalgroups.NaturalGroups, by scorers.naturalbench_extract and
    naturalbench_scores. The official scorer takes the right answers to be the fixed pattern q0_i0 yes, q0_i1 no,
    q1_i0 no, q1_i1 yes; ours vary (a swapped pair can start from 'no'), so each cell goes to the scorer as the
    pattern's value when the answer is right and as the opposite when it is wrong (or neither yes nor no)."""
    images, questions, truth = [], [], []
    for g in groups:
        for q in range(2):              # cells in the scorer's order: q0_i0, q0_i1, q1_i0, q1_i1
            for i in range(2):
                images.append(g['images'][i])
                questions.append(g['questions'][q])
                truth.append(int(g['answers'][i][q] == 'yes'))  # the extractor's coding: 1 yes, 0 no
    predictions = []  # 4 greedy answers per group: 1000 groups are 4000 answers
    for s in range(0, len(images), batch_size):
        x = torch.stack(images[s:s + batch_size]).to(umm.device)                 # (b, 3, h, w) on the model's device
        predictions += umm.answer(umm.encode(x), questions[s:s + batch_size])
    pattern = (1, 0, 0, 1)  # the right answers get_scores assumes: q0_i0 yes, q0_i1 no, q1_i0 no, q1_i1 yes
    cells = [pattern[k % 4] if scorers.naturalbench_extract(p) == t else 1 - pattern[k % 4]
             for k, (p, t) in enumerate(zip(predictions, truth))]
    # Q-Acc: a question right on both images; I-Acc: an image right on both questions; G-Acc: all four cells right.
    # The answers flip across the two images, so answering from the question alone scores Q-Acc = G-Acc = 0.
    return scorers.naturalbench_scores([cells[k:k + 4] for k in range(0, len(cells), 4)])   # groups of 4 cells


# -----------------------------------------------------------------------------
# generation: consistency, T2I ranking, the reconstruction picture

@torch.no_grad()
def consistency(umm, dataset, judge=None, batch_size=250) -> dict:
    """UnifiedBench protocol 1 on the toy: caption each image x with U, regenerate x^ = G(caption), and compare x^
    with x by every image encoder at hand: the toy's judge (CLIP image-image cosine) and the UMM's own encoder
    (cosine of the mean-pooled z), then their mean. Also the share of captions that are exactly right (U's half)."""
    sims, exact = defaultdict(list), 0
    for b in _batches(dataset, batch_size, umm.device):
        x = b['images']                                                           # (B, 3, s, s)
        # on the toy the costly half: up to 48 greedy tokens per caption, each a full LM pass (no KV cache)
        captions = umm.caption(x)
        x_hat = umm.generate(captions)                                            # (B, 3, s, s)
        exact += sum(c == t for c, t in zip(captions, b['captions']))
        z, z_hat = (umm.encode(v).float().mean(1).flatten(1) for v in (x, x_hat))  # (B, N, H) -> mean over N (B, H)
        sims['encoder'].append(F.cosine_similarity(z, z_hat, dim=-1))             # (B,)
        if judge is not None:  # UnifiedBench's encoders are CLIP, SigLIP and DINO (benchmarks.py); here the toy's CLIP
            sims['judge'].append(judge.image_image_similarity(x_hat, x))          # (B,)
    out = {k: torch.cat(v).mean().item() for k, v in sims.items()}
    out['mean'] = sum(out.values()) / len(out)  # an unweighted mean over the encoders at hand (1 or 2)
    return {**out, 'caption_exact': exact / len(dataset)}


@torch.no_grad()
def t2i_ranking(umm, judge, dataset, batch_size=256) -> float:
    """Share of captions whose text-to-image picture the judge finds closer to the captioned scene than to another
    scene (the previous one in the batch, which is a random draw): image-image cosine in the judge's embedding."""
    wins = []
    for batch in _batches(dataset, batch_size, umm.device):
        generated, x = umm.generate(batch['captions']), batch['images']          # (B, 3, s, s) each
        # x.roll(1, 0)[i] is x[i - 1], another random scene: a win is judging G(caption_i) nearer x_i than it
        wins.append(judge.image_image_similarity(generated, x) > judge.image_image_similarity(generated, x.roll(1, 0)))
    return torch.cat(wins).float().mean().item()


@torch.no_grad()
def edit_ranking(judge, dataset, batch_size=256, seed=0) -> float:
    """Share of images the judge finds closer to their own caption than to the caption with one shape or colour word
    changed (data.hard_negative, drawn from `seed`): how well the buffer's filter can see a label-breaking edit."""
    rng, wins = np.random.default_rng(seed), []
    for batch in _batches(dataset, batch_size, judge.device):
        x, captions = batch['images'], batch['captions']
        edits = [data.hard_negative(c, rng) for c in captions]  # one shape or colour word changed: no longer the scene
        wins.append(judge.image_text_similarity(x, captions) > judge.image_text_similarity(x, edits))
    return torch.cat(wins).float().mean().item()


@torch.no_grad()
def save_reconstructions(umm, dataset, path, n=8, scale=4):
    """A picture: n originals (top row) over their reconstructions G(Enc(x)) (middle) and T2I from their captions
    (bottom), each scaled up `scale` times."""
    from PIL import Image
    batch = next(_batches(dataset, n, umm.device))
    x = batch['images']
    rows = [x, umm.render(umm.encode(x)), umm.generate(batch['captions'])]   # 3 x (n, 3, s, s)
    grid = torch.cat([torch.cat(list(r.clamp(0, 1).cpu()), 2) for r in rows], 1)    # (3, 3 s, n s)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype('uint8')         # (3 s, n s, 3) for PIL
    Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST).save(path)


def majority_baseline(train, test) -> dict:
    """Accuracy of always answering the most common train answer of the question's family."""
    answers = defaultdict(lambda: defaultdict(int))
    for a, t in zip(train.answers, train.qtypes):
        answers[t][a] += 1
    top = {t: max(c, key=c.get) for t, c in answers.items()}  # per family: the answer prior an image-blind model learns
    right, total = defaultdict(int), defaultdict(int)
    for a, t in zip(test.answers, test.qtypes):
        for key in ('all', t):
            right[key] += top[t] == a
            total[key] += 1
    return _ordered(right, total)


# -----------------------------------------------------------------------------
# the suite over checkpoints

def checkpoint_kind(path) -> str:
    """'base' for a pretrain dir (base.pt), 'run' for a train.py run (config.json + adapter/); else it fails naming
    the path and what was expected."""
    if os.path.isfile(os.path.join(path, 'base.pt')):
        return 'base'
    if os.path.isfile(os.path.join(path, 'config.json')) and os.path.isdir(os.path.join(path, 'adapter')):
        return 'run'
    found = f"it holds {sorted(os.listdir(path))[:8]}" if os.path.isdir(path) else "it does not exist"
    raise FileNotFoundError(f"--ckpt {path!r}: expected a pretrain dir holding base.pt or a train.py run dir "
                            f"holding config.json and adapter/; {found}")


def load_checkpoint(path):
    """A --ckpt DIR -> (UMM in eval mode, its judge or None). A run's base comes from its config['init'], gets LoRA
    with the run's flags, then the run's adapter. The judge is DIR/judge.pt, else the base's judge.pt."""
    import backbones
    import model
    from judge import Judge
    base = path
    if checkpoint_kind(path) == 'base':
        umm = backbones.load_backbone('tiny-toy', init=path)
    else:
        with open(os.path.join(path, 'config.json')) as f:
            config = json.load(f)
        base = config.get('init') or None
        umm = backbones.load_backbone(config['backbone'], init=base, decoder=config.get('decoder', 'vae'))
        targets = model.lora_targets(config.get('lora_targets', ','.join(model.LORA_TARGETS)))
        umm.add_lora(r=config['lora_r'], alpha=config['lora_alpha'], dropout=config['lora_dropout'], targets=targets)
        umm.load_trainable(os.path.join(path, 'adapter'))  # the peft adapter train.py saved; the base stays as loaded
    judges = [p for p in (os.path.join(path, 'judge.pt'), base and os.path.join(base, 'judge.pt')) if p]
    judge = next((Judge.load(p) for p in judges if os.path.isfile(p)), None)
    return umm.eval(), judge


def evaluate_model(umm, judge, sets, subset, attack, only=None, skip=()) -> dict:
    """Every measurement of the suite for one model (those named in `only`, if given, less those in `skip`), with
    its seconds; `sets` are built once for all models (suite_sets)."""
    # lambdas, so that each part is timed alone; pgd reads sets['pgd'] and the last three `subset` only, as pgd
    # (`steps` forward + backward passes per batch) and consistency (captions token by token) cost the most
    parts = {'clean': lambda: accuracy(umm, sets['clean']),
             'shift': lambda: {s: accuracy(umm, sets[s])['all'] for s in data.SHIFTS},
             'natural': lambda: natural_scores(umm, sets['natural']),
             'pgd': lambda: pgd_accuracy(umm, sets['pgd'], **attack),
             'reread': lambda: accuracy(umm, subset, transform=lambda x: umm.render(umm.encode(x)))['all'],
             'consistency': lambda: consistency(umm, subset, judge),
             't2i_ranking': lambda: t2i_ranking(umm, judge, subset) if judge is not None else None}
    out, seconds = {}, {}
    for name, measure in parts.items():
        if (only is not None and name not in only) or name in skip:
            continue
        t0 = time.time()
        out[name], seconds[name] = measure(), round(time.time() - t0, 1)
    return {**out, 'seconds': seconds}


def flatten(result, prefix='') -> dict:
    """{'clean': {'all': 0.7}, 'pgd': 0.2} -> {'clean all': 0.7, 'pgd': 0.2}, in insertion order."""
    rows = {}
    for k, v in result.items():
        if isinstance(v, dict):
            rows.update(flatten(v, f"{prefix}{k} "))
        else:
            rows[f"{prefix}{k}"] = v
    return rows


def print_table(columns: dict):
    """columns: label -> flat {row: value}; one row per measurement, one column per checkpoint."""
    rows = list(dict.fromkeys(r for c in columns.values() for r in c))
    widths = [max(10, len(label) + 2) for label in columns]
    print(f"{'':26}" + ''.join(f"{label:>{w}}" for label, w in zip(columns, widths)))
    for r in rows:
        cells = [columns[label].get(r) for label in columns]
        print(f"{r:26}" + ''.join(f"{'-' if v is None else f'{v:.3f}':>{w}}" for v, w in zip(cells, widths)))


def suite_sets(split, size, subset, groups, pgd_questions=None):
    """The suite's data, built once for every model: clean, each shift, NaturalBench groups, the first
    `pgd_questions` (default: `subset`) clean questions for PGD; and the first `subset` clean questions, which get
    the other costly measurements."""
    # every sample is drawn from a fixed seed per split and index (data.py): the same images in every invocation, so
    # the first n questions of a set of any size are the same n questions
    sets = {'clean': data.ShapesVQA(split, size), 'natural': naturalgroups.NaturalGroups(split, groups),
            **{s: data.ShapesVQA(split, size, shift=s) for s in data.SHIFTS}}
    n = min(subset, size) if pgd_questions is None else pgd_questions
    sets['pgd'] = torch.utils.data.Subset(sets['clean'], range(n)) if n <= size else data.ShapesVQA(split, n)
    return sets, torch.utils.data.Subset(sets['clean'], range(min(subset, size)))


def suite(ckpts, split='test', size=2000, subset=1000, groups=1000, attack=None, picture=None,
          pgd_questions=None) -> dict:
    """The toy suite on every checkpoint: prints one table (columns = checkpoints) and returns everything."""
    attack = attack or dict(eps=4 / 255, steps=10, step_size=1 / 255)  # the study's and the pgd control's radius
    for ckpt in ckpts:  # a wrong path fails now, not after the data are built and other models scored
        checkpoint_kind(ckpt)
    sets, few = suite_sets(split, size, subset, groups, pgd_questions)
    # majority: the image-blind floor, each family's most common answer among 20k train questions
    results = {'settings': dict(split=split, size=size, subset=len(few), groups=groups, attack=attack,
                                pgd_questions=len(sets['pgd'])),
               'majority': majority_baseline(data.ShapesVQA('train', 20000), sets['clean']), 'models': {}}
    for i, ckpt in enumerate(ckpts):
        t0 = time.time()
        umm, judge = load_checkpoint(ckpt)
        results['models'][ckpt] = evaluate_model(umm, judge, sets, few, attack)
        print(f"{ckpt}: {time.time() - t0:.0f}s {results['models'][ckpt]['seconds']}")
        if picture:
            stem, ext = os.path.splitext(picture)
            path = picture if len(ckpts) == 1 else f"{stem}_{i}{ext}"
            save_reconstructions(umm, sets['clean'], path)
            print(f"wrote {path}: originals / reconstructions / T2I from their captions ({ckpt})")
    print(f"\n{split} split: {size} questions (clean, each shift), {groups} NaturalBench-style groups; PGD (L-inf eps "
          f"{attack['eps']:.4f}, {attack['steps']} steps of {attack['step_size']:.4f}) on the first "
          f"{len(sets['pgd'])} questions; re-reading, consistency and T2I ranking on the first {len(few)}")
    names = [os.path.basename(os.path.normpath(c)) for c in ckpts]
    columns = {'majority': flatten({'clean': results['majority']})}
    for ckpt, name in zip(ckpts, names):  # a column per checkpoint, by folder name unless two share it
        r = results['models'][ckpt]
        columns[name if names.count(name) == 1 else ckpt] = flatten({k: v for k, v in r.items() if k != 'seconds'})
    print_table(columns)
    return results


if __name__ == '__main__':
    def fraction(s):  # '4/255' or '0.0157'
        return float(Fraction(s))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ckpt', action='append', metavar='DIR', help='a pretrain dir (base.pt) or a train.py run '
                        'dir (config.json + adapter/); repeat it for side-by-side columns')
    parser.add_argument('--plot', metavar='RUN_DIR', help='instead: PNG curves and a buffer gallery into RUN_DIR/plots')
    parser.add_argument('--step-cost', nargs='+', metavar='RUN_DIR',
                        help='instead: mean step time of train.py runs, and each one relative to the first')
    # eval
    parser.add_argument('--split', default='test', choices=list(data.SPLITS), help='which split to score')
    parser.add_argument('--size', type=int, default=2000, help='questions of the clean set and of each shift')
    parser.add_argument('--subset', type=int, default=1000,
                        help='the first N clean questions get PGD, re-reading, consistency and T2I ranking')
    parser.add_argument('--groups', type=int, default=1000, help='NaturalBench-style groups (4 answers each)')
    parser.add_argument('--pgd-questions', type=int, default=None,
                        help="PGD accuracy on the first N clean questions (default: --subset; study.py's testbed "
                             "uses 4000: fewer leave most of a seed-to-seed spread to which questions were asked)")
    parser.add_argument('--pgd-eps', type=fraction, default=4 / 255,
                        help="L-inf radius in [0, 1] pixels (4/255, the study's; train.py and study.py count in 1/255)")
    parser.add_argument('--pgd-steps', type=int, default=10, help='PGD steps (0: no attack)')
    parser.add_argument('--pgd-step-size', type=fraction, default=None, help='PGD step in pixels (default: eps/4)')
    parser.add_argument('--json', metavar='OUT.json', help='also write every number (and per-part seconds) here')
    parser.add_argument('--picture', default=None, help='save originals over reconstructions over T2I(caption) to '
                        'this PNG (PNG_<i> for the i-th of several --ckpt)')
    args = parser.parse_args()
    import plots  # --plot and --step-cost read run dirs (plots.py, above this module: it imports load_checkpoint)
    import toy_base  # for BaseError: a checkpoint over a missing or broken base
    try:
        if args.step_cost:
            plots.step_cost(args.step_cost)
        elif args.plot:
            plots.plot_run(args.plot)
        elif not args.ckpt:
            parser.error('--ckpt DIR is required (or --plot RUN_DIR, or --step-cost RUN_DIR ...)')
        else:
            if min(args.size, args.subset, args.groups) < 1 or args.pgd_steps < 0:
                parser.error('--size, --subset and --groups must be >= 1; --pgd-steps >= 0')
            if args.pgd_questions is not None and args.pgd_questions < 1:
                parser.error(f'--pgd-questions: must be >= 1, got {args.pgd_questions}')
            if not 0 <= args.pgd_eps < 1:  # 4 meant as 4/255 (train.py's unit) would be no bound at all
                parser.error(f'--pgd-eps: a radius in [0, 1) pixels such as 4/255, got {args.pgd_eps:g}')
            t0 = time.time()
            attack = dict(eps=args.pgd_eps, steps=args.pgd_steps, step_size=args.pgd_step_size or args.pgd_eps / 4)
            result = suite(args.ckpt, args.split, args.size, args.subset, args.groups, attack, args.picture,
                           args.pgd_questions)
            result['settings']['seconds'] = round(time.time() - t0, 1)
            print(f"suite: {time.time() - t0:.0f}s")
            if args.json:
                with open(args.json + '.tmp', 'w') as f:
                    json.dump(result, f, indent=1)
                os.replace(args.json + '.tmp', args.json)
                print(f"wrote {args.json}")
    except (FileNotFoundError, toy_base.BaseError) as e:  # a missing or broken file: one line naming it
        parser.exit(2, f"evaluate.py: error: {e}\n")
