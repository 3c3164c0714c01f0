"""
Benchmark scorers for the understanding evaluations in the UniGame paper, as pure functions (no torch).

Every scorer reproduces the behaviour of its benchmark's official scoring code, quirks included, so numbers computed
here can be compared with published ones. Each function names its source in a comment; the sources are:

  VQAv2 / AdVQA  GT-Vision-Lab/VQA       PythonEvaluationTools/vqaEvaluation/vqaEval.py (master, Python 3)
  POPE           AoiDragon/POPE          evaluate.py
  NaturalBench   Baiqi-Li/NaturalBench   naturalbench_vqa.py (extract_answer, get_scores)
  MMBench        open-compass/VLMEvalKit vlmeval/utils/matching_util.py (can_infer, at a67ace50) and
                                         vlmeval/dataset/utils/multiple_choice.py (circular evaluation)

MMMU's parser and scorer (MMMU-Benchmark/MMMU eval/eval_utils.py) are in mmmu.py. benchmarks.py calls these on a
predictions file:

    python benchmarks.py pope --questions coco_pope_random.json --score out/pope.json   # POPE's metrics, no model
    python -c "import scorers; print(scorers.vqa_accuracy('Yes', ['yes'] * 10))"  # 0.0: unanimous answers, exact

What differs from the official code: bad inputs raise a ValueError naming the argument instead of failing later
(or silently), and nothing is printed. Tests: tests/test_scorers.py.
"""

import re

# ----------------------------------------------------------------------------------------------------------------------
# VQAv2 / AdVQA soft accuracy

# tables from vqaEval.py VQAEval.__init__ (the keys "Im", "Ive", "Id've" can never match after lower-casing; kept as is)
VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
VQA_DIGITS = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5', 'six': '6',
              'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
VQA_ARTICLES = ('a', 'an', 'the')
VQA_PUNCT = (';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!')
# "(?!<=\d)" is a mistyped look-behind: it is a look-ahead for the text "<=", so every period not followed by a digit
# goes ("5." -> "5", "1.5" stays). The official call passes re.UNICODE (= 32) as sub's `count`: at most 32 go.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


# vqaEval.py VQAEval.processPunctuation
def _vqa_punctuation(text):
    """Drop each punctuation mark if it touches a space (or the text has a digit,digit), else make it a space."""
    out = text
    for p in VQA_PUNCT:
        if p + ' ' in text or ' ' + p in text or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, '')
        else:
            out = out.replace(p, ' ')
    return _PERIOD_STRIP.sub('', out, count=re.UNICODE)


# vqaEval.py VQAEval.processDigitArticle
def _vqa_digits_articles(text):
    """Lower-case, spell digits as numbers ("two" -> "2"), drop a/an/the, restore apostrophes ("dont" -> "don't")."""
    words = [VQA_DIGITS.get(w, w) for w in text.lower().split()]
    return ' '.join(VQA_CONTRACTIONS.get(w, w) for w in words if w not in VQA_ARTICLES)


def _vqa_clean(text):
    return text.replace('\n', ' ').replace('\t', ' ').strip()


def normalize_answer(text: str) -> str:
    """The VQA normalisation of one free-form answer ("Two." -> "2", "the cat" -> "cat"): what train.py compares
    when it counts U's errors, so that free-form answers are not all wrong by the letter."""
    return _vqa_digits_articles(_vqa_punctuation(_vqa_clean(text)))


# vqaEval.py VQAEval.evaluate, the per-question body
def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA soft accuracy in [0, 1] of one prediction against the human answers (GT-Vision-Lab/VQA vqaEval.py).

    Answers and prediction are stripped of newlines/tabs/outer spaces. Only when the answers are NOT all identical are
    both sides normalised (punctuation, "two" -> "2", articles, contractions, lower case); when they are unanimous the
    comparison is exact and case-sensitive, so "Yes" or "yes." against ten "yes" scores 0. The score is the mean over
    annotators i of min(1, #other annotators matching / 3). Leave-one-out is by position, as the official code's
    dict comparison (answers carry distinct answer_ids) amounts to. Like the official code it averages over however
    many answers are given (VQAv2 has 10; other counts are accepted, not checked). This is master's rule; older
    revisions (and LAVIS's copy) always normalise the prediction and only strip punctuation from the answers.
    """
    if not isinstance(prediction, str):
        raise TypeError(f'prediction must be a str, got {type(prediction).__name__}')
    if isinstance(answers, str) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f'answers must be a non-empty list of str (VQAv2 has 10 per question), got {answers!r}')
    res, gts = _vqa_clean(prediction), [_vqa_clean(a) for a in answers]
    if len(set(gts)) > 1:
        gts = [_vqa_digits_articles(_vqa_punctuation(a)) for a in gts]
        res = _vqa_digits_articles(_vqa_punctuation(res))
    accs = [min(1, sum(g == res for g in gts[:i] + gts[i + 1:]) / 3) for i in range(len(gts))]
    return float(sum(accs)) / len(accs)


# vqaEval.py VQAEval.evaluate + setAccuracy; vqa.py VQA.loadRes asserts predictions cover exactly the annotations
def vqa_score(predictions: dict, annotations: dict, answer_types: dict | None = None, n: int = 2) -> dict:
    """Overall (and per answer type) VQA accuracy in percent, each rounded to `n` decimals like setAccuracy.

    predictions: question_id -> answer string; annotations: question_id -> list of human answers;
    answer_types (optional): question_id -> e.g. 'yes/no' | 'number' | 'other'.
    Returns {'overall': float, 'perAnswerType': {type: float}} (perAnswerType only if answer_types is given).
    """
    missing = [q for q in annotations if q not in predictions]
    extra = [q for q in predictions if q not in annotations]
    if missing or extra:
        raise ValueError(f'predictions must cover exactly the annotated question ids: {len(missing)} missing '
                         f'(first: {missing[:5]}), {len(extra)} not in annotations (first: {extra[:5]})')
    if not annotations:
        raise ValueError('annotations is empty')
    accs = {q: vqa_accuracy(predictions[q], annotations[q]) for q in annotations}
    out = {'overall': round(100 * float(sum(accs.values())) / len(accs), n)}
    if answer_types is not None:
        untyped = [q for q in annotations if q not in answer_types]
        if untyped:
            raise ValueError(f'answer_types lacks {len(untyped)} question ids (first: {untyped[:5]})')
        per = {}
        for q, a in accs.items():
            per.setdefault(answer_types[q], []).append(a)
        out['perAnswerType'] = {t: round(100 * float(sum(v)) / len(v), n) for t, v in per.items()}
    return out


# ----------------------------------------------------------------------------------------------------------------------
# POPE

# AoiDragon/POPE evaluate.py, the parsing loop
def pope_parse(text: str) -> str:
    """'no' if the first sentence (text before the first '.') with commas removed, split on single spaces, contains
    the word 'No', 'no' or 'not'; otherwise 'yes'. Case-sensitive: "NO" and "Not" parse as 'yes', as officially."""
    words = text.split('.')[0].replace(',', '').split(' ')
    return 'no' if ('No' in words or 'not' in words or 'no' in words) else 'yes'


# AoiDragon/POPE evaluate.py, the metrics (positive class = 'yes')
def pope_scores(predictions: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 and yes-ratio (all in [0, 1]) plus the TP/FP/TN/FN counts.

    predictions: raw model outputs (parsed with pope_parse); labels: 'yes' / 'no'. The official script maps any label
    other than 'no' to yes; here labels must be exactly 'yes' or 'no' so a mis-cased label fails loudly.
    """
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f'predictions ({len(predictions)}) and labels ({len(labels)}) must be equal, non-zero length')
    bad = sorted({lab for lab in labels if lab not in ('yes', 'no')}, key=str)
    if bad:
        raise ValueError(f"labels must be 'yes' or 'no', got {bad[:5]}")
    pred = [pope_parse(p) == 'yes' for p in predictions]
    gold = [lab == 'yes' for lab in labels]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    tn = sum(not p and not g for p, g in zip(pred, gold))
    fn = sum(not p and g for p, g in zip(pred, gold))
    if tp == 0:  # the official script divides by zero here (precision or F1)
        raise ValueError('precision/F1 are undefined: no prediction is a true positive')
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {'accuracy': (tp + tn) / len(pred), 'precision': precision, 'recall': recall,
            'f1': 2 * precision * recall / (precision + recall), 'yes_ratio': sum(pred) / len(pred),
            'TP': tp, 'FP': fp, 'TN': tn, 'FN': fn}


# ----------------------------------------------------------------------------------------------------------------------
# NaturalBench

# Baiqi-Li/NaturalBench naturalbench_vqa.py extract_answer
def naturalbench_extract(output: str, task_type: str = 'yes_no') -> int:
    """1 for yes / A, 0 for no / B, -1 when neither whole word occurs: whichever of the two words comes first wins.
    Matching is case-insensitive on word boundaries, so for 'multiple_choice' the article "a" counts as A."""
    if task_type not in ('yes_no', 'multiple_choice'):
        raise ValueError(f"task_type must be 'yes_no' or 'multiple_choice', got {task_type!r}")
    first, second = ('yes', 'no') if task_type == 'yes_no' else ('A', 'B')
    pos = [re.search(r'\b' + w + r'\b', output, re.IGNORECASE) for w in (first, second)]
    if pos[0] is None and pos[1] is None:
        return -1
    if pos[0] is None or pos[1] is None:
        return 0 if pos[0] is None else 1
    return 1 if pos[0].start() < pos[1].start() else 0


NATURALBENCH_CELLS = ('q0_i0', 'q0_i1', 'q1_i0', 'q1_i1')


# Baiqi-Li/NaturalBench naturalbench_vqa.py get_scores
def naturalbench_scores(groups) -> dict:
    """Acc, Q-Acc, I-Acc and G-Acc in [0, 1] over NaturalBench groups (2 questions x 2 images).

    groups: a list (or dict of id ->) of extracted answers, each [q0_i0, q0_i1, q1_i0, q1_i1] or a dict with those
    keys, values from naturalbench_extract. The official code never reads ground truth: NaturalBench is built so the
    right answers are always q0_i0 = 1, q0_i1 = 0, q1_i0 = 0, q1_i1 = 1 (yes/A, no/B, no/B, yes/A). A cell with
    neither answer (-1) is simply wrong. A question counts for Q-Acc when right on both images, an image for I-Acc
    when both questions on it are right, and a group for G-Acc only when all four cells are right.
    """
    groups = list(groups.values()) if isinstance(groups, dict) else list(groups)
    if not groups:
        raise ValueError('groups is empty')
    q = i = acc = g = 0
    for k, cells in enumerate(groups):
        c = [cells[name] for name in NATURALBENCH_CELLS] if isinstance(cells, dict) else list(cells)
        if len(c) != 4 or any(v not in (-1, 0, 1) for v in c):
            raise ValueError(f'groups[{k}] must be 4 answers in {{-1, 0, 1}} (q0_i0, q0_i1, q1_i0, q1_i1): {cells}')
        right = [c[0] == 1, c[1] == 0, c[2] == 0, c[3] == 1]
        questions = (right[0] and right[1]) + (right[3] and right[2])  # q0 on both images, q1 on both images
        images = (right[0] and right[2]) + (right[3] and right[1])  # i0 for both questions, i1 for both questions
        q, i, acc, g = q + questions, i + images, acc + sum(right), g + (questions == 2 and images == 2)
    n = len(groups)
    return {'Acc': acc / (4 * n), 'Q_Acc': q / (2 * n), 'I_Acc': i / (2 * n), 'G_Acc': g / n}


# ----------------------------------------------------------------------------------------------------------------------
# MMBench (circular evaluation)

def mmbench_rotate(options: list[str], answer: str, shift: int) -> tuple[list[str], str]:
    """Circular pass `shift`: the option texts rotated left (ABCD -> BCDA for shift 1, as OpenCompass's circular
    patterns) and the letter the right answer now has."""
    n = len(options)
    if not (isinstance(answer, str) and len(answer) == 1 and 0 <= ord(answer) - ord('A') < n):
        raise ValueError(f'answer must be one of the {n} option letters, got {answer!r}')
    a = ord(answer) - ord('A')
    return options[shift % n:] + options[:shift % n], chr(ord('A') + (a - shift) % n)


# VLMEvalKit matching_util.py can_infer_option at a67ace50 (#1552; unchanged through 2cf2a36c)
def _mmbench_option(answer, choices):
    if 'Failed to obtain answer via API' in answer:
        return None
    rejections = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                  "I'm sorry, but without the image provided", 'Cannot determine the answer')
    if any(r in answer for r in rejections):
        return 'Z'
    tokens = answer.translate(str.maketrans('.()[],:;!*#{}', ' ' * 13)).split()
    hits = [ch for ch in choices if ch in tokens]
    if len(hits) == 1 and tokens.index(hits[0]) > len(tokens) - 5:  # first seen among the last four tokens
        return hits[0]
    if not hits and 'Z' in tokens:
        return 'Z'
    said = re.search(r'answer\s+is\s+\**([A-D])', answer, re.IGNORECASE)  # no boundary: "answer is dog" -> D
    return said[1].upper() if said and said[1].upper() in choices else None


# VLMEvalKit matching_util.py can_infer_text at a67ace50
def _mmbench_text(answer, choices):
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):  # long answers name options in passing
        return None
    hits = [k for k, v in choices.items() if str(v).lower() in answer]
    return hits[0] if len(hits) == 1 else None


# VLMEvalKit matching_util.py can_infer (the rule-based "prefetch" step)
def mmbench_extract(prediction: str, choices: dict[str, str]) -> str | None:
    """The option letter a prediction names, or None if the rules cannot tell (VLMEvalKit can_infer at a67ace50).

    Letters first (punctuation .()[],:;!*#{} as spaces): the only choice letter present as a whole token wins if it
    first appears among the last four tokens ("A dog" answers A); else the first "answer is X" (any case, X in A-D).
    Then texts, for predictions at most twice the options' total length: exactly one option text occurring
    (case-insensitive) gives its letter. Refusals and a lone "Z" give 'Z' (never right). VLMEvalKit's GPT matching of
    what is left is not done (counted wrong, as in its exact-matching mode). Older revisions lack the "answer is X"
    rule (added in a67ace50) and, before c3371551, both guards.
    """
    return _mmbench_option(str(prediction), choices) or _mmbench_text(str(prediction), choices)


# VLMEvalKit multiple_choice.py prefetch_circular_group / eval_circular_group / mcq_circular_eval
def mmbench_circular_accuracy(groups) -> float:
    """Fraction in [0, 1] of questions right under circular evaluation: a question is right only if every one of its
    rotated passes is. groups: a list (or dict of id ->) of passes, each (prediction, choices, right_letter)."""
    groups = list(groups.values()) if isinstance(groups, dict) else list(groups)
    if not groups or any(len(passes) == 0 for passes in groups):
        raise ValueError('groups must be non-empty lists of (prediction, choices, right_letter) passes')
    return sum(all(mmbench_extract(p, ch) == gt for p, ch, gt in passes) for passes in groups) / len(groups)
