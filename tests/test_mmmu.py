"""MMMU's answer parsing and scoring (mmmu.py) against hand-worked values from the official rules (MMMU-Benchmark/MMMU
eval/eval_utils.py). Every expected value below is derived in the comment next to it, never taken from the code under
test. Run: python -m pytest -q tests/test_mmmu.py"""

import random

import pytest

import mmmu as M

ALL, IDX = M.mmmu_choices(['blue one', 'red one', 'green one', 'five apples'])


def test_mmmu_choices():
    assert ALL == ['A', 'B', 'C', 'D'] and IDX['B'] == 'red one'


@pytest.mark.parametrize('response, expected', [
    ('(B)', 'B'),
    ('B.', 'B'),                                      # outer '.' stripped, then " B " matches
    ('B', 'B'),
    ('The answer is (C) green one', 'C'),
    ('(A) is wrong, so (B)', 'B'),                    # several bracketed: the last one
    ('A and B', 'B'),                                 # several bare letters: the last one
    ('I would pick the red one here', 'B'),           # > 5 words, option text matched
])
def test_mmmu_parse_multi_choice(response, expected):
    assert M.parse_multi_choice_response(response, ALL, IDX) == expected


@pytest.mark.parametrize('response', ['no idea', 'blue one then red one'])  # the 2nd: 5 words, so no text matching
def test_mmmu_parse_multi_choice_random_fallback_uses_rng(response):
    draws = [M.parse_multi_choice_response(response, ALL, IDX, rng=random.Random(s)) for s in range(20)]
    assert draws == [random.Random(s).choice(ALL) for s in range(20)]  # the same draws, made independently


def test_mmmu_parse_open_numbers():
    # "the answer is 1,000": tails after 'is ' -> "1,000", after 'answer ' -> "is 1,000"; shortest "1,000".
    # numbers: comma pattern "1,000"; plain pattern "000" (the tail after the comma). -> {1000.0, 0.0}
    assert sorted(M.parse_open_response('The answer is 1,000.')) == [0.0, 1000.0]
    # last line also splits on '=': tail "3.14159" -> round(3.14159, 2) = 3.14
    assert M.parse_open_response('x = 3.14159') == [3.14]
    # comma pattern: "12,345,678"; scientific: "-2.5e3"; the plain pattern then also finds "-2" (before ".5e3", which
    # it may not take), "3" (the exponent), "678" (a comma number's tail) and ".5"
    assert M.mmmu_extract_numbers('-2.5e3 and 12,345,678 or .5') == ['12,345,678', '-2.5e3', '-2', '3', '678', '.5']


def test_mmmu_parse_open_text():
    # no indicator in "Red" -> the whole (lower-cased) response
    assert M.parse_open_response('Red') == ['red']
    # 'so ' -> "the color is red"; 'is ' -> "red" (shorter) -> ['red']
    assert M.parse_open_response('So the color is Red.') == ['red']


@pytest.mark.parametrize('gold, pred_text, expected', [
    ('1000', 'The answer is 1,000.', True),
    ('0', 'The answer is 1,000.', True),       # quirk: the spurious "000" parses as 0.0
    ('3.14', 'x = 3.14159', True),             # both sides rounded to 2 decimals
    ('3.15', 'x = 3.14159', False),
    ('red', 'So the color is Red.', True),     # substring of the parsed text
    (['blue', 'red'], 'the color is red', True),
    ('r', 'the color is red', False),          # single characters become ' r' / 'r ': not inside "red"
])
def test_mmmu_eval_open(gold, pred_text, expected):
    assert M.eval_open(gold, M.parse_open_response(pred_text)) is expected


def test_mmmu_eval_multi_choice_and_accuracy():
    assert M.eval_multi_choice('B', 'B') and not M.eval_multi_choice('A', 'B')
    assert M.eval_multi_choice(['A', 'B'], 'B')
    samples = [{'question_type': 'multiple-choice', 'answer': 'B', 'parsed_pred': 'B'},
               {'question_type': 'multiple-choice', 'answer': 'A', 'parsed_pred': 'C'},
               {'question_type': 'open', 'answer': '1000', 'parsed_pred': [1000.0]}]
    assert M.mmmu_accuracy(samples) == pytest.approx(2 / 3)
    assert M.mmmu_accuracy([]) == 0.0
    with pytest.raises(ValueError, match='parsed_pred'):
        M.mmmu_accuracy([{'question_type': 'open', 'answer': '1'}])
