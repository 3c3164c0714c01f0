"""
MMMU's official answer parsing and scoring (MMMU-Benchmark/MMMU eval/eval_utils.py and eval/data_utils.py), as pure
functions (no torch). A free-form response becomes a letter (multiple-choice) or a set of candidate strings and
numbers (open); a question is right when the parsed answer matches the gold one by the official rules, quirks
included, so numbers here can be compared with published ones. Each function names its source in a comment.
The other benchmarks' scorers are in scorers.py.

    python benchmarks.py mmmu --data mmmu_validation.jsonl --out out/mmmu.json      # predict, then score here
    python benchmarks.py mmmu --data mmmu_validation.jsonl --score out/mmmu.json    # re-score a file, no model
    python -c "import mmmu; print(sorted(mmmu.parse_open_response('The answer is 1,000.')))"  # [0.0, 1000.0]

What differs from the official code: bad inputs raise a ValueError naming the argument, nothing is printed, and the
random fallback of parse_multi_choice_response takes an explicit `rng`. Tests: tests/test_mmmu.py.
"""

import random
import re

_RNG = random.Random(42)  # the official module calls random.seed(42) once at import


# MMMU data_utils.py get_multi_choice_info
def mmmu_choices(options: list[str]) -> tuple[list[str], dict[str, str]]:
    """(all_choices, index2ans) for an option list: ['A', 'B', ...] and {'A': options[0], ...}."""
    letters = [chr(ord('A') + k) for k in range(len(options))]
    return letters, dict(zip(letters, options))


# MMMU eval_utils.py parse_multi_choice_response
def parse_multi_choice_response(response: str, all_choices: list[str], index2ans: dict[str, str],
                                rng: random.Random | None = None) -> str:
    """The chosen letter: "(B)" forms first, else " B " as a word, else (responses over 5 words) option texts; with
    several candidates the one found last wins. If nothing matches the official code picks random.choice(all_choices)
    from the global generator seeded 42 at import; here that draw comes from `rng` (default: a module generator seeded
    42 once, the same sequence as the official when no other code uses the global `random`)."""
    for ch in [',', '.', '!', '?', ';', ':', "'"]:
        response = response.strip(ch)
    response = ' ' + response + ' '  # so " A " cannot match inside a word
    candidates = [c for c in all_choices if f'({c})' in response]
    found = lambda c: response.rfind(f'({c})')  # noqa: E731
    if not candidates:
        candidates = [c for c in all_choices if f' {c} ' in response]
        found = lambda c: response.rfind(f' {c} ')  # noqa: E731
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, ans in index2ans.items() if ans.lower() in response.lower()]
        found = lambda c: response.lower().rfind(index2ans[c].lower())  # noqa: E731
    if not candidates:
        return (rng or _RNG).choice(all_choices)
    positions = [found(c) for c in candidates]
    return candidates[positions.index(max(positions))]  # np.argmax: the first of equal maxima


# MMMU eval_utils.py check_is_number + normalize_str
def mmmu_normalize(s: str) -> list:
    """A number (commas dropped, float() accepts it) -> [round(x, 2)]; else lower-cased text, and a single character
    c -> [' c', 'c '] so it cannot match inside a word."""
    s = s.strip()
    try:
        return [round(float(s.replace(',', '')), 2)]
    except ValueError:
        s = s.lower()
        return [' ' + s, s + ' '] if len(s) == 1 else [s]


# MMMU eval_utils.py extract_numbers
def mmmu_extract_numbers(s: str) -> list[str]:
    """Numbers with thousands commas, then scientific notation, then plain numbers, by three regexes in that order.
    The plain pattern also finds the tail of a comma number: "1,000" yields "1,000" and "000"."""
    return (re.findall(r'-?\b\d{1,3}(?:,\d{3})+\b', s) + re.findall(r'-?\d+(?:\.\d+)?[eE][+-]?\d+', s)
            + re.findall(r'-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])', s))


# MMMU eval_utils.py parse_open_response
def parse_open_response(response: str) -> list:
    """Candidate answers (normalised strings and floats, deduplicated, unordered) from a free-form response.

    The response is stripped of spaces and periods and lower-cased, then split into lines (the official split pattern
    also has r'\\.\\s(?=[A-Z])', which cannot match after lower-casing). From each line the shortest text after one of
    'could be ', 'so ', 'is ', 'thus ', 'therefore ', 'final ', 'answer ', 'result ' (and '=' on the last line) is
    kept; with none, the whole response. Numbers found in those texts are added.
    """
    response = response.strip().strip('.').lower()
    lines = re.split(r'\.\s(?=[A-Z])|\n', response)
    indicators = ['could be ', 'so ', 'is ', 'thus ', 'therefore ', 'final ', 'answer ', 'result ']
    keys = []
    for k, line in enumerate(lines):
        if k == len(lines) - 1:
            indicators.append('=')
        shortest = None
        for ind in indicators:
            if ind in line:
                tail = line.split(ind)[-1].strip()
                if not shortest or len(tail) < len(shortest):  # an empty tail is replaced by the next one
                    shortest = tail
        if shortest and shortest.strip() not in [':', ',', '.', '!', '?', ';', ':', "'"]:
            keys.append(shortest)
    keys = keys or [response]
    preds = keys + [num for key in keys for num in mmmu_extract_numbers(key)]
    return list({x for p in preds for x in mmmu_normalize(p)})


# MMMU eval_utils.py eval_multi_choice
def eval_multi_choice(gold, pred: str) -> bool:
    """Exact match of the letter; gold may be a letter or a list of accepted letters."""
    return pred in gold if isinstance(gold, list) else gold == pred


# MMMU eval_utils.py eval_open
def eval_open(gold, pred: list) -> bool:
    """Right if a parsed float equals a normalised gold number, or a normalised gold string is a substring of a parsed
    string. gold may be a string or a list of accepted strings; pred is parse_open_response's output."""
    golds = [x for g in (gold if isinstance(gold, list) else [gold]) for x in mmmu_normalize(g)]
    for p in pred:
        if isinstance(p, str) and any(isinstance(g, str) and g in p for g in golds):
            return True
        if not isinstance(p, str) and p in golds:
            return True
    return False


# MMMU eval_utils.py evaluate
def mmmu_accuracy(samples: list[dict]) -> float:
    """Accuracy in [0, 1]. Each sample: {'question_type': 'multiple-choice' | anything else (open), 'answer': gold,
    'parsed_pred': output of the matching parser}. Empty input gives 0, as the official code does."""
    if not samples:
        return 0.0
    for k, s in enumerate(samples):
        missing = {'question_type', 'answer', 'parsed_pred'} - set(s)
        if missing:
            raise ValueError(f'samples[{k}] lacks {sorted(missing)}')
    right = sum(eval_multi_choice(s['answer'], s['parsed_pred']) if s['question_type'] == 'multiple-choice'
                else eval_open(s['answer'], s['parsed_pred']) for s in samples)
    return right / len(samples)
