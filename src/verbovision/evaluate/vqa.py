"""VQAv2 accuracy (vqaEval.py, exactly), TextVQA accuracy (m4c), VizWiz accuracy (the VizWiz API's copy of
vqaEval.py), and ``score_vqa`` over every answer metric.

VQAv2 accuracy (``score_vqa`` kind "vqa") gives the floats of the official vqaEval.py (GT-Vision-Lab/VQA, its 2021
version) per question, overall, per answer type and per question type, and its percentages rounded to 2 decimals:
normalisation only when the human answers disagree, its regexes and tables with their bugs, sums left to right in its
order. vqaEval.py is Python 2 code and its Python 2 semantics are kept where Python 3 differs: "\\d" matches 0-9
only, lowercasing is one character to one, round() goes half away from zero, sum() does not compensate (3.12's
does). TextVQA accuracy (kind "textvqa") is m4c's TextVQAAccuracyEvaluator (MMF; LLaVA's eval_textvqa runs it),
whose answer processing follows TextVQA's EvalAI server: it always normalises, lowercasing first. VizWiz accuracy
(``vizwiz_accuracy``) normalises the submitted answer only, never the human answers, under Python 3.

Known difference from vqaEval.py: characters whose Unicode properties changed after Python 2.7's Unicode 5.2
(U+180E was whitespace then) are read with Python 3's tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from .answers import choice_match, exact_match, numeric_match
from .inputs import as_list, check_same_ids

# vqaEval.py's tables, verbatim (including its odd entries, e.g. "somebody'd" -> "somebodyd").
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've"}
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = frozenset(["a", "an", "the"])
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
              "!"]
# vqaEval.py passes re.UNICODE (32) where sub() takes its count: at most 32 periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


# Case mappings Unicode gained after 5.2, the database of Python 2.7, whose lower() leaves these characters as they
# are (found by comparing Python 2.7.18's unicode.lower() with Python 3.11's str.lower(), character by character).
_PY2_UNLOWERED = frozenset(chr(c) for first, last in (
    (0x037F, 0x037F), (0x0526, 0x0526), (0x0528, 0x0528), (0x052A, 0x052A), (0x052C, 0x052C), (0x052E, 0x052E),
    (0x10C7, 0x10C7), (0x10CD, 0x10CD), (0x13A0, 0x13F5), (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x2C2F, 0x2C2F),
    (0x2CF2, 0x2CF2), (0xA660, 0xA660), (0xA698, 0xA698), (0xA69A, 0xA69A), (0xA78D, 0xA78D), (0xA790, 0xA790),
    (0xA792, 0xA792), (0xA796, 0xA796), (0xA798, 0xA798), (0xA79A, 0xA79A), (0xA79C, 0xA79C), (0xA79E, 0xA79E),
    (0xA7A0, 0xA7A0), (0xA7A2, 0xA7A2), (0xA7A4, 0xA7A4), (0xA7A6, 0xA7A6), (0xA7A8, 0xA7A8), (0xA7AA, 0xA7AE),
    (0xA7B0, 0xA7B4), (0xA7B6, 0xA7B6), (0xA7B8, 0xA7B8), (0xA7BA, 0xA7BA), (0xA7BC, 0xA7BC), (0xA7BE, 0xA7BE),
    (0xA7C0, 0xA7C0), (0xA7C2, 0xA7C2), (0xA7C4, 0xA7C7), (0xA7C9, 0xA7C9), (0xA7D0, 0xA7D0), (0xA7D6, 0xA7D6),
    (0xA7D8, 0xA7D8), (0xA7F5, 0xA7F5), (0x104B0, 0x104D3), (0x10570, 0x1057A), (0x1057C, 0x1058A),
    (0x1058C, 0x10592), (0x10594, 0x10595), (0x10C80, 0x10CB2), (0x118A0, 0x118BF), (0x16E40, 0x16E5F),
    (0x1E900, 0x1E921)) for c in range(first, last + 1))
# Python 2.7's whitespace: Python 3's plus U+180E (a space separator until Unicode 6.3).
_PY2_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "\u180e"


def _py2_lower(text: str) -> str:
    """Python 2.7's unicode.lower(): one character to one (Python 3 maps U+0130 to two, and a capital sigma that
    ends a word to the final form), with Unicode 5.2's mappings."""
    if text.isascii():
        return text.lower()
    return "".join(c if c in _PY2_UNLOWERED else "i" if c == "\u0130" else c.lower() for c in text)


def _py2_words(text: str) -> list[str]:
    return _py2_lower(text).replace("\u180e", " ").split()


def _py3_words(text: str) -> list[str]:
    return text.lower().split()


@dataclass(frozen=True)
class _AnswerProcessor:
    """vqaEval.py's answer steps (clean, processPunctuation, processDigitArticle) under one Python's semantics, with
    one contraction table (VizWiz's copy of vqaEval.py writes most of its apostrophes as U+2019)."""

    # "(?!<=\d)" is vqaEval.py's bug, kept: a lookahead that never fails, not the lookbehind it meant
    period_strip: re.Pattern
    comma_strip: re.Pattern
    whitespace: str | None
    """What strip() strips (None: Python 3's whitespace)."""
    words: Callable[[str], list[str]]
    """Lowercase, then split on whitespace."""
    contractions: Mapping[str, str]

    def clean(self, text: str) -> str:
        return text.replace("\n", " ").replace("\t", " ").strip(self.whitespace)

    def punctuation(self, text: str) -> str:
        out = text
        for p in _VQA_PUNCT:  # each test looks at the input text, not at the text being edited
            if p + " " in text or " " + p in text or self.comma_strip.search(text) is not None:
                out = out.replace(p, "")
            else:
                out = out.replace(p, " ")
        return self.period_strip.sub("", out, count=_PERIOD_STRIP_COUNT)

    def digits_articles(self, text: str) -> str:
        words = [_VQA_NUMBERS.get(w, w) for w in self.words(text)]
        return " ".join(self.contractions.get(w, w) for w in words if w not in _VQA_ARTICLES)

    def __call__(self, text: str) -> str:
        return self.digits_articles(self.punctuation(text))


# vqaEval.py is Python 2 code: there "\d" matches only 0-9 (no re.UNICODE flag), and lower() and whitespace are
# Python 2.7's.
_VQAEVAL = _AnswerProcessor(re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII), re.compile(r"(\d)(,)(\d)", re.ASCII),
                            _PY2_WHITESPACE, _py2_words, _VQA_CONTRACTIONS)
# m4c's EvalAIAnswerProcessor is Python 3 code, with its own comma rule (which never fires: it drops commas first).
_EVALAI = _AnswerProcessor(re.compile(r"(?!<=\d)(\.)(?!\d)"), re.compile(r"(?<=\d)(,)+(?=\d)"), None, _py3_words,
                           _VQA_CONTRACTIONS)

# The VizWiz API's copy of vqaEval.py (Python 3 code) writes the apostrophe of its contractions as U+2019, but for
# these values and keys.
_VIZWIZ_ASCII_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})
_VIZWIZ_ASCII_KEYS = frozenset({"couldn'tve", "hadn'tve"})


def _curly(text: str) -> str:
    return text.replace("'", "\u2019")


_VIZWIZ_CONTRACTIONS = {(k if k in _VIZWIZ_ASCII_KEYS else _curly(k)): (v if k in _VIZWIZ_ASCII_VALUES else _curly(v))
                        for k, v in _VQA_CONTRACTIONS.items()}
_VIZWIZ = _AnswerProcessor(re.compile(r"(?!<=\d)(\.)(?!\d)"), re.compile(r"(\d)(,)(\d)"), None, _py3_words,
                           _VIZWIZ_CONTRACTIONS)


def normalize_vqa_answer(text: str) -> str:
    """vqaEval.py's processing of an answer when the human answers disagree: tabs and newlines to spaces, strip,
    processPunctuation, then processDigitArticle (lowercase, number words to digits, articles dropped,
    contractions given their apostrophe)."""
    return _VQAEVAL(_VQAEVAL.clean(text))


def normalize_textvqa_answer(text: str) -> str:
    """m4c's EvalAIAnswerProcessor (TextVQA): lowercase, drop "," and "?", "'s" -> " 's", strip, then the same
    punctuation and digit/article steps as vqaEval.py."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _EVALAI(_EVALAI.clean(text))


def normalize_vizwiz_answer(text: str) -> str:
    """The VizWiz API's processing of a submitted answer: vqaEval.py's steps under Python 3, with its contraction
    table."""
    return _VIZWIZ(_VIZWIZ.clean(text))


def _sum_in_order(values: Iterable[float]) -> float:
    """Left-to-right float sum, as Python 2's and Python <= 3.11's sum() (3.12's compensates rounding errors)."""
    total = 0.0
    for value in values:
        total += value
    return total


def _leave_one_out(predicted: str, answers: Sequence[str]) -> float:
    """The mean over annotators i of min(1, matches among the answers other than i's / 3), summed in order."""
    matched = [answer == predicted for answer in answers]
    total = sum(matched)
    return _sum_in_order(min(1, (total - m) / 3) for m in matched) / len(answers)


def vqa_accuracy(prediction: str, answers: str | Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction, exactly as the official vqaEval.py (GT-Vision-Lab/VQA) computes it.

    Tabs and newlines become spaces and both ends are stripped. If the human answers are then not all identical,
    the prediction and every answer go through ``normalize_vqa_answer``; if they are, the stripped raw strings are
    compared (so "Four" against ten "4" scores 0). Leaving out each annotator in turn, the prediction earns
    min(1, matching other answers / 3); the accuracy is the mean of those, summed in annotator order (the last
    bit can depend on that order). Each answer is one annotator's: with one answer the score is always 0.
    """
    answers = [_VQAEVAL.clean(a) for a in as_list(answers)]
    if not answers:
        raise ValueError("vqa_accuracy needs at least one answer")
    predicted = _VQAEVAL.clean(prediction)
    if len(set(answers)) > 1:
        answers = [_VQAEVAL(a) for a in answers]
        predicted = _VQAEVAL(predicted)
    return _leave_one_out(predicted, answers)


def textvqa_accuracy(prediction: str, answers: str | Sequence[str]) -> float:
    """TextVQA accuracy, as m4c's TextVQAAccuracyEvaluator (the one LLaVA's eval_textvqa runs): the prediction
    and every answer always go through ``normalize_textvqa_answer``, then the same leave-one-out mean (m4c asserts
    10 answers; any number is scored here)."""
    answers = [normalize_textvqa_answer(a) for a in as_list(answers)]
    if not answers:
        raise ValueError("textvqa_accuracy needs at least one answer")
    return _leave_one_out(normalize_textvqa_answer(prediction), answers)


def vizwiz_accuracy(submitted: str, answers: Sequence[str]) -> float:
    """VizWiz accuracy, as the VizWiz API's vqaEval.py: the submitted answer always normalised
    (``normalize_vizwiz_answer``), the human answers compared as they are, then the same leave-one-out mean."""
    return _leave_one_out(normalize_vizwiz_answer(submitted), list(answers))


_VQA_KINDS: dict[str, Callable[[str, str | Sequence[str]], float]] = {
    "vqa": vqa_accuracy, "textvqa": textvqa_accuracy, "exact": exact_match, "numeric": numeric_match,
    "choice": choice_match}


@dataclass(frozen=True)
class VqaScores:
    mean: float
    """Mean of the per-item scores, summed in their order."""
    per_item: dict
    """id -> score in [0, 1]."""
    by_type: dict[str, dict[str, float]]
    """Type name (e.g. "answer_type") -> type -> mean score of its items, for the types given."""
    official: dict
    """kind "vqa": vqaEval.py's ``accuracy`` -- "overall" and, per type name, type -> percentage, each rounded to
    2 decimals as vqaEval.py rounds them; empty for the other kinds."""


def score_vqa(predictions: Mapping[object, str], answers: Mapping[object, str | Sequence[str]],
              kind: str = "vqa", types: Mapping[str, Mapping[object, str]] | None = None) -> VqaScores:
    """Per-item scores of `kind`, their mean, and their mean per type (`types`: type name -> id -> type).

    Kinds: "vqa" (VQAv2 accuracy, vqaEval.py), "textvqa" (TextVQA accuracy, m4c), "exact", "numeric", "choice".
    Items are taken, and their scores summed, in the order vqaEval.py takes them for "vqa" (that of `answers`,
    its annotation file) and in that of `predictions` otherwise (m4c's results file).
    """
    if kind not in _VQA_KINDS:
        raise ValueError(f"unknown VQA metric kind {kind!r}; expected one of {sorted(_VQA_KINDS)}")
    check_same_ids(predictions, answers)
    score = _VQA_KINDS[kind]
    keys = list(answers if kind == "vqa" else predictions)
    per_item = {key: score(predictions[key], answers[key]) for key in keys}
    groups = {name: _group(per_item, of_item, name) for name, of_item in (types or {}).items()}
    by_type = {name: {t: _mean(scores) for t, scores in sorted(group.items())} for name, group in groups.items()}
    official = _vqaeval_accuracy(list(per_item.values()), groups) if kind == "vqa" and per_item else {}
    return VqaScores(_mean(list(per_item.values())), per_item, by_type, official)


def _mean(values: list[float]) -> float:
    return _sum_in_order(values) / len(values) if values else float("nan")


def _group(per_item: dict, of_item: Mapping[object, str], name: str) -> dict[str, list[float]]:
    missing = [key for key in per_item if key not in of_item][:5]
    if missing:
        raise ValueError(f"no {name} for ids {missing}")
    group: dict[str, list[float]] = {}
    for key, value in per_item.items():
        group.setdefault(of_item[key], []).append(value)
    return group


def _vqaeval_accuracy(scores: list[float], groups: dict[str, dict[str, list[float]]]) -> dict:
    """vqaEval.py's setAccuracy: round(100 * sum / count, 2) overall and per type."""
    return {"overall": _percent(scores),
            **{name: {t: _percent(s) for t, s in sorted(group.items())} for name, group in groups.items()}}


def _percent(scores: list[float]) -> float:
    return _round_half_away(100 * _sum_in_order(scores) / len(scores), 2)


def _round_half_away(value: float, digits: int) -> float:
    """Python 2's round(), which vqaEval.py calls: the exact binary value rounded half away from zero (Python 3's
    round() goes half to even: 0.625 -> 0.62 where Python 2 gives 0.63)."""
    return float(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))
