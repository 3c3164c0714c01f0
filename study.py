"""
The reproduction study on CPU: does UniGame beat SFT on the toy, and does Table 4's ordering hold?

From one tiny-toy base, every run is `train.py` with the same steps, data order, batch and und_lr; only the game
differs. Beside SFT and UniGame, two positive controls with the same LoRA budget (train.py --mode pgd: U learns from
pixel-PGD images, Madry et al.; --mode augment: from a generic augmentation): unless pgd beats sft on PGD accuracy by
more than the paired 95% interval, the testbed cannot resolve an effect and the study says so. Each trained model is scored once on the test split by evaluate.py's toy suite. Its settings must be chosen
on val, never on this table: und_lr 2e-4 was (for the earlier composition); eps, lam and min-sim are train.py's
defaults until they are chosen again for the paper's composition (README, "Not done").

    python study.py                                    # 5 seeds SFT, UniGame, PGD, augment + Table 4 (3 seeds) + cost
    python study.py --seeds 1 --ablation-seeds 0 --steps 20 --size 200 --subset 100 --groups 100 \\
        --out_dir out/study_quick                      # a quick check of the plumbing (about 3 min)

Interrupted? Run the same command again: finished runs and scores are kept (each run dir's final.json and
score.json) and an interrupted run resumes from its checkpoint. Results: OUT_DIR/study.json and OUT_DIR/study.md.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

import data
import evaluate
import toy_umm

ROOT = os.path.dirname(os.path.abspath(__file__))
# Table 4 on the toy, top to bottom (the README maps them to the paper's rows), then full_keep: the full game with B as
# a store of the hardest candidates ever, replayed until harder ones push them out (train.py --buffer-policy keep)
ROWS = {
    'sft': ['--mode', 'sft'],
    'noise_token': ['--perturb', 'random', '--space', 'token', '--filter', 'none', '--buffer-size', '0'],
    'adv_token': ['--space', 'token', '--filter', 'none', '--buffer-size', '0'],
    'adv_token_cos': ['--space', 'token', '--filter', 'cosine', '--buffer-size', '0'],
    'adv_token_cos_buf': ['--space', 'token', '--filter', 'cosine'],
    'decoded': ['--filter', 'none', '--buffer-size', '0'],
    'decoded_cos': ['--filter', 'cosine', '--buffer-size', '0'],
    'decoded_clip': ['--filter', 'clip', '--buffer-size', '0'],
    'full': ['--filter', 'clip'],
    'full_keep': ['--filter', 'clip', '--buffer-policy', 'keep'],  # B as a store of the hardest ever, replayed
}
# the positive controls, same LoRA, data, steps and beta: U learns from pixel-PGD images (Madry) or from a generic
# augmentation (data.augment) instead of UniGame's candidates. The testbed can resolve an effect only if pgd beats sft
# on PGD accuracy by more than the paired 95% interval.
CONTROLS = {'pgd': ['--mode', 'pgd'], 'augment': ['--mode', 'augment']}
COMPARED = ('sft', 'full', *CONTROLS)  # run over --seeds; the other rows over --ablation-seeds
# the numbers a table shows, as keys of evaluate.flatten(score)
METRICS = {'clean': 'clean all', **{s: f'shift {s}' for s in data.SHIFTS}, 'G-Acc': 'natural G_Acc',
           'PGD': 'pgd', 're-read': 'reread', 'consistency': 'consistency mean'}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t_{0.975, df}


def atomic_json(obj, path):
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(path + '.tmp', path)


def train(run_dir, flags):
    """One train.py run, unless it already finished (final.json); an interrupted one resumes from its checkpoint."""
    if os.path.isfile(os.path.join(run_dir, 'final.json')):
        return
    resume = ['--resume'] if os.path.isfile(os.path.join(run_dir, 'ckpt.pt')) else []
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'train.log'), 'w') as out:
        r = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--out_dir', run_dir, *flags, *resume],
                           stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"study.py: {run_dir} failed (exit {r.returncode}); see {run_dir}/train.log")


def score(ckpt, sets, few, path):
    """The toy suite on one checkpoint, once: the flat scores are cached in `path`."""
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    umm, judge = evaluate.load_checkpoint(ckpt)
    result = evaluate.evaluate_model(umm, judge, sets, few, dict(eps=8 / 255, steps=10, step_size=2 / 255))
    flat = {**evaluate.flatten({k: v for k, v in result.items() if k != 'seconds'}), 'seconds': result['seconds']}
    flat['shift mean'] = sum(flat[f'shift {s}'] for s in data.SHIFTS) / len(data.SHIFTS)
    atomic_json(flat, path)
    return flat


def mean_std(values):
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return m, s


def paired_interval(a, b):
    """Mean of b - a over seeds and its 95% t-interval half-width (nan for one seed): runs are paired by seed."""
    d = [y - x for x, y in zip(a, b)]
    m, s = mean_std(d)
    return m, T975.get(len(d) - 1, 1.96) * s / math.sqrt(len(d)) if len(d) > 1 else math.nan


def cell(m, s, scale=100):
    return f"{scale * m:.1f}" + ('' if math.isnan(s) else f" ± {scale * s:.1f}")


def markdown(scores, base, names, seeds, metrics):
    """One row per run name (mean ± std over `seeds`, in points) with the base as the first row."""
    head = '| run | seeds | ' + ' | '.join(metrics) + ' |\n|---|---|' + '---|' * len(metrics) + '\n'
    rows = [f"| base | - | " + ' | '.join(f"{100 * base[metrics[k]]:.1f}" for k in metrics) + ' |']
    for n in names:
        per = [scores[n][s] for s in range(seeds)]
        rows.append(f"| {n} | {seeds} | " + ' | '.join(cell(*mean_std([p[metrics[k]] for p in per])) for k in metrics)
                    + ' |')
    return head + '\n'.join(rows) + '\n'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--init', default=toy_umm.BASE_DIR, help='the tiny-toy base (default: the shipped weights/tiny-toy)')
    p.add_argument('--out_dir', '--out-dir', default='out/study', help='where runs, scores and tables go')
    p.add_argument('--seeds', type=int, default=5, help='seeds of SFT vs UniGame (full) and the two controls')
    p.add_argument('--ablation-seeds', type=int, default=3, help="seeds of each Table 4 row (0: skip Table 4)")
    # the post-training budget and the settings chosen on val; the same for every run
    p.add_argument('--steps', type=int, default=300, help='post-training steps of every run')
    p.add_argument('--und-lr', type=float, default=2e-4, help="U's LoRA learning rate, the same for every run")
    # eps, lam and min-sim follow train.py's defaults (relative eps, calibrated filter) until they are chosen again
    # on val for the paper's composition; the earlier study's eps 1 / lam 0.2 / min-sim 0.83 were on the old scales
    p.add_argument('--eps', type=float, default=0.02, help="eps_max of C, relative to the RMS token norm")
    p.add_argument('--lam', type=float, default=1.0, help="Eq. 7's lambda on ||delta||^2 (relative units)")
    p.add_argument('--min-sim', type=float, default=0.6,
                   help="the semantic filter's threshold on the calibrated scale (0: another scene, 1: G(z)'s own)")
    p.add_argument('--extra', default='', help='more train.py flags for every run, e.g. "--dtype bfloat16"')
    # eval (test split)
    p.add_argument('--size', type=int, default=2000, help='test questions of the clean set and of each shift')
    p.add_argument('--subset', type=int, default=1000, help='the first N get PGD, re-reading and consistency')
    p.add_argument('--groups', type=int, default=1000, help='NaturalBench-style groups for G-Acc')
    args = p.parse_args()
    for flag in ('seeds', 'steps', 'size', 'subset', 'groups'):
        if getattr(args, flag) < 1:
            p.error(f"--{flag}: must be >= 1, got {getattr(args, flag)}")
    if args.ablation_seeds < 0:
        p.error(f"--ablation-seeds: must be >= 0, got {args.ablation_seeds}")
    os.makedirs(args.out_dir, exist_ok=True)
    t_start = time.time()
    log = lambda msg: print(f"[{(time.time() - t_start) / 60:5.1f} min] {msg}", flush=True)

    # 0. the base: the shipped one unless --init says otherwise; a missing or foreign base.pt fails now, not per run
    try:
        toy_umm.load_base(toy_umm.build_tiny_toy(), args.init)
    except toy_umm.BaseError as e:
        p.error(str(e))
    t_base = time.time() - t_start

    # 1. train and score every (row, seed) on test, the base too; the comparison's seeds for sft and full, the ablation
    # seeds for every row; seed-major, so that an interrupted study has whole seeds rather than whole rows
    plan = {n: max(args.ablation_seeds if n in ROWS else 0, args.seeds if n in COMPARED else 0)
            for n in {**ROWS, **CONTROLS}}
    plan = {n: k for n, k in plan.items() if k > 0}
    common = ['--init', args.init, '--steps', str(args.steps), '--und-lr', str(args.und_lr), '--eps', str(args.eps),
              '--lam', str(args.lam), '--min-sim', str(args.min_sim), '--val-size', '0', *args.extra.split()]
    sets, few = evaluate.suite_sets('test', args.size, args.subset, args.groups)
    base = score(args.init, sets, few, os.path.join(args.out_dir, 'base_score.json'))
    scores, total = {n: [] for n in plan}, sum(plan.values())
    for seed in range(max(plan.values())):
        for n, k in plan.items():
            if seed < k:
                run = os.path.join(args.out_dir, n, f'seed{seed}')
                train(run, [*common, *{**ROWS, **CONTROLS}[n], '--seed', str(seed)])
                scores[n].append(score(run, sets, few, os.path.join(run, 'score.json')))
                r = scores[n][-1]
                log(f"{sum(map(len, scores.values()))}/{total} {run}: clean {r['clean all']:.3f}, "
                    f"OOD mean {r['shift mean']:.3f}, PGD {r['pgd']:.3f}")
    t_runs = time.time() - t_start - t_base

    # 3. tables: SFT vs UniGame over seeds with paired 95% intervals; Table 4; the cost of each row
    metrics = {**METRICS, 'OOD mean': 'shift mean'}
    main_table = markdown(scores, base, list(COMPARED), args.seeds, metrics)
    diffs = {n: {k: paired_interval([s[v] for s in scores['sft'][:args.seeds]], [s[v] for s in scores[n][:args.seeds]])
                 for k, v in metrics.items()} for n in COMPARED[1:]}
    for n, diff in diffs.items():
        main_table += f'| {n} − sft (95% CI) | ' + f"{args.seeds} | " + ' | '.join(
            f"{100 * m:+.1f}" + ('' if math.isnan(h) else f" ± {100 * h:.1f}") for m, h in diff.values()) + ' |\n'
    m, h = diffs['pgd']['PGD']
    resolves = m - h > 0  # nan-safe: one seed has no interval and resolves nothing
    main_table += (f"\nPositive control: pgd − sft on PGD accuracy {100 * m:+.1f} ± {100 * h:.1f} points: the testbed "
                   + ("resolves an effect of this size.\n" if resolves else
                      "does NOT resolve it; no verdict on UniGame holds on this testbed.\n"))
    ablation = markdown(scores, base, list(plan), args.ablation_seeds, metrics) if args.ablation_seeds else ''
    cost = {}
    for n in plan:
        runs = [os.path.join(args.out_dir, n, f'seed{s}') for s in range(plan[n])]
        c = evaluate.mean_cost(runs)
        peaks = [json.load(open(os.path.join(d, 'final.json')))['peak_memory_mb'] for d in runs]
        cost[n] = dict(ms_per_step=1000 * c['step'], ms_per_phase={k: 1000 * v for k, v in c['phases'].items()},
                       peak_memory_mb=max(peaks))
    phases = list(cost['sft']['ms_per_phase'])  # where the time goes: data + frozen encode, challenge, mine, understand
    header = ['run', 'ms/step', '× SFT', *(f"{k} ms" for k in phases), 'peak memory (MB)']
    cost_table = '\n'.join('| ' + ' | '.join(row) + ' |' for row in [header, ['---'] * len(header)] + [
        [n, f"{c['ms_per_step']:.1f}", f"{c['ms_per_step'] / cost['sft']['ms_per_step']:.2f}",
         *(f"{c['ms_per_phase'].get(k, float('nan')):.1f}" for k in phases), str(c['peak_memory_mb'])]
        for n, c in cost.items()]) + '\n'
    decode_ms = decode_cost(args.init)
    minutes = dict(base=t_base / 60, runs=t_runs / 60, total=(time.time() - t_start) / 60)
    text = (f"## SFT vs UniGame (test split, points, mean ± std over {args.seeds} seeds)\n\n{main_table}\n"
            + (f"## Table 4 on the toy ({args.ablation_seeds} seeds)\n\n{ablation}\n" if ablation else '')
            + f"## Cost (2 cores unless stated)\n\n{cost_table}\nG(z + delta) decode: {decode_ms:.2f} ms per "
            f"candidate (batch 32)\n\nwall time: " + ', '.join(f"{k} {v:.1f} min" for k, v in minutes.items()) + '\n')
    atomic_json(dict(settings=vars(args), base=base, scores=scores, diff_minus_sft=diffs, control_resolves=resolves,
                     cost=cost,
                     decode_ms_per_candidate=decode_ms, minutes=minutes), os.path.join(args.out_dir, 'study.json'))
    with open(os.path.join(args.out_dir, 'study.md'), 'w') as f:
        f.write(text)
    print('\n' + text + f"\nwrote {args.out_dir}/study.json and {args.out_dir}/study.md")


@torch.no_grad()
def decode_cost(init, batch=32, reps=5):
    """ms per candidate of G(z + C(z)) on the base, batch 32: the best of `reps` timings."""
    import model
    from perturber import Perturber
    umm = model.load_backbone('tiny-toy', init=init).eval()
    ds = data.ShapesVQA('val', batch)
    b = data.collate([ds[i] for i in range(batch)])
    C, z = Perturber(umm.hidden_size), umm.encode(b['images'])
    best = math.inf
    for _ in range(reps):
        t0 = time.time()
        umm.decode(b['images'], z, b['questions'], perturb=C)
        best = min(best, time.time() - t0)
    return 1000 * best / batch


if __name__ == '__main__':
    main()
