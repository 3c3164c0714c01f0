"""Pretraining the tiny-toy base (pretrain.py): the lr schedule, a smoke run that lowers every loss and reports the
base against its targets, and a judge that comes out the same however long the UMM trains.
Run: python -m pytest -q tests/test_pretrain.py   (about a minute on 2 cores)"""

import json
import os

import pytest
import torch

import pretrain


def test_set_lr_warms_up_decays_to_a_tenth_and_scales_each_group():
    w = [torch.zeros(1, requires_grad=True) for _ in range(2)]
    opt = torch.optim.AdamW([dict(params=w[:1]), dict(params=w[1:], lr_scale=3.0)], lr=0.5)
    seen = []
    for step in (0, 9, 30, 55, 99):
        pretrain.set_lr(opt, 1e-3, step, steps=100, warmup=10)
        seen.append([g['lr'] for g in opt.param_groups])
    lm, decoder = zip(*seen)
    assert lm[0] == pytest.approx(1e-4) and lm[1] == pytest.approx(1e-3)  # linear warm-up: (step + 1) / warmup
    assert lm[2] < lm[1] and lm[3] == pytest.approx(0.55e-3) and lm[4] == pytest.approx(1e-4, rel=1e-2)  # cosine
    assert decoder == pytest.approx([3 * x for x in lm])


def test_pretrain_smoke_run_lowers_every_loss(tmp_path):
    out = str(tmp_path / 'base')
    pretrain.pretrain(out, steps=30, batch_size=16, warmup=5, judge_steps=30, judge_batch=16, train_size=480,
                      val_size=16, eval_every=1000, report_size=32)
    rows = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    umm_rows, judge_rows = [r for r in rows if 'step' in r], [r for r in rows if 'judge_step' in r]
    first, last = umm_rows[0], umm_rows[-1]
    assert first['step'] == 0 and last['step'] == 29 and 'val' in last
    for key in ('und', 'cap', 'gen', 't2i'):
        assert last[key] < first[key], key
    assert judge_rows[0]['judge_step'] == 0 and judge_rows[-1]['judge_step'] == 29
    assert judge_rows[-1]['judge'] < judge_rows[0]['judge']
    assert os.path.isfile(os.path.join(out, 'base.pt')) and os.path.isfile(os.path.join(out, 'judge.pt'))
    report = json.load(open(os.path.join(out, 'report.json')))  # the base against its targets, on 32 val questions
    assert report['size'] == 32 and set(report['met']) == {'all', 'spatial', 'family_margin', 'reread_gap',
                                                             't2i_ranking'}
    assert not report['met']['all']  # 30 steps are far from 0.90
    assert 0 <= report['edit_ranking'] <= 1  # the judge's edit ranking is reported beside the targets


def test_judge_training_does_not_depend_on_the_umm(tmp_path):
    """The buffer's min-sim was chosen on a judge; the judge must come out the same however long the UMM trains."""
    judges = []
    for steps in (2, 4):
        out = str(tmp_path / f'base{steps}')
        pretrain.pretrain(out, steps=steps, batch_size=8, gen_batch=4, judge_steps=3, judge_batch=8, train_size=64,
                          val_size=8, eval_every=1000, report_size=0)
        judges.append(torch.load(os.path.join(out, 'judge.pt'), weights_only=True)['state_dict'])
    assert judges[0].keys() == judges[1].keys()
    for k in judges[0]:
        assert torch.equal(judges[0][k], judges[1][k]), k
    umm_a, umm_b = (torch.load(str(tmp_path / f'base{s}' / 'base.pt'), weights_only=True)['state_dict'] for s in (2, 4))
    assert any(not torch.equal(umm_a[k], umm_b[k]) for k in umm_a)  # the UMMs did train differently


def test_an_interrupted_pretraining_resumes_to_the_same_base(tmp_path, monkeypatch):
    """Stopped after step 4 (its save at 4 kept), resumed: the same base.pt and judge.pt as a run never stopped, and
    metrics.jsonl holds each step once."""
    small = dict(steps=6, batch_size=8, gen_batch=4, judge_steps=3, judge_batch=8, train_size=64, val_size=8,
                 eval_every=1000, report_size=0, save_every=2)
    pretrain.pretrain(str(tmp_path / 'a'), **small)
    set_lr = pretrain.set_lr

    def stop_at_step_5(opt, lr, step, steps, warmup):  # Ctrl-C in the middle of step 5
        if step == 5:
            raise KeyboardInterrupt
        return set_lr(opt, lr, step, steps, warmup)
    monkeypatch.setattr(pretrain, 'set_lr', stop_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(str(tmp_path / 'b'), **small)
    monkeypatch.setattr(pretrain, 'set_lr', set_lr)
    assert torch.load(str(tmp_path / 'b' / 'pretrain_ckpt.pt'), weights_only=False)['step'] == 4
    assert not os.path.exists(tmp_path / 'b' / 'metrics.jsonl')  # a base rebuilt in place keeps its files till the end
    with pytest.raises(ValueError, match='another pretraining run'):
        pretrain.pretrain(str(tmp_path / 'b'), **dict(small, seed=1), resume=True)
    pretrain.pretrain(str(tmp_path / 'b'), **small, resume=True)
    for name in ('base.pt', 'judge.pt'):
        a, b = (torch.load(str(tmp_path / d / name), weights_only=True)['state_dict'] for d in 'ab')
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    steps = [json.loads(line).get('step') for line in open(tmp_path / 'b' / 'metrics.jsonl')]
    assert [s for s in steps if s is not None] == [0, 5]  # logged every 10 steps and at the last: once each
    assert not os.path.exists(tmp_path / 'b' / 'pretrain_ckpt.pt')  # done: nothing left to resume
