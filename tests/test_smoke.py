"""The full-size smoke run's path (smoke.py) at tiny sizes, end to end: build with random weights, save_pretrained with
an offline tokenizer, load as a user does (Janus: `--backbone DIR`; toy: `--backbone toy` from a Hugging Face cache),
every tensor compared, regen vs t2i per candidate, one UniGame step of train.py in bf16 autocast, the printed report.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_smoke.py   (about a minute on 2 cores: train.py starts twice)"""

import pytest
import torch

import smoke


@pytest.mark.parametrize('name', ['tiny-janus', 'tiny-toy'])
def test_the_smoke_path_runs_end_to_end(name, capsys):
    r = smoke.main(name, [])
    out = capsys.readouterr().out
    assert r['tensors'] > 50  # every saved tensor was compared with the loaded one (same_weights raises otherwise)
    assert f"{r['tensors']} saved tensors equal the loaded ones" in out
    assert set(r['phases']) == {'data', 'challenge', 'mine', 'understand'}
    assert all(t > 0 for t in r['phases'].values()) and r['row']['step_time'] > 0
    # the three phases did their work: C stepped (L_C), mining kept the harder of the 2 candidates (H at or above the
    # 60th percentile), and U learnt from it beside the 2 clean rows
    assert r['row']['L_C'] is not None and r['row']['accepted'] >= 0.5 and r['row']['hard_fresh'] >= 1
    assert set(r['decode']) == ({'regen', 't2i'} if name == 'tiny-janus' else {'decode', 'generate'})
    assert all(t > 0 for t in r['decode'].values()) and r['peak_mb'] > 100
    for phase in r['phases']:
        assert f"{phase} {r['phases'][phase]:.1f}s" in out
    assert 'bfloat16 autocast' in out and 'peak resident memory' in out


def test_same_weights_names_the_tensor_that_differs():
    saved = {'w': torch.ones(2, dtype=torch.bfloat16), 'b': torch.zeros(1)}
    loaded = {'w': torch.ones(2), 'b': torch.zeros(1)}  # float32 on load (Janus' generation head): compared as saved
    assert smoke.same_weights(saved, loaded) == 2
    with pytest.raises(AssertionError, match='w differs'):
        smoke.same_weights(saved, {**loaded, 'w': torch.tensor([1.0, 1.001])})
    with pytest.raises(AssertionError, match='b was saved but is not'):
        smoke.same_weights(saved, {'w': loaded['w']})


def test_the_tokenizer_must_fit_the_vocabulary():
    import tiny_janus
    tok = tiny_janus.janus_word_tokenizer()
    smoke.check_vocabulary(tok, 102400)  # Janus-Pro's vocabulary
    with pytest.raises(ValueError, match='outside the LM'):
        smoke.check_vocabulary(tok, len(tok) - 1)
