"""
Reading train.py run directories after the fact: curves from metrics.jsonl, a gallery from the buffer in rank0.pt,
and the step cost of runs side by side; the cost of decoding one candidate (study.py's cost table).

    python plots.py out/unigame                 # or: python evaluate.py --plot out/unigame
    -> out/unigame/plots/eps.png      perturber gate eps and attack success rate over steps
                         losses.png   L_U vs L_C, the tug-of-war of Figure 10
                         buffer.png   buffer size and mean hardness H
                         gallery.png  the hardest buffer candidates with question, ground truth and current prediction
    python plots.py --step-cost out/cost_sft out/cost_unigame   # or evaluate.py --step-cost: ms/step, x the first

Runs that store the originals (train.py keeps them beside each candidate) draw each candidate as
original | clean decode G(z) | candidate G(z + delta) | |candidate - G(z)| x4, and title it with the max and mean
absolute difference in /255 units: where and how much delta changed the picture, even when it is a few pixels.
The training loop draws nothing; everything here reads what the run saved (evaluate.load_checkpoint for predictions).
"""

import argparse
import json
import math
import os
import textwrap
import time

import torch

import evaluate

DIFF_GAIN = 4  # the difference column shows |candidate - G(z)| times this, clipped to [0, 1]


def _curves(rows, path, title, left, right, share=False):
    """One PNG of two metrics.jsonl series over steps, each (label, key); `right` on a second y-axis unless `share`.
    A series with no values (e.g. L_C in an SFT run) is left out; None when both are empty."""
    import matplotlib.pyplot as plt
    # (label, [(step, value), ...]) per metric; None (nothing counted in that interval) is left out, not drawn as 0
    series = [(label, [(r['step'], r[key]) for r in rows if r.get(key) is not None]) for label, key in (left, right)]
    series = [(k, label, points) for k, (label, points) in enumerate(series) if points]  # k keeps each one's colour
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), layout='constrained')
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for k, label, points in series:
        on = ax.twinx() if k == 1 and not share and len(series) == 2 else ax  # e.g. eps (<= --eps) vs asr (a share)
        on.plot(*zip(*points), marker='.', color=colors[k], label=label)
        on.set_ylabel(label if on is not ax or len(series) == 1 or not share else f"{left[0]}, {right[0]}")
    ax.set_xlabel('step')
    ax.set_title(title)
    fig.legend(loc='outside lower center', ncol=len(series), fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def candidate_difference(candidates, clean):
    """How far each candidate x~ = G(z + delta) is from the clean decode G(z), both (k, 3, s, s) in [0, 1]: the max
    and the mean of |x~ - G(z)| over its pixels and channels, in /255 units, (k,) each."""
    diff = (candidates.float() - clean.float()).abs().flatten(1) * 255              # (k, 3 s s)
    return diff.amax(1), diff.mean(1)


def plot_gallery(run_dir, path, n=16):
    """The hardest n buffer entries of rank 0, or, when replay consumed them all, n of the last it consumed; each
    with its question, ground truth and the run's current prediction, and, when the originals are stored, beside its
    original, the clean decode G(z) and the difference from it (candidate_difference). None (with a message) when
    there is nothing to draw."""
    import matplotlib.pyplot as plt
    state_path = os.path.join(run_dir, 'rank0.pt')
    # rank 0's half of the last checkpoint (checkpoint.py): B's state_dict, entries hardest first
    state = torch.load(state_path, weights_only=True).get('buffer') if os.path.isfile(state_path) else None
    title = 'hardest buffer candidates'
    if state and not state['images'] and state.get('spent', {}).get('images'):  # --buffer-policy consume drains B
        state, title = {**state['spent'], 'space': state['space']}, 'the last candidates U learnt from (consumed)'
    if not state or not state['images']:
        why = 'has no buffer entries' if os.path.isfile(state_path) else 'does not exist'
        print(f"gallery skipped: {state_path} {why} (an SFT run or --buffer-size 0 keeps none)")
        return None
    if state.get('space', 'decoded') == 'token':
        print("gallery skipped: a token-space run (--space token) buffers tokens z + delta, not images")
        return None
    k = min(n, len(state['images']))
    x = torch.stack(state['images'][:k])                                              # (k, 3, s, s) float32
    x = x.float() / 255 if x.dtype == torch.uint8 else x                              # runs before float32 B
    originals, diffs = state.get('originals', [None] * k)[:k], None
    try:
        umm, _ = evaluate.load_checkpoint(run_dir)
        with torch.no_grad():  # the adapter saved at the run's end answers: an entry U has learnt since shows green
            predictions = umm.answer(umm.encode(x), state['questions'][:k])
            if all(o is not None for o in originals):  # each panel: original | G(Enc(original)) | candidate | diff
                clean = torch.stack(originals).float() / 255                              # (k, 3, s, s)
                decoded = umm.render(umm.encode(clean)).float()                           # (k, 3, s, s) G(z)
                diffs = candidate_difference(x, decoded)
                # the largest channel change per pixel, x4: a change of 1/4 of the range or more is white
                heat = (DIFF_GAIN * (x - decoded).abs().amax(1, keepdim=True)).clamp(0, 1)  # (k, 1, s, s)
                x = torch.cat([clean, decoded, x, heat.expand_as(x)], -1)                 # (k, 3, s, 4 s)
                title += (f' (each: original | clean decode G(z) | candidate G(z + delta) | |candidate - G(z)| '
                          f'x{DIFF_GAIN}, max over channels; titles: its max and mean in /255)')
    except FileNotFoundError as e:  # an interrupted run has no adapter/ yet: draw the buffer without predictions
        print(f"gallery without predictions: {e}")
        predictions = ['?'] * k
    wide = x.shape[-1] > x.shape[-2]  # four pictures a panel: half as many per row, twice as wide
    cols = min(2 if wide else 4, k)
    rows = -(-k // cols)  # ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols * (2 if wide else 1), (2.2 if wide else 3.6) * rows),
                             squeeze=False, layout='constrained')
    for j, ax in enumerate(axes.flat):
        ax.axis('off')
        if j >= k:
            continue
        q, gt, p = state['questions'][j], state['answers'][j], predictions[j]
        ax.imshow(x[j].permute(1, 2, 0).numpy(), interpolation='nearest')  # (s, w, 3); nearest keeps a 36 px toy sharp
        h, step = state['hardness'][j], state['steps'][j]
        change = '' if diffs is None else f"\n|candidate - G(z)| max {diffs[0][j]:.0f}, mean {diffs[1][j]:.1f} /255"
        ax.set_title(f"{textwrap.fill(q, 72 if wide else 36)}\nGT {gt} | pred {p} | H {h:.2f} | step {step}{change}",
                     fontsize=7, color='darkgreen' if p == gt else 'firebrick')
    fig.suptitle(textwrap.fill(f"{run_dir}: {title} (green: answered right now)", 150), fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(run_dir) -> list:
    """PNGs from a train.py run into RUN_DIR/plots/: eps (and attack success), L_U vs L_C (Figure 10's
    tug-of-war), buffer size and mean H, and the buffer gallery. Returns the paths written."""
    path = os.path.join(run_dir, 'metrics.jsonl')
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--plot {run_dir!r}: no {path}; expected a train.py run directory "
                                f"(metrics.jsonl, and rank0.pt for the gallery)")
    import matplotlib
    matplotlib.use('Agg')  # files only, no display: runs on a headless server
    with open(path) as f:
        try:
            rows = [json.loads(line) for line in f if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"--plot: {path} is not JSON lines ({e})") from None
    if not rows or not all(isinstance(r, dict) and 'step' in r for r in rows):
        raise ValueError(f"--plot: {path} must hold one JSON object with a 'step' per line, as train.py writes")
    out = os.path.join(run_dir, 'plots')
    os.makedirs(out, exist_ok=True)
    # one shared y-axis for L_U and L_C when their mean magnitudes are within 3x of each other, else two
    lu, lc = ([abs(r[k]) for r in rows if r.get(k) is not None] for k in ('L_U', 'L_C'))
    similar = bool(lu and lc) and 1 / 3 < (sum(lu) / len(lu)) / max(1e-12, sum(lc) / len(lc)) < 3
    written = [
        _curves(rows, os.path.join(out, 'eps.png'), 'perturber gate eps and attack success rate',
                ('eps', 'eps'), ('attack success rate', 'asr')),
        _curves(rows, os.path.join(out, 'losses.png'), 'tug-of-war: L_U (understand) vs L_C (challenge)',
                ('L_U', 'L_U'), ('L_C', 'L_C'), share=similar),
        _curves(rows, os.path.join(out, 'buffer.png'), 'hard-sample buffer', ('entries B holds', 'buffer_kept'),
                ('mean H', 'H_mean')),
        plot_gallery(run_dir, os.path.join(out, 'gallery.png'))]
    written = [p for p in written if p]  # None: nothing to draw there (e.g. the gallery of an SFT run)
    print('wrote ' + ', '.join(written) if written else f"nothing to plot: {path} has no eps, L_U, L_C or buffer "
          f"(a pretrain run?)")
    return written


# -----------------------------------------------------------------------------
# the game's machinery in a run, from its metrics.jsonl (study.py's mechanism table)

# attack success on accepted candidates vs U's clean error (also on the accepted candidates' originals, and where
# the reader says the label held), what B holds after replay, the filter's rejections and the labels broken among
# the candidates it rejected, passed and the game finally accepted (metrics.py)
MECHANISM = ('asr', 'clean_error', 'clean_error_accepted', 'asr_intact', 'buffer_kept', 'filter_reject',
             'broken_rejected', 'broken_passed', 'broken_accepted')


def mechanism(run_dir, first=20) -> dict:
    """Each MECHANISM key's mean over the run's metrics.jsonl lines from step `first` on (past the start, where B
    fills; a shorter run: all its lines; lines without a value, e.g. no rejected candidate to read, left out), and
    C's gate `eps` at the last line."""
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        lines = [json.loads(line) for line in f]
    rows = [r for r in lines if r['step'] >= first] or lines  # a run shorter than `first` steps: all of it
    means = {}
    for k in MECHANISM:
        values = [r[k] for r in rows if r.get(k) is not None]
        means[k] = sum(values) / len(values) if values else math.nan
    return {**means, 'eps_end': rows[-1]['eps']}


# -----------------------------------------------------------------------------
# the step cost of runs, from their metrics.jsonl

def mean_cost(run_dirs) -> dict:
    """Mean `step_time` and `phase_time` (seconds; data + frozen encode, challenge, mine, understand) over the
    metrics.jsonl lines after step 0 (warm-up) of one or more train.py runs, e.g. all seeds of one study row."""
    rows = []
    for d in run_dirs:
        with open(os.path.join(d, 'metrics.jsonl')) as f:
            # step 0's line is that step alone (lines come at step % --log-every == 0): the warm-up, left out
            rows += [r for r in map(json.loads, f) if r['step'] > 0]
    if not rows:
        raise ValueError(f"{', '.join(run_dirs)}: no metrics.jsonl line after step 0; run more steps")
    # a mean over lines, each a mean over its --log-every steps (a last, shorter interval weighs as much as the rest)
    phases = {k: sum(r['phase_time'][k] for r in rows) / len(rows) for k in rows[0].get('phase_time', {})}
    return dict(step=sum(r['step_time'] for r in rows) / len(rows), phases=phases)


def step_cost(run_dirs) -> dict:
    """Each run's mean step time, its ratio to the first run's, and where it goes:
    `python plots.py --step-cost out/cost_sft out/cost_unigame`."""
    costs = {d: mean_cost([d]) for d in run_dirs}  # seconds per step; printed as ms and as a multiple of the first
    for d, c in costs.items():
        print(f"{d:40} {1000 * c['step']:8.1f} ms/step {c['step'] / costs[run_dirs[0]]['step']:6.2f}x   " +
              '  '.join(f"{k} {1000 * v:.1f}" for k, v in c['phases'].items()))
    return {d: c['step'] for d, c in costs.items()}


# -----------------------------------------------------------------------------
# the cost of one candidate: G decodes z + C(z)

@torch.no_grad()
def decode_cost(init, batch=32, reps=5):
    """ms per candidate of G(z + C(z)) on the tiny-toy base at `init`, batch 32: the best of `reps` timings (study.py's
    cost table)."""
    import backbones
    import data
    from perturber import Perturber
    umm = backbones.load_backbone('tiny-toy', init=init).eval()
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run_dir', metavar='RUN_DIR', nargs='?',
                        help='a train.py run directory (metrics.jsonl, rank0.pt): its PNGs into RUN_DIR/plots')
    parser.add_argument('--step-cost', nargs='+', metavar='RUN_DIR',
                        help='instead: mean step time of train.py runs, and each one relative to the first')
    args = parser.parse_args()
    if not (args.run_dir or args.step_cost):
        parser.error('RUN_DIR is required (or --step-cost RUN_DIR ...)')
    import toy_base  # for BaseError: a run over a missing or broken base
    try:
        if args.step_cost:
            step_cost(args.step_cost)
        else:
            plot_run(args.run_dir)
    except (FileNotFoundError, toy_base.BaseError) as e:  # a missing or broken file: one line naming it
        parser.exit(2, f"plots.py: error: {e}\n")
