"""study.py: the paired interval by hand, a one-seed quick study end to end that a second call does not redo, and
what a stopped study keeps (Ctrl-C, Ctrl-C while workers start, the main process killed outright).
Run: python -m pytest -q tests/test_study.py   (5.7 min on one thread beside a study run, 2026-12-06)"""

import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest

import data
import study
import toy_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_SCORES = study.score_files('', ('test', 40, 20, 10, 20), 4.0, 'base_')  # where start_study caches the base's


def start_study(out, seeds, jobs, extra, scored_base=True, **popen):
    """study.py on the shipped base, the sft row only, runs of 3000 steps (long enough to be stopped), in its own
    process group as a terminal's foreground job. scored_base: the base's score is written beforehand (a stand-in:
    these tests stop runs, and scoring the base first only makes them wait), so seed 0 is the first task to work."""
    if scored_base:
        os.makedirs(out, exist_ok=True)
        suite = {'clean all': 0.0, **{f'shift {s}': 0.0 for s in data.SHIFTS}}
        for name, part in zip(BASE_SCORES, (suite, {'pgd': 0.0})):
            with open(os.path.join(out, name), 'w') as f:
                json.dump({**part, 'seconds': {}}, f)
    cmd = [sys.executable, os.path.join(ROOT, 'study.py'), '--init', toy_base.BASE_DIR, '--out_dir', out,
           '--seeds', str(seeds), '--ablation-seeds', '0', '--rows', 'sft', '--steps', '3000', '--jobs', str(jobs),
           '--size', '40', '--subset', '20', '--groups', '10', '--pgd-questions', '20', '--extra', extra]
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, **popen)


def refused(monkeypatch, capsys, argv):
    """study.main() on `argv` in this process, expected to stop before any work: (exit code, stderr)."""
    def started(*_):
        raise AssertionError("the study started despite a bad flag or a mismatched out_dir")
    monkeypatch.setattr(study.multiprocessing, 'get_context', started)  # never hours of work from a broken check
    monkeypatch.setattr(sys, 'argv', ['study.py', *argv])
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as e:
        try:
            study.main()
        finally:
            signal.signal(signal.SIGINT, handler)  # main() installs its own
    return e.value.code, capsys.readouterr().err


def test_paired_interval_by_hand():
    # differences 1, 2, 3: mean 2, sample std 1, t(0.975, 2 df) = 4.303 -> half-width 4.303 / sqrt(3)
    m, h = study.paired_interval([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert m == 2.0 and abs(h - 4.303 / math.sqrt(3)) < 1e-9
    m, h = study.paired_interval([0.5], [0.25])
    assert m == -0.25 and math.isnan(h)


def test_t_quantile_beyond_ten_seeds():
    # Student's t, 0.975 quantile, from a printed table (not from study.py): 12, 40, 60 and 120 degrees of freedom
    for df, t in ((12, 2.179), (40, 2.021), (60, 2.000), (120, 1.980)):
        assert abs(study.t975(df) - t) < 1.5e-3, (df, study.t975(df))
    m, h = study.paired_interval([0.0] * 13, [float(k % 2) for k in range(13)])  # 13 seeds: 12 df, not the normal's
    assert abs(h - 2.179 * math.sqrt(6 * 7 / 13 / 12) / math.sqrt(13)) < 1e-3


def test_quick_study_runs_end_to_end_and_keeps_finished_work(tmp_path, monkeypatch, capsys):
    base, out = toy_base.BASE_DIR, str(tmp_path / 'study')  # the shipped base: its judge calibrates the filter
    cmd = [sys.executable, os.path.join(ROOT, 'study.py'), '--init', base, '--out_dir', out, '--seeds', '1',
           '--ablation-seeds', '0', '--steps', '2', '--size', '40', '--subset', '20', '--groups', '10',
           '--pgd-questions', '20', '--min-sim=-1e9', '--extra',
           '--batch-size 8 --train-size 200 --replay 4 --log-every 1 --pgd-steps 2']
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    with open(os.path.join(out, 'study.json')) as f:
        result = json.load(f)
    assert set(result['scores']) == {'sft', 'full', 'pgd', 'augment'} and len(result['scores']['full']) == 1
    full, sft = result['scores']['full'][0], result['scores']['sft'][0]
    assert 0 <= full['clean all'] <= 1 and 0 <= sft['pgd'] <= sft['clean all']  # PGD counts right-and-attacked
    with open(os.path.join(out, 'full', 'seed0', 'metrics.jsonl')) as f:
        assert any(json.loads(line)['L_C'] is not None for line in f)  # the full row really played the game
    md = open(os.path.join(out, 'study.md')).read()
    assert '| full − sft (95% CI) |' in md and '| pgd − sft (95% CI) |' in md and '| sft |' in md
    assert 'does NOT resolve' in md and result['control_resolves'] is False  # one seed has no interval: no verdict
    assert '| sft − base (95% CI) |' in md and 'Headroom: SFT moves the base beyond' in md  # item 5, asked every time
    assert json.load(open(os.path.join(out, 'full', 'seed0', 'config.json')))['lora_targets'].endswith('down_proj')
    cost = result['cost']  # the phases add up to the step, and only the game spends time challenging and mining
    for row in cost.values():
        assert abs(sum(row['ms_per_phase'].values()) - row['ms_per_step']) < 1e-3 * row['ms_per_step']
    assert cost['full']['ms_per_phase']['mine'] > 10 * cost['sft']['ms_per_phase']['mine']
    assert cost['full']['ms_per_phase']['challenge'] > 10 * cost['sft']['ms_per_phase']['challenge']
    with open(os.path.join(out, 'pgd', 'seed0', 'metrics.jsonl')) as f:
        assert all(json.loads(line)['hard_fresh'] == 8 for line in f)  # the control learnt from a PGD row per sample
    scores = lambda run, kind='score': sorted(glob.glob(os.path.join(out, run, f'{kind}_*.json')))
    kept = [os.path.join(out, run, 'final.json') for run in ('sft/seed0', 'full/seed0')] + scores('sft/seed0') + \
        scores('full/seed0') + scores('sft/seed0', 'pgd')
    assert len(kept) == 5  # a run's suite, and its PGD apart
    stamps = [os.stat(p).st_mtime_ns for p in kept]
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert [os.stat(p).st_mtime_ns for p in kept] == stamps  # nothing was trained or scored again

    # the same out_dir at another training setting: refused before any work (in this process: no 11 s import)
    code, err = refused(monkeypatch, capsys, [*cmd[2:], '--steps', '3'])
    assert code == 2 and 'error: --out_dir:' in err and '--steps 2 (asked: 3)' in err, err[-1000:]
    assert [os.stat(p).st_mtime_ns for p in kept] == stamps

    # another suite setting: the trained runs are kept and scored again, into their own files; another PGD question
    # count scores PGD alone again
    third = subprocess.run([*cmd, '--subset', '10'], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    assert [os.stat(p).st_mtime_ns for p in kept] == stamps
    assert len(scores('sft/seed0')) == 2 and len(scores('full/seed0')) == 2
    assert json.load(open(os.path.join(out, 'study.json')))['settings']['subset'] == 10
    fourth = subprocess.run([*cmd, '--pgd-questions', '30'], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=600)
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    assert [os.stat(p).st_mtime_ns for p in kept] == stamps
    assert len(scores('sft/seed0')) == 2 and len(scores('sft/seed0', 'pgd')) == 2
    pgd30 = json.load(open(os.path.join(out, 'sft', 'seed0', 'pgd_test_30q_eps4.json')))
    assert pgd30['seconds'].keys() == {'pgd'} and 0 <= pgd30['pgd'] <= 1  # only PGD was scored again

    # the record (results/study): what git keeps of a run (.gitignore: no weights), trained in a clone elsewhere.
    # Scored runs are neither trained nor scored again; one with a score missing is trained anew, its stale scores gone
    for run in ('sft/seed0', 'full/seed0', 'pgd/seed0', 'augment/seed0'):
        ignored = subprocess.run(['git', 'check-ignore', '--no-index', f'results/study/{run}/adapter/',
                                  f'results/study/{run}/ckpt.pt', f'results/study/{run}/config.json'],
                                 capture_output=True, text=True, cwd=ROOT).stdout.split()
        assert ignored == [f'results/study/{run}/adapter/', f'results/study/{run}/ckpt.pt'], ignored
        shutil.rmtree(os.path.join(out, run, 'adapter'))
        for path in glob.glob(os.path.join(out, run, '*.pt')):
            os.remove(path)
        config = json.load(open(os.path.join(out, run, 'config.json')))
        with open(os.path.join(out, run, 'config.json'), 'w') as f:
            json.dump({**config, 'init': '/another/clone/weights/tiny-toy'}, f)
    kept += [os.path.join(out, 'full', 'seed0', 'config.json')]
    stamps = [os.stat(p).st_mtime_ns for p in kept]
    fifth = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert fifth.returncode == 0, fifth.stderr[-2000:]
    assert [os.stat(p).st_mtime_ns for p in kept] == stamps
    os.remove(os.path.join(out, 'sft', 'seed0', 'pgd_test_20q_eps4.json'))
    sixth = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert sixth.returncode == 0, sixth.stderr[-2000:]
    assert os.path.isdir(os.path.join(out, 'sft', 'seed0', 'adapter'))  # trained again
    assert os.stat(kept[0]).st_mtime_ns > stamps[0] and [os.stat(p).st_mtime_ns for p in kept[1:2]] == stamps[1:2]
    assert len(scores('sft/seed0')) == 1 and scores('sft/seed0', 'pgd') == [  # the other settings' scores went
        os.path.join(out, 'sft', 'seed0', 'pgd_test_20q_eps4.json')]


def test_rows_must_be_known_and_the_split_is_val_or_test(tmp_path, monkeypatch, capsys):
    """study.py's flags, read by main() in this process (a study.py subprocess spends 11 s importing torch)."""
    for flags, message in ((['--rows', 'full,fulll'], '--rows: unknown fulll'),
                           (['--split', 'train'], 'argument --split: invalid choice')):
        code, err = refused(monkeypatch, capsys, ['--out_dir', str(tmp_path), *flags])
        assert code == 2 and message in err, err[-1000:]
    assert not os.listdir(tmp_path)  # nothing ran


def test_ctrl_c_stops_the_study_keeps_the_runs_and_starts_nothing_new(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) stops the study at once: the running train.py runs save a
    checkpoint and stop, the runs not yet started never start, and the exit says how to resume."""
    import time
    out = str(tmp_path / 'study')
    proc = start_study(out, 3, 1, '--batch-size 4 --train-size 200 --log-every 1 --save-every 5',
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(out, 'sft', 'seed0', 'metrics.jsonl')
    deadline = time.time() + 300
    while not (os.path.isfile(metrics) and os.path.getsize(metrics) > 0) and time.time() < deadline:
        time.sleep(1)  # the worker starts, then seed 0 trains (the base counts as scored)
    if not os.path.isfile(metrics):
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("seed 0 never started")
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a study running behind a failed test
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stdout[-2000:]
    assert 'run the same command again to resume' in stdout
    assert os.path.isfile(os.path.join(out, 'sft', 'seed0', 'ckpt.pt'))  # the interrupted run saved its step
    assert not os.path.isfile(os.path.join(out, 'sft', 'seed0', 'final.json'))
    assert not os.path.exists(os.path.join(out, 'sft', 'seed1'))        # what had not started never started


def test_ctrl_c_while_the_workers_start_starts_nothing_and_prints_no_traceback(tmp_path):
    """A Ctrl-C while the worker processes are still starting (importing torch): they ignore it then, so the tasks
    already handed to them must see the study's stop and not start; no traceback, exit 130 within a minute."""
    import time
    out = str(tmp_path / 'study')
    proc = start_study(out, 2, 2, '--batch-size 4 --train-size 200', scored_base=False, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # both workers spawned: the base and seed 0 are handed to them
        workers = subprocess.run(['pgrep', '-P', str(proc.pid), '-f', 'spawn_main'], capture_output=True, text=True)
        if len(workers.stdout.split()) == 2:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        stdout, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:  # a hang: the handed tasks ran on
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and 'Traceback' not in stdout, stdout[-2000:]
    assert not os.path.exists(os.path.join(out, 'sft', 'seed0', 'metrics.jsonl'))  # seed 0 never trained
    assert not any(os.path.exists(os.path.join(out, name)) for name in BASE_SCORES)


def test_a_study_killed_outright_leaves_no_worker_or_run_behind(tmp_path):
    """kill -9 of the study's main process alone (no Ctrl-C, no clean-up, as a scheduler may do): its workers die
    with it, and the train.py a worker started hears SIGINT, saves its step and stops. Nothing trains on."""
    import time
    out = str(tmp_path / 'study')
    proc = start_study(out, 2, 1, '--batch-size 4 --train-size 200 --log-every 1 --save-every 5',
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(pid):  # a zombie (reaped late by whoever adopted it) does not train
        try:
            with open(f'/proc/{pid}/stat') as f:
                return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
        except FileNotFoundError:
            return False

    def train_pids():
        r = subprocess.run(['pgrep', '-f', f'train.py --out_dir {out}'], capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()]
    metrics = os.path.join(out, 'sft', 'seed0', 'metrics.jsonl')
    deadline = time.time() + 300
    while not (os.path.isfile(metrics) and os.path.getsize(metrics) > 0) and time.time() < deadline:
        time.sleep(1)
    workers = [int(p) for p in subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True,
                                              text=True).stdout.split()]
    runs = train_pids()
    try:
        assert workers and runs, "seed 0 never started"
        time.sleep(2)
        proc.kill()
        proc.wait()
        deadline = time.time() + 60
        while any(map(alive, workers + runs)) and time.time() < deadline:
            time.sleep(0.5)
        assert not any(map(alive, workers + runs)), "the study's workers or runs outlived it"
    finally:
        for pid in [proc.pid, *workers, *runs, *train_pids()]:  # never leave anything running behind a failed test
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert 'interrupted after step' in open(os.path.join(out, 'sft', 'seed0', 'train.log')).read()  # it heard SIGINT
    assert not os.path.isfile(os.path.join(out, 'sft', 'seed0', 'final.json'))


def test_table4_claims_by_hand():
    # two seeds; each row's PGD score = a per-row level + 0.01 * seed, so every claim's difference is the same on
    # both seeds (half-width 0) and equals the difference of the row levels, computed here by hand
    level = {'noise_token': 0.50, 'adv_token': 0.52, 'adv_token_cos': 0.52, 'adv_token_cos_buf': 0.54,
             'decoded': 0.60, 'decoded_cos': 0.61, 'decoded_clip': 0.63, 'full': 0.66}
    scores = {n: [{'pgd': v + 0.01 * s} for s in range(2)] for n, v in level.items()}
    got = study.claims(scores, 2, {'PGD': 'pgd'})
    want = {'decoded − token': (0.60 + 0.61 + 0.63 + 0.66) / 4 - (0.50 + 0.52 + 0.52 + 0.54) / 4,
            'decoded_clip − decoded_cos': 0.02, 'full − decoded_clip': 0.03}
    assert got.keys() == want.keys()
    for claim, d in want.items():
        m, h = got[claim]['PGD']
        assert abs(m - d) < 1e-9 and abs(h) < 1e-9, (claim, m, h)
    scores['full'][1]['pgd'] += 0.02  # seed 1 gains 2 points more: mean +0.01, half-width 12.706 * 0.01
    m, h = study.claims(scores, 2, {'PGD': 'pgd'})['full − decoded_clip']['PGD']
    assert abs(m - 0.04) < 1e-9 and abs(h - 12.706 * 0.01) < 1e-6


def test_the_full_plan_tables_table4_and_its_claims(tmp_path, monkeypatch, capsys):
    """study.main() over every row (2 seeds each) with training and scoring replaced by stand-ins (in this process):
    the tables it writes hold Table 4's rows and its claims, with the values computed here by hand."""
    level = {n: 0.50 + 0.01 * i for i, n in enumerate([*study.ROWS, *study.CONTROLS])}  # each row's PGD on seed 0

    def stand_in(run_dir, flags, suite, attack, threads, paths):
        if flags is None:  # the base
            return {**{k: 0.5 for k in study.METRICS.values()}, 'pgd': 0.40, 'shift mean': 0.5}
        # the run's row: the one whose flags come right before --seed
        name = next(n for n, f in {**study.ROWS, **study.CONTROLS}.items() if flags[-2 - len(f):-2] == f)
        seed = int(flags[-1])
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, 'final.json'), 'w') as f:
            json.dump({'peak_memory_mb': 100}, f)
        with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:  # the mechanism table reads steps 20 on
            for step, asr in ((10, 0.9), (20, 0.2), (30, 0.4)):
                f.write(json.dumps({'step': step, 'step_time': 1.0, 'phase_time': {'understand': 1.0}, 'asr': asr,
                                    'eps': 0.01 + step / 1e4}) + '\n')
        return {**{k: 0.5 for k in study.METRICS.values()}, 'pgd': level[name] + 0.01 * seed, 'shift mean': 0.5}

    class Pool:  # runs each task at once, in this process
        def __init__(self, *_, **__):
            pass

        def submit(self, fn, *args):
            f = study.futures.Future()
            f.set_result(stand_in(*args))
            return f

        def shutdown(self, wait=True):
            pass

    monkeypatch.setattr(study.futures, 'ProcessPoolExecutor', Pool)
    monkeypatch.setattr(study.plots, 'decode_cost', lambda init: 1.0)
    out = str(tmp_path / 'study')
    monkeypatch.setattr(sys, 'argv', ['study.py', '--out_dir', out, '--seeds', '2', '--ablation-seeds', '2'])
    handler = signal.getsignal(signal.SIGINT)
    try:
        study.main()
    finally:
        signal.signal(signal.SIGINT, handler)
    md = open(os.path.join(out, 'study.md')).read()
    table4 = md.split('## Table 4 on the toy')[1].split('## Cost')[0]
    assert all(f'| {n} | 2 |' in table4 for n in study.ROWS)
    pgd_column = list(study.METRICS).index('PGD')  # the claims: differences of row levels (by hand), 0 spread
    token = sum(level[n] for n in ('noise_token', 'adv_token', 'adv_token_cos', 'adv_token_cos_buf')) / 4
    decoded = sum(level[n] for n in ('decoded', 'decoded_cos', 'decoded_clip', 'full')) / 4
    for claim, d in (('decoded − token', decoded - token), ('decoded_clip − decoded_cos', 0.01),
                     ('full − decoded_clip', level['full'] - level['decoded_clip'])):
        row = next(line for line in table4.splitlines() if line.startswith(f'| {claim} (95% CI) | 2 |'))
        assert row.split(' | ')[2 + pgd_column] == f"{100 * d:+.1f} ± 0.0", row
    assert json.load(open(os.path.join(out, 'study.json')))['table4_claims'].keys() == set(study.CLAIMS)
    mechanism = md.split("## The game's machinery")[1].split('## Cost')[0]
    assert '| sft |' not in mechanism and '| pgd |' not in mechanism  # rows that play no game have no machinery
    full = next(line for line in mechanism.splitlines() if line.startswith('| full |')).split(' | ')
    assert full[2] == '0.300' and full[-1] == '0.0130 |', full  # asr: mean of steps 20 and 30; C's gate at the end


def test_mechanism_reads_steps_20_on_by_hand(tmp_path):
    lines = [{'step': 0, 'asr': 1.0, 'buffer_kept': 0.0, 'broken_rejected': 1.0, 'eps': 0.01},
             {'step': 20, 'asr': 0.25, 'buffer_kept': 50.0, 'broken_rejected': None, 'eps': 0.011},
             {'step': 30, 'asr': 0.75, 'buffer_kept': 40.0, 'broken_rejected': 0.5, 'eps': 0.012}]
    with open(tmp_path / 'metrics.jsonl', 'w') as f:
        f.write(''.join(json.dumps(line) + '\n' for line in lines))
    m = study.plots.mechanism(str(tmp_path))
    assert m['asr'] == 0.5 and m['buffer_kept'] == 45.0 and m['broken_rejected'] == 0.5 and m['eps_end'] == 0.012
    assert math.isnan(m['clean_error'])  # never logged
    assert study.plots.mechanism(str(tmp_path), first=40)['asr'] == (1.0 + 0.25 + 0.75) / 3  # too short: all lines
