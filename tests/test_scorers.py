"""Benchmark scorers against hand-worked values from the official scoring rules (see scorers.py for the sources).
Every expected number below is derived in the comment next to it, never taken from the code under test. MMMU's:
tests/test_mmmu.py. Run: python -m pytest -q tests/test_scorers.py"""

import pytest

import scorers as S

# ---------------------------------------------------------------------------------------------------------------------
# VQAv2 soft accuracy. With 10 answers of which k equal the (normalised) prediction, annotator i sees the other 9:
# the 10-k non-matching annotators see k matches, the k matching ones see k-1, so
#     acc = [(10-k) * min(1, k/3) + k * min(1, (k-1)/3)] / 10
# k=1: (9 * 1/3 + 1 * 0) / 10 = 0.3     k=2: (8 * 2/3 + 2 * 1/3) / 10 = (16/3 + 2/3) / 10 = 0.6
# k=3: (7 * 1 + 3 * 2/3) / 10 = 0.9     k>=4: every annotator sees >= 3 matches -> 1.0


def _answers(match, k, other='zzz'):
    return [match] * k + [other] * (10 - k)


@pytest.mark.parametrize('k, expected', [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_leave_one_out(k, expected):
    assert S.vqa_accuracy('dog', _answers('dog', k)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize('prediction, answers, expected', [
    ('yes.', _answers('yes', 2), 0.6),            # trailing period stripped (not followed by a digit) -> "yes", k=2
    ('two', _answers('2', 3), 0.9),               # "two" -> "2", k=3
    ('2', _answers('two', 3), 0.9),               # the answers are normalised too
    ('a dog', _answers('dog', 2), 0.6),           # article dropped, k=2
    ('The Dog', _answers('dog', 2), 0.6),         # lower-cased, article dropped
    ('dont', _answers("don't", 1), 0.3),          # contraction table: "dont" -> "don't", k=1
    ('1,000', _answers('1000', 2), 0.6),          # digit,digit anywhere -> punctuation deleted, "1000", k=2
    ('1.5', _answers('1.5', 3), 0.9),             # a period before a digit is kept
    ('red/blue', _answers('red blue', 3), 0.9),   # "/" not touching a space becomes a space
    ('red / blue', _answers('red blue', 3), 0.9),  # "/" touching a space is deleted, split/join squeezes spaces
    ('yes!', _answers('yes', 2), 0.6),            # "!" becomes a space, then split/join drops it
])
def test_vqa_normalisation_when_answers_disagree(prediction, answers, expected):
    assert S.vqa_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize('prediction, expected', [
    ('yes', 1.0),       # exact match, all 10 see 9 others matching
    ('yes\n', 1.0),     # newlines/tabs/outer spaces are always stripped
    ('  yes\t', 1.0),
    ('Yes', 0.0),       # unanimous answers: no normalisation at all, so case matters ...
    ('yes.', 0.0),      # ... and so does the period
])
def test_vqa_unanimous_answers_are_compared_exactly(prediction, expected):
    assert S.vqa_accuracy(prediction, ['yes'] * 10) == expected


@pytest.mark.parametrize('prediction, answers, expected', [
    ('two', ['2'] * 10, 0.0),                # unanimous: "two" is not mapped to "2" ...
    ('a dog', ['dog'] * 10, 0.0),            # ... nor the article dropped ...
    ('dont', ["don't"] * 10, 0.0),           # ... nor the contraction restored
    ('YES', ['yes'] * 9 + ['Yes'], 1.0),     # "Yes" != "yes" before normalising, so not unanimous: all ten become
                                             # "yes", the prediction too, and every annotator sees 9 matches
    ('2.', _answers('2', 3), 0.9),           # a trailing period after a digit goes too (not followed by a digit), k=3
])
def test_vqa_unanimity_is_decided_on_the_raw_answers(prediction, answers, expected):
    # vqaEval.py (master): the answers are only stripped of \n, \t and outer spaces before `len(set(gtAnswers)) > 1`
    assert S.vqa_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_period_strip_is_capped_at_32():
    # official quirk: periodStrip.sub("", text, re.UNICODE) passes 32 as `count`; 40 periods leave 8 behind, so
    # "x" + 8 periods != "x" -> 0 matches. A plain "remove every period" would give k=3 -> 0.9.
    assert S.vqa_accuracy('x' + '.' * 40, _answers('x', 3)) == 0.0
    assert S.vqa_accuracy('x' + '.' * 32, _answers('x', 3)) == pytest.approx(0.9, abs=1e-12)


def test_vqa_any_number_of_answers_is_averaged():
    # 3 answers ['dog', 'dog', 'cat'], prediction 'dog': annotators see 1, 1, 2 matches -> (1/3 + 1/3 + 2/3) / 3 = 4/9
    assert S.vqa_accuracy('dog', ['dog', 'dog', 'cat']) == pytest.approx(4 / 9, abs=1e-12)


def test_vqa_input_errors():
    with pytest.raises(ValueError, match='answers'):
        S.vqa_accuracy('yes', [])
    with pytest.raises(ValueError, match='answers'):
        S.vqa_accuracy('yes', 'yes')
    with pytest.raises(TypeError, match='prediction'):
        S.vqa_accuracy(None, ['yes'] * 10)


def test_vqa_score_overall_and_per_type():
    annotations = {1: ['yes'] * 10, 2: _answers('dog', 2), 3: _answers('2', 1)}
    predictions = {1: 'yes', 2: 'a dog', 3: 'three'}  # accuracies 1.0, 0.6, 0.0
    types = {1: 'yes/no', 2: 'other', 3: 'number'}
    out = S.vqa_score(predictions, annotations, types)
    assert out['overall'] == 53.33  # round(100 * 1.6 / 3, 2) = round(53.333.., 2)
    assert out['perAnswerType'] == {'yes/no': 100.0, 'other': 60.0, 'number': 0.0}
    assert S.vqa_score(predictions, annotations) == {'overall': 53.33}


def test_vqa_score_names_missing_and_extra_ids():
    annotations = {q: ['yes'] * 10 for q in range(10)}
    with pytest.raises(ValueError, match=r'3 missing \(first: \[7, 8, 9\]\)'):
        S.vqa_score({q: 'yes' for q in range(7)}, annotations)
    with pytest.raises(ValueError, match=r'1 not in annotations \(first: \[99\]\)'):
        S.vqa_score({**{q: 'yes' for q in range(10)}, 99: 'no'}, annotations)


# ---------------------------------------------------------------------------------------------------------------------
# POPE: 'no' iff the first sentence, commas removed, split on ' ', holds the word 'No', 'no' or 'not'

@pytest.mark.parametrize('text, expected', [
    ('No, there is not.', 'no'),
    ('Yes there is a dog.', 'yes'),
    ('There is no dog in the image.', 'no'),
    ('Yes. There is no cat.', 'yes'),       # only the first sentence counts
    ('The dog is not there', 'no'),
    ('NO', 'yes'),                          # case-sensitive word set
    ('Not at all', 'yes'),                  # "Not" is not in {'No', 'no', 'not'}
    ('no\nthere is none', 'yes'),           # split on single spaces only: the word is "no\nthere"
    ('', 'yes'),
])
def test_pope_parse(text, expected):
    assert S.pope_parse(text) == expected


def test_pope_scores():
    preds = ['Yes', 'yes, it is', 'No.', 'no', 'Yes there is.']
    labels = ['yes', 'no', 'no', 'yes', 'yes']
    # parsed: yes yes no no yes -> TP = items 0, 4; FP = item 1; TN = item 2; FN = item 3
    out = S.pope_scores(preds, labels)
    assert (out['TP'], out['FP'], out['TN'], out['FN']) == (2, 1, 1, 1)
    assert out['accuracy'] == pytest.approx(3 / 5)   # (TP + TN) / 5
    assert out['precision'] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert out['recall'] == pytest.approx(2 / 3)     # 2 / (2 + 1)
    assert out['f1'] == pytest.approx(2 / 3)         # 2 * (2/3)^2 / (4/3)
    assert out['yes_ratio'] == pytest.approx(3 / 5)


def test_pope_input_errors():
    with pytest.raises(ValueError, match='labels'):
        S.pope_scores(['yes'], ['Yes'])
    with pytest.raises(ValueError, match='equal'):
        S.pope_scores(['yes', 'no'], ['yes'])
    with pytest.raises(ValueError, match='true positive'):
        S.pope_scores(['no', 'no'], ['yes', 'no'])


# ---------------------------------------------------------------------------------------------------------------------
# NaturalBench

@pytest.mark.parametrize('text, task, expected', [
    ('Yes, it is.', 'yes_no', 1),
    ('No.', 'yes_no', 0),
    ("I'd say no, not yes", 'yes_no', 0),    # both present: the first one wins
    ('YES', 'yes_no', 1),                     # case-insensitive
    ('Maybe', 'yes_no', -1),                  # neither
    ('yesterday, nothing', 'yes_no', -1),     # whole words only
    ('The answer is B', 'multiple_choice', 0),
    ('(A)', 'multiple_choice', 1),
    ('a cat, so B', 'multiple_choice', 1),    # the article "a" is the first match: counts as A
    ('C', 'multiple_choice', -1),
])
def test_naturalbench_extract(text, task, expected):
    assert S.naturalbench_extract(text, task) == expected


def test_naturalbench_scores():
    # right answers are fixed by construction: [q0_i0, q0_i1, q1_i0, q1_i1] = [1, 0, 0, 1]
    groups = [[1, 0, 0, 1],    # all right: Q 2, I 2, Acc 4, G 1
              [1, 1, 0, 1],    # q0_i1 wrong: q0 fails, q1 ok -> Q 1; i0 ok, i1 fails -> I 1; Acc 3; G 0
              [-1, 0, 0, 1]]   # q0_i0 unparseable (wrong): Q 1 (q1), I 1 (i1), Acc 3, G 0
    expected = {'Q_Acc': 4 / 6, 'I_Acc': 4 / 6, 'Acc': 10 / 12, 'G_Acc': 1 / 3}
    assert S.naturalbench_scores(groups) == pytest.approx(expected)
    as_dicts = {k: dict(zip(S.NATURALBENCH_CELLS, g)) for k, g in enumerate(groups)}
    assert S.naturalbench_scores(as_dicts) == pytest.approx(expected)


def test_naturalbench_q_and_i_differ():
    # [1, 0, 1, 0]: q0 right on both images (Q 1), q1 wrong on both; i0 has q1_i0 wrong, i1 has q1_i1 wrong -> I 0
    assert S.naturalbench_scores([[1, 0, 1, 0]]) == pytest.approx({'Q_Acc': 0.5, 'I_Acc': 0.0, 'Acc': 0.5, 'G_Acc': 0})


def test_naturalbench_input_errors():
    with pytest.raises(ValueError, match='groups'):
        S.naturalbench_scores([['yes', 'no', 'no', 'yes']])
    with pytest.raises(ValueError, match='groups'):
        S.naturalbench_scores([[1, 0, 0]])
    with pytest.raises(ValueError, match='task_type'):
        S.naturalbench_extract('yes', 'open')


# ---------------------------------------------------------------------------------------------------------------------
# MMBench

OPTS = ['cat', 'dog', 'cow', 'pig']
CHOICES = dict(zip('ABCD', OPTS))


@pytest.mark.parametrize('shift, options, answer', [
    (0, ['cat', 'dog', 'cow', 'pig'], 'B'),
    (1, ['dog', 'cow', 'pig', 'cat'], 'A'),   # BCDA: dog moved from B to A
    (2, ['cow', 'pig', 'cat', 'dog'], 'D'),
    (3, ['pig', 'cat', 'dog', 'cow'], 'C'),
])
def test_mmbench_rotate(shift, options, answer):
    assert S.mmbench_rotate(OPTS, 'B', shift) == (options, answer)


@pytest.mark.parametrize('prediction, expected', [
    ('B', 'B'),
    ('(B) dog', 'B'),
    ('The answer is B.', 'B'),
    ('A dog', 'A'),                 # the article "A" is a whole-token letter
    ('dog', 'B'),                   # no letter: exactly one option text occurs
    ('It is a Dog.', 'B'),          # text matching is case-insensitive
    ('A or B', None),               # two letters, no option text
    ('a cat or a dog', None),       # lower-case "a" is not a letter; two option texts
    ("I can't process this file.", 'Z'),
    ('Z', 'Z'),
])
def test_mmbench_extract(prediction, expected):
    assert S.mmbench_extract(prediction, CHOICES) == expected


# VLMEvalKit a67ace50 can_infer_option: a letter wins alone and among the last four tokens; otherwise the first
# "answer is X" (any case, X in A-D, optional ** around it) decides; can_infer_text then skips predictions longer than
# twice the option texts together (here 2 * 12 = 24 characters)
@pytest.mark.parametrize('prediction, expected', [
    ('A is wrong; the answer is C', 'C'),                         # two letters -> the one after "answer is"
    ('A and B are close, but the correct answer is **D**.', 'D'),  # three letters; the bold marks are allowed
    ('A and B are both wrong; the answer is c', 'C'),             # the pattern ignores case
    ('A and B are wrong; the answer is dog', 'D'),                # no word boundary after X: "d(og)" reads as D
    ('A or B: it is the dog, I would say, on balance', None),     # no "answer is"; 46 chars > 24: no text step
    ('B is my pick here', None),                                  # B is 5th from the end; no option text
    ('A dog is sitting next to the barn', None),                  # A is 7th from the end; 33 chars: no text step
])
def test_mmbench_extract_several_letters(prediction, expected):
    """Rules of VLMEvalKit a67ace50 (#1552, unchanged through 2cf2a36c): the "answer is X" fallback (first four cases),
    the length guard on text matching (fifth and last) and the last-four-tokens guard (last two), from c3371551."""
    assert S.mmbench_extract(prediction, CHOICES) == expected


def test_mmbench_circular_all_or_nothing():
    def passes(predictions):  # the right option is always "dog"
        return [(p, dict(zip('ABCD', S.mmbench_rotate(OPTS, 'B', k)[0])), S.mmbench_rotate(OPTS, 'B', k)[1])
                for k, p in enumerate(predictions)]
    right = passes(['B', 'A', 'D', 'C'])          # follows dog around
    one_wrong = passes(['B', 'A', 'D', 'A'])      # last pass names the wrong letter
    unparsed = passes(['B', 'A', 'D', 'hmm'])     # last pass cannot be matched -> wrong
    by_text = passes(['dog', 'dog', 'dog', 'dog'])
    assert S.mmbench_circular_accuracy([right, one_wrong, unparsed, by_text]) == 2 / 4
    assert S.mmbench_circular_accuracy({'q1': one_wrong}) == 0.0


def test_normalize_answer_is_the_vqa_normalisation_train_py_compares():
    """Free-form answers that VQA scores as the same answer compare equal after normalize_answer; others do not."""
    same = [('Two.', '2'), ('the cat', 'cat'), ('Yes', 'yes'), ('dont', "don't"), ('  red\n', 'red')]
    for a, b in same:
        assert S.normalize_answer(a) == S.normalize_answer(b), (a, b)
        assert S.vqa_accuracy(a, [b, b, b, 'x']) == S.vqa_accuracy(b, [b, b, b, 'x'])  # the scorer agrees
    assert S.normalize_answer('circle') != S.normalize_answer('square')
    assert S.normalize_answer('3') != S.normalize_answer('2')
