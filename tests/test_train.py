"""train.py end to end on tiny-toy (CPU): the game's steps move the right way, two DDP ranks keep identical weights,
bad flags fail early naming the flag. Resume and interruptions: tests/test_checkpoint.py.
Most runs of train.py happen in this process (train_runner.py: 7-12 s of imports less each); the command line itself
is run where it is what is tested (bad flags' exit) or where it must be (DDP under torchrun).
Run: python -m pytest -q tests/test_train.py   (with test_checkpoint.py: 7.5 min, one thread beside a study run)"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import backbones
import data
import toy_base
from perturber import Perturber
from train_runner import FAST, ROOT, metrics, run


@pytest.fixture(scope='module')
def base():
    """The shipped tiny-toy base and its judge: a judge that tells a caption from its one-word edit is what the
    filter's scale is calibrated on (a few steps of pretraining give a judge that cannot)."""
    return toy_base.BASE_DIR


def batch(n=8):
    ds = data.ShapesVQA('val', n)
    return data.collate([ds[i] for i in range(n)])


def test_challenge_step_ascends_and_touches_only_c(base):
    torch.manual_seed(0)
    umm = backbones.load_backbone('tiny-toy', init=base).add_lora()
    c = Perturber(umm.hidden_size, width=32, eps_max=0.5)
    opt = torch.optim.AdamW(c.parameters(), lr=5e-2)
    b = batch()
    with torch.no_grad():
        z = umm.encode(b['images'])
    def l_c():  # Eq. 7 on the token side, as train.py computes it
        delta = c(z.float())
        return (umm.understand_loss(z.float() + delta, b['questions'], b['answers']) - c.penalty(1.0)).mean()
    before = l_c().item()
    for _ in range(15):
        opt.zero_grad()
        (-l_c()).backward(inputs=list(c.parameters()))
        assert all(p.grad is None for p in umm.understanding_parameters())  # U's LoRA never gets C's gradient
        opt.step()
    assert l_c().item() > before + 0.05


def test_understand_step_descends_and_touches_only_lora(base):
    torch.manual_seed(0)
    umm = backbones.load_backbone('tiny-toy', init=base).add_lora(dropout=0.0)
    c = Perturber(umm.hidden_size, width=32)
    params = umm.understanding_parameters()
    opt = torch.optim.AdamW(params, lr=1e-3)
    b = batch()
    with torch.no_grad():
        z = umm.encode(b['images'])
    loss = lambda: umm.understand_loss(z, b['questions'], b['answers']).mean()
    before = loss().item()
    for _ in range(10):
        opt.zero_grad()
        loss().backward(inputs=params)
        opt.step()
    assert loss().item() < 0.5 * before  # the base already answers most of these: a relative drop
    assert all(p.grad is None for p in c.parameters())


def test_delta_stays_float32_under_bf16_autocast(base):
    umm = backbones.load_backbone('tiny-toy', init=base)
    c = Perturber(umm.hidden_size, width=32)
    b = batch(4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        z = umm.encode(b['images'])
        x_tilde, delta = umm.decode(b['images'], z, b['questions'], perturb=c)
    assert delta.dtype == torch.float32 and x_tilde.shape == b['images'].shape


def test_unigame_run_logs_the_game_and_saves(base, tmp_path):
    out = str(tmp_path / 'ug')
    # otherwise the defaults
    run('--init', base, '--out_dir', out, '--steps', '6', '--eps', '0.05', '--min-sim=-1e9', *FAST)
    rows = metrics(out)
    assert [r['step'] for r in rows] == [0, 2, 4, 5]
    for r in rows:
        assert 0 <= r['eps'] <= 0.05 and 0 <= r['buffer_kept'] <= 50 and r['L_C'] is not None
        for k in ('asr', 'clean_error', 'accepted', 'filter_reject', 'broken_accepted', 'broken_passed'):
            assert 0 <= r[k] <= 1, k  # the mechanism, next to U's own error
        assert r['broken_rejected'] is None  # nothing rejected at --min-sim=-1e9; the reader judged every candidate
        assert r['asr_intact'] is None or 0 <= r['asr_intact'] <= 1
        phases = r['phase_time']  # where the step's time went: every phase of the game did work
        assert list(phases) == ['data', 'challenge', 'mine', 'understand'] and min(phases.values()) > 0
        assert abs(sum(phases.values()) - r['step_time']) < 1e-6
    # Eq. 6 as written: U learns from this step's accepted candidates and from B's entries mined earlier, and under
    # the defaults B keeps entries across steps (a consumed B was empty again after every step)
    assert rows[0]['hard_fresh'] > 0 and rows[0]['hard_replayed'] == 0  # nothing mined before step 0
    assert all(r['hard_fresh'] > 0 and r['hard_replayed'] > 0 for r in rows[1:])
    assert rows[0]['buffer_kept'] == 0 < rows[1]['buffer_kept'] < rows[-1]['buffer_kept']  # B after the replay
    buf = torch.load(os.path.join(out, 'rank0.pt'), weights_only=True)['buffer']
    assert len(set(buf['steps'])) >= 2 and all(t.dtype == torch.float32 for t in buf['images'])
    for name in ('config.json', 'ckpt.pt', 'rank0.pt', 'adapter/adapter_config.json'):
        assert os.path.exists(os.path.join(out, name)), name


def test_buffer_policies(base, tmp_path):
    """consume: replay takes entries out (at most 4 kept per step here, 4 replayed), so B holds only what the last
    step pushed, is empty after each replay, and what it handed out is kept aside; keep and rescore: B holds entries
    of several steps, and rescore sets a replayed entry's H to U's CE on it now, keep leaves H as mined."""
    flags = ['--init', base, '--steps', '3', '--min-sim=-1e9', *FAST, '--batch-size', '4', '--log-every', '1']
    for policy in ('consume', 'keep', 'rescore'):
        run('--out_dir', str(tmp_path / policy), '--buffer-policy', policy, *flags)
    consumed = torch.load(str(tmp_path / 'consume' / 'rank0.pt'), weights_only=True)['buffer']
    assert set(consumed['steps']) == {2} and len(consumed['spent']['images']) > 0
    assert [r['buffer_kept'] for r in metrics(str(tmp_path / 'consume'))] == [0, 0, 0]  # measured after the replay
    buffers = {}
    for policy in ('keep', 'rescore'):
        buf = buffers[policy] = torch.load(str(tmp_path / policy / 'rank0.pt'), weights_only=True)['buffer']
        assert set(buf['steps']) == {0, 1, 2}, policy
        last = metrics(str(tmp_path / policy))[-1]
        assert last['buffer_kept'] > 0 and last['H_mean'] is not None and abs(last['H_mean']) < float('inf')
    # the same runs up to B's bookkeeping: step 0's entries, replayed at step 1, differ in H only where rescored
    mined = {policy: sorted(h for h, t in zip(buf['hardness'], buf['steps']) if t == 0)
             for policy, buf in buffers.items()}
    assert len(mined['keep']) == len(mined['rescore']) > 0 and mined['keep'] != mined['rescore']


def test_token_space_ablation_buffers_perturbed_tokens(base, tmp_path):
    """Table 4's embedding-only rows: B holds z + delta itself (float tokens), filtered by token cosine."""
    out = str(tmp_path / 'tok')
    run('--init', base, '--out_dir', out, '--steps', '4', '--space', 'token', '--filter', 'cosine', '--min-sim', '0.5',
        '--buffer-policy', 'keep', *FAST)
    buf = torch.load(os.path.join(out, 'rank0.pt'), weights_only=True)['buffer']
    assert buf['space'] == 'token' and buf['images']
    assert all(t.dtype == torch.float32 and t.shape == (36, 128) for t in buf['images'])


def test_no_buffer_learns_from_the_steps_hard_candidates_at_once(base, tmp_path):
    """--buffer-size 0 (Table 4's rows without B) is not SFT: the candidates mined at step 0 enter that step's L_U,
    so with the same weights, batch and no dropout, L_U = clean CE + beta * CE(hard) exceeds SFT's clean CE."""
    sft, ug = str(tmp_path / 'sft'), str(tmp_path / 'nobuf')
    common = ['--init', base, '--steps', '1', '--lora-dropout', '0', *FAST]
    run('--out_dir', sft, '--mode', 'sft', *common)
    run('--out_dir', ug, '--buffer-size', '0', '--filter', 'none', '--perturb', 'random', '--eps', '2', *common)
    assert metrics(ug)[0]['L_U'] > metrics(sft)[0]['L_U'] + 1e-3
    assert metrics(ug)[0]['asr'] is not None and metrics(ug)[0]['buffer_kept'] == 0


def test_positive_controls_learn_from_pgd_and_augmented_rows(base, tmp_path):
    """--mode pgd and --mode augment are Eq. 6 with other hard rows: every clean row gets its PGD (or augmented)
    image beside it, weighted by beta, so with the same weights, batch and no dropout their L_U exceeds SFT's clean CE
    (PGD by more: it ascends the same loss); no C, no buffer, no judge."""
    common = ['--init', base, '--steps', '1', '--lora-dropout', '0', *FAST]
    losses = {}
    for mode in ('sft', 'pgd', 'augment'):
        out = str(tmp_path / mode)
        run('--out_dir', out, '--mode', mode, '--pgd-steps', '3', *common)
        row = metrics(out)[0]
        losses[mode] = row['L_U']
        assert row['L_C'] is None and row['buffer_kept'] == 0
        assert row['hard_fresh'] == (0 if mode == 'sft' else 8)  # one hard row per clean row of the batch of 8
    assert losses['pgd'] > losses['augment'] > losses['sft']


@pytest.mark.parametrize('kind', ['clip', 'cosine'])
def test_the_filter_scale_puts_zero_at_a_one_word_edit(base, tmp_path, kind):
    """--filter-zero edit (the default) calibrates the filter's 0 at the judge's score of G(z) against a label-breaking
    edit (clip: its caption one shape or colour word away; cosine: its scene rendered with one object edited): nearer
    the clean score than another scene's caption or image is (--filter-zero scene)."""
    zeros = {}
    for zero in ('edit', 'scene'):
        r = run('--init', base, '--out_dir', str(tmp_path / zero), '--steps', '1', '--filter', kind,
                '--filter-zero', zero, *FAST)
        line = next(l for l in r.stdout.splitlines() if l.startswith(f'filter scale ({kind})'))
        edited = 'its caption, one word edited' if kind == 'clip' else 'its scene, one object edited'
        assert (edited if zero == 'edit' else 'another scene') in line, line
        one, nought = (float(v.split()[0]) for v in line.split('= ')[1:3])
        zeros[zero] = (one, nought)
    assert zeros['edit'][0] == zeros['scene'][0]  # the same 1: the clean decode with its own caption or original
    assert zeros['scene'][1] < zeros['edit'][1] < zeros['edit'][0]


@pytest.fixture(scope='module')
def open_clip_dir(tmp_path_factory):
    """A real-CLIP judge as a user passes one, built offline: open_clip's CLIP class at a tiny config with open_clip's
    own BPE tokenizer, in the layout of a downloaded open_clip hub folder (open_clip_config.json beside
    open_clip_pytorch_model.bin), taught on train captions for 150 steps (about 20 s) so that it can be calibrated."""
    import contextlib
    import io
    import open_clip
    import pretrain
    from judge import Judge
    d = tmp_path_factory.mktemp('clip')
    cfg = dict(embed_dim=64, vision_cfg=dict(image_size=36, layers=2, width=64, head_width=32, patch_size=6),
               text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2))
    (d / 'open_clip_config.json').write_text(json.dumps(dict(model_cfg=cfg)))
    torch.manual_seed(0)
    judge = Judge(open_clip.create_model(f'local-dir:{d}'), open_clip.get_tokenizer(f'local-dir:{d}'))
    pretrain.train_judge(judge, data.ShapesVQA('train', 2000), steps=150, batch_size=32, lr=2e-3, seed=0,
                         ctx=contextlib.nullcontext(), metrics=io.StringIO(), n_negatives=1)
    torch.save(judge.model.state_dict(), d / 'open_clip_pytorch_model.bin')
    return str(d)


def test_an_open_clip_judge_from_a_local_folder_filters_the_candidates(base, open_clip_dir, tmp_path):
    """--judge local-dir:DIR loads the folder's CLIP (not the base's judge.pt), calibrates the filter's scale on it and
    gates the candidates with its scores: at --min-sim=-1e9 it rejects none, at --min-sim 1e9 every one."""
    rejected = {}
    for min_sim in ('-1e9', '1e9'):
        out = str(tmp_path / min_sim)
        r = run('--init', base, '--out_dir', out, '--steps', '2', '--judge', f'local-dir:{open_clip_dir}',
                f'--min-sim={min_sim}', *FAST)
        assert any(l.startswith('filter scale') for l in r.stdout.splitlines()), r.stdout[-1000:]
        rows = metrics(out)
        assert len(rows) == 2 and all(r['L_C'] is not None for r in rows)
        rejected[min_sim] = [r['filter_reject'] for r in rows]
    assert rejected == {'-1e9': [0.0, 0.0], '1e9': [1.0, 1.0]}
    bad = run('--init', base, '--out_dir', str(tmp_path / 'bad'), '--steps', '1', '--judge',
              f'local-dir:{tmp_path}', *FAST, ok=False)  # a folder without open_clip_config.json: one clear line
    assert bad.returncode == 2 and 'Traceback' not in bad.stderr and 'open_clip_config.json' in bad.stderr


def test_k_candidates_per_sample_are_mined(base, tmp_path):
    """--candidates 2 with random noise: each sample's two candidates differ, all 2B are scored and can be kept."""
    out = str(tmp_path / 'k2')
    run('--init', base, '--out_dir', out, '--steps', '1', '--candidates', '2', '--perturb', 'random', '--eps', '0.5',
        '--filter', 'none', '--hard-quantile', '0.01', '--buffer-size', '50', *FAST)
    buf = torch.load(os.path.join(out, 'rank0.pt'), weights_only=True)['buffer']
    assert len(buf['questions']) > 8  # more than the batch of 8: several candidates per sample were kept
    images = torch.stack(buf['images']).flatten(1)
    assert len(torch.unique(images, dim=0)) == len(images)  # and no two of them are the same picture


def test_sft_and_bf16_runs(base, tmp_path):
    run('--init', base, '--out_dir', str(tmp_path / 'sft'), '--mode', 'sft', '--steps', '3', *FAST)
    run('--init', base, '--out_dir', str(tmp_path / 'bf16'), '--steps', '3', '--dtype', 'bfloat16', *FAST)
    sft, game = metrics(str(tmp_path / 'sft'))[-1], metrics(str(tmp_path / 'bf16'))[-1]
    assert all(v is None or v == v for v in game.values())  # no NaN
    assert sft['L_C'] is None  # no game in SFT: next to a UniGame step, nothing billed to challenge or mining
    game_time = lambda m: m['phase_time']['challenge'] + m['phase_time']['mine']  # noqa: E731
    assert game_time(sft) < 0.1 * game_time(game)


def test_float16_loss_scaling_with_two_c_steps_and_a_skipped_u_step(base, tmp_path):
    """float16 autocast scales losses (a GradScaler on the run's own device, here the CPU): two C steps per U step
    (--updates 2:1) and a skipped U step each used to break it (step() twice before update(); update() with no
    step). Both now run; a diverging run still stops with the non-finite message, not an AssertionError."""
    out = str(tmp_path / 'fp16')
    run('--init', base, '--out_dir', out, '--steps', '3', '--dtype', 'float16', '--updates', '2:1', *FAST)
    assert metrics(out)[-1]['L_C'] is not None
    scale = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['scaler']['scale']
    assert 0 < scale <= 2.0 ** 16  # the scaler ran (its state is saved) and did not blow up
    r = run('--init', base, '--out_dir', str(tmp_path / 'skip'), '--mode', 'sft', '--steps', '6', '--dtype', 'float16',
            '--und-lr', '1e30', *FAST, ok=False)
    assert 'non-finite' in r.stdout + r.stderr and 'AssertionError' not in r.stderr


def test_per_role_gradient_clipping_binds(base, tmp_path):
    """--clip-grad-u clips U's LoRA gradient in float32 before AdamW: at 1e-12, far below AdamW's eps, U stays where
    it started while C (not clipped) moves; without it both move."""
    runs = {}
    for name, flags in (('clipped', ['--clip-grad-u', '1e-12']), ('free', [])):
        out = str(tmp_path / name)
        run('--init', base, '--out_dir', out, '--steps', '3', '--min-sim=-1e9', *flags, *FAST)
        runs[name] = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    lora_b = lambda ckpt: max(v.abs().max().item() for k, v in ckpt['trainable'].items() if 'lora_B' in k)
    assert lora_b(runs['clipped']) < 1e-7 < 1e-5 < lora_b(runs['free'])  # peft starts lora_B at zero; 3 x lr 2e-5
    assert abs(runs['clipped']['perturber']['theta'].item()) > 1e-4  # C's gate moved off its start (logit 0)


def test_diffusion_decoder_runs_the_game(base, tmp_path):
    """--decoder diffusion: candidates come from the UNet img2img branch (new, untrained modules on this base, whose
    noise no judge can calibrate on: --filter none)."""
    out = str(tmp_path / 'diff')
    r = run('--init', base, '--out_dir', out, '--steps', '2', '--decoder', 'diffusion', '--filter', 'none',
            '--buffer-policy', 'keep', *FAST)
    assert json.load(open(os.path.join(out, 'config.json')))['decoder'] == 'diffusion'
    assert metrics(out)[-1]['buffer_kept'] > 0 and 'UNet' in r.stdout  # load_base names the new parts


def test_lora_targets_place_the_adapter_and_the_suite_reloads_it(base, tmp_path):
    """--lora-targets gate_proj puts LoRA on the LM's MLP gate only; evaluate.load_checkpoint rebuilds the same
    placement from config.json and loads the run's adapter into it."""
    import evaluate
    out = str(tmp_path / 'mlp')
    run('--init', base, '--out_dir', out, '--steps', '2', '--mode', 'sft', '--lora-targets', 'gate_proj', *FAST)
    saved = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['trainable']
    assert saved and all('gate_proj' in k for k in saved)
    umm, _ = evaluate.load_checkpoint(out)
    loaded = {n: q for n, q in umm.named_parameters() if 'lora_' in n}
    assert len(loaded) == len(saved)
    assert any(q.abs().max() > 0 for n, q in loaded.items() if 'lora_B' in n)  # the run's weights, not peft's zeros


def test_two_ddp_ranks_keep_identical_weights(base, tmp_path):
    out = str(tmp_path / 'ddp')
    run('--init', base, '--out_dir', out, '--steps', '4', '--min-sim=-1e9', '--buffer-policy', 'keep', *FAST,
        launcher=(sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2'))
    r0, r1 = (torch.load(os.path.join(out, f'rank{r}.pt'), weights_only=True) for r in (0, 1))
    assert r0['weights_sha256'] == r1['weights_sha256']
    assert r0['buffer']['questions'] and r0['buffer']['questions'] != r1['buffer']['questions']  # own data, own B


@pytest.mark.parametrize('backbone', ['tiny-toy', 'tiny-janus'])
def test_a_nan_on_one_ddp_rank_is_skipped_by_both(base, tmp_path, backbone):
    """U's loss NaN on rank 1 only, for a few calls (tests/nan_on_one_rank.py): both ranks skip the same updates, the
    run neither hangs nor diverges, and the ranks still hold identical weights at the end."""
    out = str(tmp_path / 'ddp')
    flags = ['--init', base] if backbone == 'tiny-toy' else ['--backbone', 'tiny-janus', '--filter', 'none']
    env = {**os.environ, 'NAN_CALLS': '4:6'}  # calls 4-6: in the challenge, mining and understand steps of step 1
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(ROOT, 'tests', 'nan_on_one_rank.py'), os.path.join(ROOT, 'train.py'), *flags,
                        '--out_dir', out, '--steps', '3', '--min-sim=-1e9', *FAST],
                       capture_output=True, text=True, cwd=ROOT, env={**env, 'OMP_NUM_THREADS': '1'}, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'non-finite L_U at step 1' in r.stdout + r.stderr  # rank 0's loss was finite: the decision was shared
    r0, r1 = (torch.load(os.path.join(out, f'rank{r}.pt'), weights_only=True) for r in (0, 1))
    assert r0['weights_sha256'] == r1['weights_sha256']
    rows = metrics(out)
    assert [row['step'] for row in rows] == [0, 2] and all(math.isfinite(row['L_U']) for row in rows)


@pytest.mark.parametrize('flags, named', [
    (['--gen-lr', '-1'], '--gen-lr'), (['--eps', '0'], '--eps'), (['--updates', '0:1'], '--updates'),
    (['--backbone', 'tiny-tyo'], '--backbone'), (['--init', 'no/such/dir'], '--init'),
    (['--hard-quantile', '1.5'], '--hard-quantile'), (['--space', 'token', '--filter', 'clip'], '--filter'),
    (['--backbone', 'tiny-janus', '--init', 'no/such/dir', '--steps', '1'], '--judge'),
    (['--candidates', '2'], '--candidates'), (['--candidates', '0'], '--candidates'),
    (['--clip-grad-u', '-1'], '--clip-grad-u'), (['--asr-every', '0'], '--asr-every'),
    (['--resume', '--out_dir', 'no/such/run'], '--resume'), (['--reader', 'no/such/reader.pt'], '--reader'),
    (['--backbone', 'tiny-janus', '--filter', 'none', '--reader', 'weights/tiny-toy/reader.pt'], '--reader'),
    (['--mode', 'pgd', '--pgd-steps', '0'], '--pgd-steps'), (['--mode', 'pgd', '--pgd-eps', '-8'], '--pgd-eps'),
    (['--train-min-objects', '0'], '--train-min-objects'), (['--train-families', 'count,colour'], '--train-families'),
    (['--mode', 'pretrain', '--backbone', 'tiny-janus'], '--backbone'),
    (['--data', 'vqav2', '--filter-zero', 'edit'], '--filter-zero'),
    (['--backbone', 'tiny-janus', '--filter', 'none', '--decode', 't2i'], '--decode'),  # C learns on the states it
    (['--backbone', 'tiny-janus', '--filter', 'none', '--attack', 'token'], '--attack')])  # perturbs when mining
def test_bad_flags_fail_naming_the_flag(flags, named, capsys, monkeypatch):
    """config.parse, train.py's first act, in this process (a train.py subprocess per case cost 13 s of imports):
    a bad flag, a bad combination or a missing file stops with argparse's exit 2 and a line naming the flag."""
    import config
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        config.parse(argv=flags)
    assert e.value.code == 2 and f"error: {named}" in capsys.readouterr().err  # the usage above names every flag


@pytest.mark.parametrize('flags, named, launcher', [
    (['--gen-lr', '-1'], '--gen-lr', (sys.executable,)),  # the command line itself: no traceback there either
    (['--lora-targets', 'q_proj,nope_proj'], '--lora-targets', None),
    (['--lora-targets', ','], '--lora-targets', None)])
def test_bad_flags_on_the_command_line_fail_naming_the_flag(flags, named, launcher):
    """The same from `python train.py` (one case on the command line, the others run as the interpreter would run
    them, in this process), for the flags checked once the backbone is built (LoRA's placement)."""
    r = run(*flags, ok=False, launcher=launcher)
    assert r.returncode == 2 and f"error: {named}" in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
