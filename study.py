"""
The reproduction study on CPU: does UniGame beat SFT on the toy, and does Table 4's ordering hold?

From one tiny-toy base, every run is `train.py` with the same steps, data order, batch, und_lr and LoRA placement;
only the game differs. Beside SFT and UniGame, two positive controls with the same LoRA budget (train.py --mode pgd: U
learns from pixel-PGD images, Madry et al.; --mode augment: from a generic augmentation): unless pgd beats sft on PGD
accuracy by more than the paired 95% interval, the testbed cannot resolve an effect and the study says so. Each
trained model is scored once by evaluate.py's toy suite, on test. Settings are chosen on val (--split val, its own
out_dir), never on the test table: und_lr 2e-4, LoRA on the LM's attention and MLPs and PGD at 4/255 are the
testbed in which the PGD control resolved and SFT moved G-Acc on val (README, docs/study.md); the replay policy was
compared on val too (docs/study.md: rescore stays, as B must keep entries across steps). PGD accuracy is scored on
4000 questions: on val, with 1000, which questions were asked made all of the spread of pgd - sft over seeds.

    python study.py --out_dir results/study            # 5 seeds SFT, UniGame, PGD, augment + Table 4 (3 seeds) + cost
    python study.py --split val --rows full,full_keep,full_consume --seeds 2 --out_dir out/select_replay
                                                       # a choice on val: these rows only, 2 seeds each
    python study.py --seeds 1 --ablation-seeds 0 --steps 20 --size 200 --subset 100 --groups 100 \\
        --pgd-questions 100 --out_dir out/study_quick  # a quick check of the plumbing (about 3 min)

--jobs 2 (the default on 2 cores) trains and scores two runs at once, one thread each (1.2x the throughput of one
run on two threads, 2026-12-05); step times in the cost table are then one thread's.

Rerun the same command to resume: finished runs and their scores are kept, an interrupted run resumes from its
checkpoint, and a run trained with other settings (its config.json) stops the study at once. Scores are cached under
the settings that made them (score_test_size2000_subset1000_groups1000.json; PGD alone in pgd_test_4000q_eps4.json),
so another suite setting scores the same runs again. Results: OUT_DIR/study.json and OUT_DIR/study.md.

The record, `--out_dir results/study`, is the study docs/study.md reports: git keeps its tables and each run's
config.json, final.json, metrics.jsonl and scores, not weights, checkpoints or logs (.gitignore), so a clone on
another machine resumes it; a recorded run is trained again only when a new suite setting must score it.
"""

import argparse
import ctypes
import functools
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent import futures

if __name__ == '__main__':  # Ctrl-C while torch imports (not in a worker, '__mp_main__'): one line, no traceback
    def interrupted(*_):
        print("\nstudy.py: interrupted while starting: nothing started", file=sys.stderr, flush=True)
        raise SystemExit(130)
    signal.signal(signal.SIGINT, interrupted)

import torch  # noqa: E402 (after the handler: importing torch takes seconds)

import config
import data
import evaluate
import plots
import toy_base

ROOT = os.path.dirname(os.path.abspath(__file__))
TOKEN = ['--space', 'token', '--attack', 'token']  # Table 4's embedding rows: C learns and acts on z + delta itself
# Table 4 on the toy, top to bottom (docs/study.md maps them to the paper's rows); the decoded rows train C by Eq. 7
# (train.py's default --attack decoded); then what replay does to an entry of B (--buffer-policy, compared on val)
ROWS = {
    'sft': ['--mode', 'sft'],
    'noise_token': ['--perturb', 'random', *TOKEN, '--filter', 'none', '--buffer-size', '0'],
    'adv_token': [*TOKEN, '--filter', 'none', '--buffer-size', '0'],
    'adv_token_cos': [*TOKEN, '--filter', 'cosine', '--buffer-size', '0'],
    'adv_token_cos_buf': [*TOKEN, '--filter', 'cosine'],
    'decoded': ['--filter', 'none', '--buffer-size', '0'],
    'decoded_cos': ['--filter', 'cosine', '--buffer-size', '0'],
    'decoded_clip': ['--filter', 'clip', '--buffer-size', '0'],
    'full': ['--filter', 'clip'],                                     # the game at train.py's defaults
    'full_keep': ['--filter', 'clip', '--buffer-policy', 'keep'],     # B as a store of the hardest ever
    'full_consume': ['--filter', 'clip', '--buffer-policy', 'consume'],  # an entry is replayed once
}
# Table 4's claims, read from it as fixed before its numbers (docs/study.md, 03:10 UTC): decoded rows above token
# rows, CLIP above cosine, the buffer adding to CLIP; each a paired difference over seeds of the mean of rows
CLAIMS = {'decoded − token': (('decoded', 'decoded_cos', 'decoded_clip', 'full'),
                              ('noise_token', 'adv_token', 'adv_token_cos', 'adv_token_cos_buf')),
          'decoded_clip − decoded_cos': (('decoded_clip',), ('decoded_cos',)),
          'full − decoded_clip': (('full',), ('decoded_clip',))}
# the positive controls, same LoRA, data, steps and beta: U learns from pixel-PGD images (Madry) or from a generic
# augmentation (data.augment) instead of UniGame's candidates. The testbed can resolve an effect only if pgd beats sft
# on PGD accuracy by more than the paired 95% interval.
CONTROLS = {'pgd': ['--mode', 'pgd'], 'augment': ['--mode', 'augment']}
COMPARED = ('sft', 'full', *CONTROLS)  # run over --seeds; the other rows over --ablation-seeds
# the numbers a table shows, as keys of evaluate.flatten(score)
# (spatial: the family the base answers worst, 0.92 on val, the errors in scenes of 3-5 objects)
METRICS = {'clean': 'clean all', 'spatial': 'clean spatial', **{s: f'shift {s}' for s in data.SHIFTS},
           'G-Acc': 'natural G_Acc', 'PGD': 'pgd', 're-read': 'reread', 'consistency': 'consistency mean'}
T975 = [None, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df):
    """t_{0.975, df}, the 95% two-sided quantile of Student's t: the table to 30 df, then the Cornish-Fisher
    expansion about the normal's 1.96 (within 0.001 beyond 30 df)."""
    if df < len(T975):
        return T975[df]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


class RunFailed(RuntimeError):
    pass


def atomic_json(obj, path):
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(path + '.tmp', path)


_STOP = None  # in a worker: the study's stop event, set by the main process on Ctrl-C (the pool's initializer)
_LIBC = ctypes.CDLL(None) if sys.platform.startswith('linux') else None  # loaded here: never dlopen after a fork


def die_with_parent(sig, parent):
    """Linux: this process gets `sig` when its parent dies, so a study killed outright (kill -9, a scheduler's TERM to
    the main process) leaves no worker or run training on; elsewhere a no-op."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(sig))  # 1: PR_SET_PDEATHSIG; it survives the exec of train.py
        if os.getppid() != parent:  # the parent died before the call (a worker imports for seconds): no signal comes
            os._exit(1)


def init_worker(stop, study_pid):
    global _STOP
    _STOP = stop
    die_with_parent(signal.SIGTERM, study_pid)  # a worker dies with the study; its run then hears SIGINT (train below)


def check_stop():
    """A task handed to a worker before a Ctrl-C that the worker did not hear (it was starting) must not start."""
    if _STOP is not None and _STOP.is_set():
        raise KeyboardInterrupt


def same_base(a, b):
    """Two --init paths name the same base: one directory, or the shipped weights/tiny-toy in two clones (a run of
    the study's record, results/, was trained in another clone, on another machine)."""
    shipped = lambda path: os.path.normpath(path).endswith(os.path.join('weights', 'tiny-toy'))
    return os.path.realpath(a) == os.path.realpath(b) or (shipped(a) and shipped(b))


def finished(run_dir):
    """train.py finished the run here and its weights are here. A run of the study's record (results/: git keeps its
    config, metrics and scores, not its weights) has none: it needs none while its scores are cached, and is trained
    again (deterministic on one machine) if another suite setting asks to score it."""
    return os.path.isfile(os.path.join(run_dir, 'final.json')) and os.path.isdir(os.path.join(run_dir, 'adapter'))


def trained_otherwise(run_dir, flags):
    """What a run already in run_dir (finished, or interrupted with a checkpoint) was trained with that `flags` ask
    otherwise, from its config.json: ['--steps 300 (asked: 600)', ...]; empty when nothing differs or no run is
    there. Such a run must be neither kept nor resumed: a study would mix two settings under one name."""
    if not any(os.path.isfile(os.path.join(run_dir, f)) for f in ('final.json', 'ckpt.pt')):
        return []
    with open(os.path.join(run_dir, 'config.json')) as f:
        had = json.load(f)
    asked = vars(config.p.parse_args(['--out_dir', run_dir, *flags]))  # None: resolved later, as train.py does

    def same(k, v):  # the base by the directory it names, wherever the path was written from
        if k == 'init':
            return had.get(k) is not None and same_base(had[k], v)
        return had.get(k) == v
    return [f"--{k.replace('_', '-')} {had.get(k)} (asked: {v})" for k, v in asked.items()
            if v is not None and k not in ('out_dir', 'resume') and not same(k, v)]


def train(run_dir, flags, threads):
    """One train.py run, unless it already finished; an interrupted one resumes from its checkpoint."""
    if finished(run_dir):
        return
    check_stop()
    if os.path.isfile(os.path.join(run_dir, 'final.json')):  # a recorded run without its weights: trained anew,
        for stale in ['final.json', *(f for f in os.listdir(run_dir) if f.startswith(('score_', 'pgd_')))]:
            os.remove(os.path.join(run_dir, stale))  # and no score of the weights that are gone stays beside it
    resume = ['--resume'] if os.path.isfile(os.path.join(run_dir, 'ckpt.pt')) else []
    os.makedirs(run_dir, exist_ok=True)
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    orphaned = functools.partial(die_with_parent, signal.SIGINT, os.getpid())  # the run saves its step and stops
    with open(os.path.join(run_dir, 'train.log'), 'a') as out:  # a resumed run appends
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), '--out_dir', run_dir, *flags,
                                 *resume], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, preexec_fn=orphaned)
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the run too: let it finish its step and save, never kill it
            proc.wait()
            raise
    if returncode != 0:
        raise RunFailed(f"{run_dir} failed (exit {returncode}); see {run_dir}/train.log")


_SETS = {}  # the suite's data, built once per process


def score_files(run_dir, suite, pgd_eps, prefix=''):
    """Where the scores of the model in run_dir are cached, named by the settings that made them: the suite but PGD,
    and PGD alone (its costliest part: another --pgd-questions scores PGD again and nothing else)."""
    split, size, subset, groups, pgd_questions = suite
    return (os.path.join(run_dir, f"{prefix}score_{split}_size{size}_subset{subset}_groups{groups}.json"),
            os.path.join(run_dir, f"{prefix}pgd_{split}_{pgd_questions}q_eps{pgd_eps:g}.json"))


def score(ckpt, suite, attack, paths):
    """The toy suite (split, size, subset, groups, PGD questions) on one checkpoint, once: flat scores, cached in
    `paths` (score_files: the parts but PGD, then PGD)."""
    cached = [None, None]
    for i, path in enumerate(paths):
        if os.path.isfile(path):
            with open(path) as f:
                cached[i] = json.load(f)
    if None in cached:
        if suite not in _SETS:
            _SETS[suite] = evaluate.suite_sets(*suite)
        sets, few = _SETS[suite]
        umm, judge = evaluate.load_checkpoint(ckpt)
        for i, parts in enumerate((dict(skip=('pgd',)), dict(only=('pgd',)))):
            if cached[i] is None:
                result = evaluate.evaluate_model(umm, judge, sets, few, attack, **parts)
                cached[i] = {**evaluate.flatten({k: v for k, v in result.items() if k != 'seconds'}),
                             'seconds': result['seconds']}
                atomic_json(cached[i], paths[i])
    flat = {**cached[0], **cached[1], 'seconds': {**cached[0]['seconds'], **cached[1]['seconds']}}
    flat['shift mean'] = sum(flat[f'shift {s}'] for s in data.SHIFTS) / len(data.SHIFTS)
    return flat


def train_and_score(run_dir, flags, suite, attack, threads, paths):
    """One task of the study in a worker process of `threads` threads: train run_dir with `flags` (None: a base, not
    trained) unless it finished, then score it into `paths` unless it was scored."""
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the worker listens to Ctrl-C only while it works
    try:
        check_stop()
        if flags is not None and not all(os.path.isfile(p) for p in paths):  # scored: no weights needed
            train(run_dir, flags, threads)
        return score(run_dir, suite, attack, paths)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle again: a Ctrl-C must not break the pool


def submit(pool, *task):
    """pool.submit with Ctrl-C ignored while it may start a worker process: the worker inherits the ignore across
    exec, so a Ctrl-C never hits it mid-import or idle (a traceback, a broken pool); train_and_score listens."""
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return pool.submit(*task)
    finally:
        signal.signal(signal.SIGINT, handler)


def stop_now(*_):
    """A second Ctrl-C: stop the workers at once (a train.py they started got the Ctrl-C itself and saves)."""
    for child in multiprocessing.active_children():
        child.terminate()
    print("study.py: stopped; finished runs and scores are kept: run the same command again to resume", flush=True)
    os._exit(130)  # not sys.exit: the pool's exit hook would wait for the workers just stopped


def mean_std(values):
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return m, s


def paired_interval(a, b):
    """Mean of b - a over seeds and its 95% t-interval half-width (nan for one seed): runs are paired by seed."""
    d = [y - x for x, y in zip(a, b)]
    m, s = mean_std(d)
    return m, t975(len(d) - 1) * s / math.sqrt(len(d)) if len(d) > 1 else math.nan


def cell(m, s, scale=100):
    return f"{scale * m:.1f}" + ('' if math.isnan(s) else f" ± {scale * s:.1f}")


def markdown(scores, base, names, seeds, metrics):
    """One row per run name (mean ± std over its first `seeds` seeds, in points) with the base as the first row."""
    head = '| run | seeds | ' + ' | '.join(metrics) + ' |\n|---|---|' + '---|' * len(metrics) + '\n'
    rows = [f"| base | - | " + ' | '.join(f"{100 * base[metrics[k]]:.1f}" for k in metrics) + ' |']
    for n in names:
        per = scores[n][:seeds]
        rows.append(f"| {n} | {len(per)} | " + ' | '.join(cell(*mean_std([p[metrics[k]] for p in per]))
                                                          for k in metrics) + ' |')
    return head + '\n'.join(rows) + '\n'


def claims(scores, seeds, metrics):
    """Table 4's CLAIMS over the first `seeds` seeds: {claim: {metric: (mean, 95% half-width)}}, paired by seed, of
    the mean over the claim's first rows minus the mean over its second rows."""
    group = lambda rows, k: [sum(scores[n][s][k] for n in rows) / len(rows) for s in range(seeds)]
    return {c: {m: paired_interval(group(low, k), group(high, k)) for m, k in metrics.items()}
            for c, (high, low) in CLAIMS.items()}


def pipe_table(header, rows):
    """A markdown table of strings."""
    return '\n'.join('| ' + ' | '.join(row) + ' |' for row in [header, ['---'] * len(header), *rows]) + '\n'


def diff_row(label, seeds, diff):
    return f'| {label} (95% CI) | {seeds} | ' + ' | '.join(
        f"{100 * m:+.1f}" + ('' if math.isnan(h) else f" ± {100 * h:.1f}") for m, h in diff.values()) + ' |\n'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--init', default=toy_base.BASE_DIR,
                   help='the tiny-toy base (default: the shipped weights/tiny-toy)')
    p.add_argument('--out_dir', '--out-dir', default='out/study', help='where runs, scores and tables go')
    p.add_argument('--seeds', type=int, default=5, help='seeds of SFT vs UniGame (full) and the two controls')
    p.add_argument('--ablation-seeds', type=int, default=3, help="seeds of each Table 4 row (0: skip Table 4)")
    p.add_argument('--rows', default=None,
                   help=f"comma list of rows to run, each over --seeds (default: all; names: "
                        f"{', '.join([*ROWS, *CONTROLS])})")
    # the post-training budget and the testbed chosen on val; the same for every run
    p.add_argument('--steps', type=int, default=300, help='post-training steps of every run')
    p.add_argument('--und-lr', type=float, default=2e-4, help="U's LoRA learning rate, the same for every run")
    p.add_argument('--lora-targets', default='q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj',
                   help="U's LoRA placement for every run (train.py --lora-targets): the LM's attention and MLPs, "
                        "with which the PGD control resolved on val (attention alone: it did not)")
    p.add_argument('--pgd-eps', type=float, default=4.0,
                   help='L-inf radius in 1/255 units of the pgd control (train.py --pgd-eps) and of the suite\'s '
                        'PGD accuracy (10 steps of eps/4)')
    p.add_argument('--eps', type=float, default=0.02, help="eps_max of C, relative to the RMS token norm")
    p.add_argument('--lam', type=float, default=1.0, help="Eq. 7's lambda on ||delta||^2 (relative units)")
    p.add_argument('--min-sim', type=float, default=0.6,
                   help="the semantic filter's threshold on the calibrated scale (0: an edit, 1: the clean G(z))")
    p.add_argument('--extra', default='', help='more train.py flags for every run, e.g. "--dtype bfloat16"')
    # eval
    p.add_argument('--split', default='test', choices=['val', 'test'],
                   help='where every run is scored: val to choose settings (use another --out_dir), test once')
    p.add_argument('--size', type=int, default=2000, help='questions of the clean set and of each shift')
    p.add_argument('--subset', type=int, default=1000, help='the first N get re-reading, consistency and T2I ranking')
    p.add_argument('--groups', type=int, default=1000, help='NaturalBench-style groups for G-Acc')
    p.add_argument('--pgd-questions', type=int, default=4000,
                   help='PGD accuracy on the first N questions (chosen on val: with 1000, which questions were asked '
                        'made all of the spread of pgd - sft over seeds; docs/study.md)')
    # system
    p.add_argument('--jobs', type=int, default=max(1, min(2, os.cpu_count() or 1)),
                   help='runs trained and scored at once, each with cores/jobs threads (default: 2 on 2+ cores)')
    args = p.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops, even if started where it was ignored
    for flag in ('seeds', 'steps', 'size', 'subset', 'groups', 'pgd_questions', 'jobs'):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: must be >= 1, got {getattr(args, flag)}")
    if args.ablation_seeds < 0:
        p.error(f"--ablation-seeds: must be >= 0, got {args.ablation_seeds}")
    every = {**ROWS, **CONTROLS}
    if args.rows is not None:
        names = args.rows.split(',')
        unknown = [n for n in names if n not in every]
        if unknown or not names:
            p.error(f"--rows: unknown {', '.join(unknown) or 'empty list'}; valid: {', '.join(every)}")
        plan = {n: args.seeds for n in names}
    else:  # the comparison's seeds for sft, full and the controls; the ablation seeds for the other rows
        plan = {n: max(args.ablation_seeds if n in ROWS else 0, args.seeds if n in COMPARED else 0) for n in every}
        plan = {n: k for n, k in plan.items() if k > 0}
    os.makedirs(args.out_dir, exist_ok=True)
    t_start = time.time()
    log = lambda msg: print(f"[{(time.time() - t_start) / 60:5.1f} min] {msg}", flush=True)

    # 0. the base: the shipped one unless --init says otherwise; a missing or foreign base.pt fails now, not per run
    try:
        toy_base.tiny_toy(init=args.init)
    except toy_base.BaseError as e:
        p.error(str(e))

    # 1. train and score the base and every (row, seed), seed-major (an interrupted study has whole seeds rather than
    # whole rows), --jobs at a time, each in its own process with its share of the cores
    common = ['--init', args.init, '--steps', str(args.steps), '--und-lr', str(args.und_lr), '--eps', str(args.eps),
              '--lam', str(args.lam), '--min-sim', str(args.min_sim), '--lora-targets', args.lora_targets,
              '--pgd-eps', str(args.pgd_eps), '--val-size', '0', *args.extra.split()]
    suite = (args.split, args.size, args.subset, args.groups, args.pgd_questions)
    attack = dict(eps=args.pgd_eps / 255, steps=10, step_size=args.pgd_eps / 255 / 4)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    runs = [(n, seed, os.path.join(args.out_dir, n, f'seed{seed}')) for seed in range(max(plan.values()))
            for n, k in plan.items() if seed < k]
    tasks = [('base', 0, args.init, None, score_files(args.out_dir, suite, args.pgd_eps, 'base_'))] + [
        (n, seed, run, [*common, *every[n], '--seed', str(seed)], score_files(run, suite, args.pgd_eps))
        for n, seed, run in runs]
    for n, seed, run, flags, _ in tasks[1:]:  # a run kept from another study in this out_dir: refuse before any work
        otherwise = trained_otherwise(run, flags)
        if otherwise:
            p.error(f"--out_dir: {run} was trained with other settings than this study asks: "
                    f"{'; '.join(otherwise[:4])}; use another --out_dir, or delete that run")
    results = {}
    spawn = multiprocessing.get_context('spawn')
    stop, pending, running = spawn.Event(), list(tasks), {}
    pool = futures.ProcessPoolExecutor(args.jobs, mp_context=spawn, initializer=init_worker,
                                       initargs=(stop, os.getpid()))
    try:  # at most --jobs tasks handed to the pool at a time, so that a stop leaves nothing queued to start
        while pending or running:
            while pending and len(running) < args.jobs:
                n, seed, run, flags, paths = pending.pop(0)
                running[submit(pool, train_and_score, run, flags, suite, attack, threads, paths)] = (n, seed, run)
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for f in done:
                n, seed, run = running.pop(f)
                r = results[n, seed] = f.result()
                log(f"{len(results)}/{len(tasks)} {run}: clean {r['clean all']:.3f}, OOD mean "
                    f"{r['shift mean']:.3f}, PGD {r['pgd']:.3f}")
    except (RunFailed, KeyboardInterrupt) as e:  # nothing new starts; a running run saves its step and stops
        if isinstance(e, KeyboardInterrupt):
            stop.set()
            signal.signal(signal.SIGINT, stop_now)
            print("\nstudy.py: stopping: running runs save their step (Ctrl-C again to stop at once)", flush=True)
        pool.shutdown(wait=True)  # (Ctrl-C reaches the runs too; `kill -INT` of this process alone lets them finish)
        if isinstance(e, RunFailed):
            raise SystemExit(f"study.py: {e}")
        print("\nstudy.py: interrupted; finished runs and scores are kept: run the same command again to resume")
        raise SystemExit(130)
    pool.shutdown()
    base = results.pop(('base', 0))
    scores = {n: [results[n, s] for s in range(k)] for n, k in plan.items()}
    t_runs = time.time() - t_start

    # 2. tables: SFT vs UniGame and the controls with paired 95% intervals; Table 4; the cost of each row
    metrics = {**METRICS, 'OOD mean': 'shift mean'}
    compared = [n for n in (COMPARED if args.rows is None else plan) if n in plan]
    seeds = min(plan[n] for n in compared)
    main_table = markdown(scores, base, compared, seeds, metrics)
    verdicts, diffs = [], {}
    if 'sft' in plan:  # item 5's headroom: does SFT itself move the base (paired over seeds: the base is one model)
        moved = {k: paired_interval([base[v]] * seeds, [s[v] for s in scores['sft'][:seeds]]) for k, v in
                 metrics.items()}
        main_table += diff_row('sft − base', seeds, moved)
        beyond = {w: [k for k, (m, h) in moved.items() if sign * m > h] for w, sign in (('up', 1), ('down', -1))}
        verdicts.append("Headroom: SFT moves the base beyond the 95% interval over seeds " + '; '.join(
            f"{w} on {', '.join(ks) if ks else 'no metric'}" for w, ks in beyond.items()) + '.')  # nan-safe
        diffs = {n: {k: paired_interval([s[v] for s in scores['sft'][:seeds]], [s[v] for s in scores[n][:seeds]])
                     for k, v in metrics.items()} for n in compared if n != 'sft'}
        for n, diff in diffs.items():
            main_table += diff_row(f'{n} − sft', seeds, diff)
    resolves = None
    if 'pgd' in diffs:
        m, h = diffs['pgd']['PGD']
        resolves = m - h > 0  # nan-safe: one seed has no interval and resolves nothing
        verdicts.append(f"Positive control: pgd − sft on PGD accuracy {100 * m:+.1f} ± {100 * h:.1f} points: the "
                        f"testbed " + ("resolves an effect of this size." if resolves else
                                       "does NOT resolve it; no verdict on UniGame holds on this testbed."))
    main_table += ''.join(f"\n{v}\n" for v in verdicts)
    rest = [n for n in plan if n not in compared]
    ablation = markdown(scores, base, [n for n in plan if n in ROWS], args.ablation_seeds, metrics) \
        if args.rows is None and args.ablation_seeds else (markdown(scores, base, rest, args.seeds, metrics)
                                                           if rest else '')
    table4 = claims(scores, args.ablation_seeds, metrics) if args.rows is None and args.ablation_seeds else {}
    ablation += ''.join(diff_row(c, args.ablation_seeds, d) for c, d in table4.items())
    cost = {}
    for n in plan:
        runs = [os.path.join(args.out_dir, n, f'seed{s}') for s in range(plan[n])]
        c = plots.mean_cost(runs)
        peaks = [json.load(open(os.path.join(d, 'final.json')))['peak_memory_mb'] for d in runs]
        cost[n] = dict(ms_per_step=1000 * c['step'], ms_per_phase={k: 1000 * v for k, v in c['phases'].items()},
                       peak_memory_mb=max(peaks))
    ref = 'sft' if 'sft' in cost else next(iter(cost))
    phases = list(cost[ref]['ms_per_phase'])  # where the time goes: data + frozen encode, challenge, mine, understand
    header = ['run', 'ms/step', f'× {ref}', *(f"{k} ms" for k in phases), 'peak memory (MB)']
    cost_table = pipe_table(header, [
        [n, f"{c['ms_per_step']:.1f}", f"{c['ms_per_step'] / cost[ref]['ms_per_step']:.2f}",
         *(f"{c['ms_per_phase'].get(k, float('nan')):.1f}" for k in phases), str(c['peak_memory_mb'])]
        for n, c in cost.items()])
    # mechanism before outcome: the game's machinery in every row that plays it, as the mean over its seeds of each
    # run's mean from step 20 on (plots.mechanism)
    keys, mechanism = [*plots.MECHANISM, 'eps_end'], {}
    for n in plan:
        if n in ROWS and n != 'sft':
            per_seed = [plots.mechanism(os.path.join(args.out_dir, n, f'seed{s}')) for s in range(plan[n])]
            mechanism[n] = {k: sum(m[k] for m in per_seed) / len(per_seed) for k in keys}
    digits = {'buffer_kept': 1, 'eps_end': 4}
    mechanism_table = pipe_table(['run', 'seeds', *keys], [
        [n, str(plan[n]), *(f"{m[k]:.{digits.get(k, 3)}f}" for k in keys)] for n, m in mechanism.items()])
    decode_ms = plots.decode_cost(args.init)
    minutes = dict(runs=t_runs / 60, total=(time.time() - t_start) / 60)
    text = (f"## SFT vs UniGame ({args.split} split, points, mean ± std over {seeds} seeds)\n\n{main_table}\n"
            + (f"## Table 4 on the toy\n\n{ablation}\n" if ablation else '')
            + (f"## The game's machinery (means over seeds of each run's metrics from step 20; metrics.py)\n\n"
               f"{mechanism_table}\n" if mechanism else '')
            + f"## Cost ({args.jobs} run(s) at once, {threads} thread(s) each)\n\n{cost_table}\nG(z + delta) decode: "
            f"{decode_ms:.2f} ms per candidate (batch 32)\n\nwall time: "
            + ', '.join(f"{k} {v:.1f} min" for k, v in minutes.items()) + '\n')
    atomic_json(dict(settings=vars(args), base=base, scores=scores, diff_minus_sft=diffs, table4_claims=table4,
                     control_resolves=resolves, verdicts=verdicts, mechanism=mechanism, cost=cost,
                     decode_ms_per_candidate=decode_ms, minutes=minutes),
                os.path.join(args.out_dir, 'study.json'))
    with open(os.path.join(args.out_dir, 'study.md'), 'w') as f:
        f.write(text)
    print('\n' + text + f"\nwrote {args.out_dir}/study.json and {args.out_dir}/study.md")


if __name__ == '__main__':
    main()
