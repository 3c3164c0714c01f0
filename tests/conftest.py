"""Fixtures shared by test files: a run directory over a fresh tiny-toy base (test_evaluate.py, test_plots.py)."""
import json
import os

import pytest
import torch

import data
import toy_base
import toy_umm
from judge import Judge

if os.environ.get('PYTEST_XDIST_WORKER'):  # pytest.ini's two workers share the cores: one thread each
    torch.set_num_threads(1)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A fresh tiny-toy base (base.pt + judge.pt) and a run dir over it whose LoRA weights are random, not zero."""
    root = tmp_path_factory.mktemp('runs')
    torch.manual_seed(0)
    umm = toy_umm.build_tiny_toy()
    toy_base.save_base(umm, str(root / 'base'))
    Judge.tiny(data.VOCAB).save(str(root / 'base' / 'judge.pt'))
    umm.add_lora(r=4, alpha=8, dropout=0.0)  # not the defaults: the loader must read them from config.json
    with torch.no_grad():
        for p in umm.understanding_parameters():  # peft starts lora_B at zero, which would equal the base
            p.normal_(0, 0.5)
    umm.save_trainable(str(root / 'run' / 'adapter'))
    with open(root / 'run' / 'config.json', 'w') as f:
        json.dump(dict(backbone='tiny-toy', init=str(root / 'base'), lora_r=4, lora_alpha=8, lora_dropout=0.0), f)
    return root, umm.eval()
