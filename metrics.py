"""
What one line of a run's metrics.jsonl holds: the machinery of the game next to its outcome, so a reader sees the
mechanism work (or not) before asking whether the method wins. train.py adds to sums every step and writes a line
every `--log-every` steps; the sums are reduced over ranks only there (one all-reduce of one tensor).

    step            the step of the line; every other value is a mean over the steps since the previous line
    L_U, L_C        U's loss (Eq. 6) and C's objective (Eq. 7; over C's updates)
    eps             C's gate: the norm it chose for delta, relative to the RMS token norm, at most --eps
    asr             attack success: U wrong on the *accepted* candidates
    clean_error     U wrong on the step's clean rows; clean_error_accepted: on the accepted candidates' originals
    accepted        share of candidates kept (H >= the batch's quantile, and s >= --min-sim)
    filter_reject   share of candidates the semantic filter rejected (s < --min-sim)
    broken_*        the reader outside the game (reader.py, toy only): share of accepted / filter-rejected / passed
                    candidates whose label broke; asr_intact: U wrong on accepted candidates whose label held
    hard_fresh      this step's accepted candidates in U's step; hard_replayed: entries of B replayed
    buffer_kept     entries B still holds after the step's replay, before its candidates are pushed (a consumed B:
                    0); H_mean: the mean hardness of B's entries at the end of the logged step
    images_skipped  unreadable real images so far
    step_time       seconds per step; phase_time: of them, data + frozen encode, challenge, mine, understand

    python evaluate.py --plot out/unigame     # the curves and the buffer gallery from these lines
"""

import json
import os

import torch
import torch.distributed as dist

PHASES = ('data', 'challenge', 'mine', 'understand')  # where a step's time goes, logged as phase_time
SUMS = ('L_U', 'L_C', 'c_steps', 'steps', 'candidates', 'rejected', 'accepted', 'wrong_adv', 'wrong_adv_clean',
        'asked_adv', 'wrong_clean', 'asked_clean', 'broken_acc', 'broken_rej', 'broken_all', 'wrong_intact',
        'asked_intact', 'hard_fresh', 'hard_replayed', 'buffer_kept', *PHASES)


class Metrics:
    """Sums since the last line, one tensor on the device (no .item() in the loop), and the file rank 0 writes."""

    def __init__(self, path, device, master, start_step=0):
        self.sums = torch.zeros(len(SUMS), device=device)  # (len(SUMS),): one slot per name, one all-reduce per line
        self.file = None
        if master:  # on resume, drop the lines an interrupted run wrote after its last checkpoint
            kept = [l for l in open(path) if json.loads(l)['step'] < start_step] \
                if start_step > 0 and os.path.isfile(path) else []
            self.file = open(path, 'w')
            self.file.writelines(kept)

    def add(self, **sums):
        for k, v in sums.items():  # v: a device tensor or a Python number; either way no host sync in the loop
            self.sums[SUMS.index(k)] += v

    def add_phases(self, seconds):
        """The seconds of each phase in PHASES order."""
        # PHASES are the last names of SUMS, so one slice adds all four (host floats: a small host -> device copy)
        self.sums[SUMS.index(PHASES[0]):] += torch.tensor(seconds, device=self.sums.device)

    def line(self, step, ddp, reader=False, **values) -> dict:
        """Reduce the sums over ranks, turn them into the line's means and shares (None where nothing was counted),
        add `values` (eps, buffer_kept's presence, H_mean, images_skipped), write it on rank 0, start new sums."""
        if ddp:
            dist.all_reduce(self.sums)  # SUM: counts and loss sums of every rank, so each ratio below is over all ranks
        t = dict(zip(SUMS, self.sums.tolist()))  # the one device -> host copy (and sync) per log line
        self.sums.zero_()
        ratio = lambda k, n: t[k] / t[n] if t[n] > 0 else None  # noqa: E731  (sums over steps and ranks)
        seen = lambda v: v if reader else None                   # noqa: E731  (the reader's shares)
        # L_C is per C update, not per step (--updates G:U gives a step 0, 1 or more); asr and clean_error count only
        # the steps that measured them (--asr-every)
        row = dict(step=step, L_U=ratio('L_U', 'steps'), L_C=ratio('L_C', 'c_steps'), eps=values.pop('eps'),
                   asr=ratio('wrong_adv', 'asked_adv'), clean_error=ratio('wrong_clean', 'asked_clean'),
                   clean_error_accepted=ratio('wrong_adv_clean', 'asked_adv'),  # the same samples, unperturbed
                   accepted=ratio('accepted', 'candidates'), filter_reject=ratio('rejected', 'candidates'),
                   broken_accepted=seen(ratio('broken_acc', 'accepted')),
                   broken_rejected=seen(ratio('broken_rej', 'rejected')),
                   # passed: through the filter (all - rejected), whether or not H then reached the quantile
                   broken_passed=seen((t['broken_all'] - t['broken_rej']) / (t['candidates'] - t['rejected'])
                                      if t['candidates'] > t['rejected'] else None),
                   asr_intact=seen(ratio('wrong_intact', 'asked_intact')),
                   hard_fresh=ratio('hard_fresh', 'steps'), hard_replayed=ratio('hard_replayed', 'steps'),
                   buffer_kept=ratio('buffer_kept', 'steps') if values.pop('buffer') else 0, **values,
                   step_time=sum(t[k] for k in PHASES) / t['steps'], phase_time={k: t[k] / t['steps'] for k in PHASES})
        if self.file is not None:
            self.file.write(json.dumps(row) + '\n')
            self.file.flush()  # a line per --log-every steps: flushed so `tail -f` and a crash both see it
        return row
