"""The metrics `verbo eval`, `verbo score` and training's validation can ask for, by name, and ``score``, which
computes them with bootstrap confidence intervals over items."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from .captions import CAPTION_METRICS, score_captions
from .error_rates import cer, wer
from .inputs import as_list
from .vqa import VqaScores, score_vqa

if TYPE_CHECKING:  # infer loads transformers
    from ..infer.options import Truncation


ANSWER_METRICS = {"exact_match": "exact", "vqa": "vqa", "textvqa": "textvqa", "numeric": "numeric",
                  "choice": "choice"}
# Accuracies that compare a prediction with the other annotators' answers: one answer would score every prediction 0.
HUMAN_ANSWER_METRICS = ("vqa", "textvqa")
ERROR_RATES = {"wer": wer, "cer": cer}
ALL_METRICS = (*CAPTION_METRICS, *ANSWER_METRICS, *ERROR_RATES)
DEFAULT_METRICS = ("bleu", "meteor", "rouge_l", "cider", "exact_match")


@dataclass
class EvalResult:
    values: dict[str, float]
    """Corpus-level metric values."""
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    """95% bootstrap confidence interval of each metric's per-item mean."""
    predictions: list[dict] = field(default_factory=list)
    """One row per record: id, image, prompt, prediction, finish_reason ("length": cut at max_new_tokens),
    references."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Metrics that could not be computed, with the reason."""
    details: dict[str, float] = field(default_factory=dict)
    """Breakdowns of the values (per answer and question type) and the renderings official scripts publish
    (vqaEval.py's percentages, rounded as it rounds them)."""
    truncation: Truncation | None = None
    """How many generated replies were cut at max_new_tokens (None when scoring a file: nothing was generated)."""
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)
    """Metric -> item id -> that item's score, for the metrics whose corpus value is a per-item mean or sum (what
    intervals and paired comparisons resample)."""
    notes: list[str] = field(default_factory=list)
    """What a reader of the values must know to trust them (empty predictions, words the metrics cannot split)."""

    def summary(self) -> dict:
        truncated = {} if self.truncation is None else {"truncated replies": self.truncation.truncated}
        return {**self.values, "records": len(self.predictions), **truncated,
                **{f"{k} (skipped)": v for k, v in self.skipped.items()}}


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x.strip())
    if not names:  # nothing to compute: the report would hold no score at all
        raise DataError(f"--metrics {text!r}: no metric named; choose from {', '.join(ALL_METRICS)}")
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise DataError(f"unknown metric(s) {unknown}; choose from {', '.join(ALL_METRICS)}")
    return names


def score(predictions: Mapping[str, str], references: Mapping[str, list[str]], names: Sequence[str],
          ci: bool = True, types: Mapping[str, Mapping] | None = None) -> EvalResult:
    """Every requested metric, corpus-level, with bootstrap intervals over items.

    `types` (type name -> id -> type, e.g. VQAv2's answer_type and question_type) break the answer metrics down.
    """
    check_references(references, names)
    result = EvalResult({}, notes=input_notes(predictions, references, names))
    per_item = result.per_item
    captions = [n for n in names if n in CAPTION_METRICS]
    if captions:
        scores = score_captions(predictions, references, metrics=captions)
        result.values.update(scores.corpus)
        result.skipped.update(scores.skipped)
        for metric in scores.corpus:
            per_item[metric] = {k: v[metric] for k, v in scores.per_image.items()}
    for name in names:
        if name in ANSWER_METRICS:
            answers = score_vqa(predictions, references, kind=ANSWER_METRICS[name], types=types)
            result.values[name], per_item[name] = answers.mean, answers.per_item
            result.details.update(_answer_details(name, answers))
        elif name in ERROR_RATES:
            rate = ERROR_RATES[name](predictions, references)
            result.values[name], per_item[name] = rate.corpus, rate.per_item
    if ci:
        # Bootstrap the per-item mean; metrics whose corpus value is not that mean (BLEU, METEOR, corpus WER)
        # get no interval rather than one that need not contain the reported value.
        result.intervals = {k: bootstrap_ci(v) for k, v in per_item.items() if v and is_item_mean(v, result.values[k])}
    return result


def check_references(references: Mapping, names: Sequence[str]) -> None:
    """A DataError where the references cannot give the metrics `names` a meaningful score; `verbo eval` asks before
    it generates, so that no replies are generated for nothing."""
    for name in names:
        if name in HUMAN_ANSWER_METRICS:
            check_human_answers(references, name)


# Scripts written without spaces between words: Thai, Lao, Myanmar, Khmer, Japanese kana, CJK ideographs. A text
# with two such characters in a row is unsegmented unless it has a space between two of them somewhere (text split
# into words, as jieba or MeCab split it, keeps words of several characters).
_UNSPACED_LETTER = "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
_UNSPACED_RUN = re.compile(_UNSPACED_LETTER * 2)
_SPACED_LETTERS = re.compile(f"{_UNSPACED_LETTER}\\s+{_UNSPACED_LETTER}")
# Metrics that split text into words at whitespace (through pycocoevalcap's tokenizer for the caption metrics).
_WORD_METRICS = ("bleu", "rouge_l", "cider", "wer")


def input_notes(predictions: Mapping, references: Mapping, names: Sequence[str]) -> list[str]:
    """Notes on inputs whose scores are low for a reason the values do not show: empty predictions, and, for the
    metrics that count words, text without spaces between its words, which the official tokenizer (and so this
    one) takes as one long word per run, so that a partial match scores 0."""
    notes = []
    empty = [key for key, text in predictions.items() if not text.strip()]
    if empty:
        notes.append(f"{len(empty)} of {len(predictions)} predictions are empty (e.g. id {empty[0]!r})")
    if "cider" in names and len(references) == 1:
        notes.append("CIDEr-D of one item is 0 whatever it says, as in pycocoevalcap: its n-gram weights come from the "
                     "scored items' references, and an n-gram in every item's references (here: in one) weighs 0")
    if any(name in _WORD_METRICS for name in names):
        texts = [*predictions.values(), *(t for refs in references.values() for t in as_list(refs))]
        unspaced = sum(_UNSPACED_RUN.search(text) is not None and _SPACED_LETTERS.search(text) is None
                       for text in texts)
        if unspaced:
            notes.append(f"{unspaced} of {len(texts)} predictions and references write words without spaces between "
                         "them (Chinese, Japanese, Thai...): BLEU, ROUGE-L, CIDEr-D and WER split words at spaces, "
                         "as the official scorers do, so a run of such text counts as one word and only whole runs "
                         "match; put spaces between the words (or characters) of both sides before scoring")
    return notes


def check_human_answers(references: Mapping, name: str) -> None:
    """Refuse scoring `name` (a HUMAN_ANSWER_METRICS one) on items with fewer than two reference answers."""
    for key, answers in references.items():
        count = 1 if isinstance(answers, str) else len(answers)
        if count < 2:
            raise DataError(f"{name}: item {key!r} has {count} reference answer(s); VQA accuracy credits a prediction "
                            "by the other annotators' answers (10 per question in VQAv2), so with one every "
                            "prediction scores 0; use exact_match for single-answer data")


def _answer_details(name: str, scores: VqaScores) -> dict[str, float]:
    """Per type means, and for vqa, vqaEval.py's rounded percentages, e.g. `vqa[answer_type=number]`,
    `vqa (vqaEval.py %)`."""
    official = scores.official
    details = {f"{name} (vqaEval.py %)": official["overall"]} if official else {}
    for type_name, means in scores.by_type.items():
        for kind, value in means.items():
            label = f"{name}[{type_name}={kind}]"
            details[label] = value
            if official:
                details[f"{label} (vqaEval.py %)"] = official[type_name][kind]
    return details


def is_item_mean(per_item: Mapping[object, float], corpus: float) -> bool:
    """Whether a corpus value is the mean of its per-item scores (what resampling items can test), unlike corpus
    BLEU or METEOR."""
    # Relative only: a near-zero corpus BLEU (2e-13) lies within any absolute tolerance of its items' mean (7e-13).
    return math.isclose(math.fsum(per_item.values()) / len(per_item), corpus, rel_tol=1e-9)


def bootstrap_ci(per_item_values: Mapping[object, float] | Sequence[float], n: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean, resampling items with replacement.

    For CIDEr pass the per-image CIDEr values: they were computed with document frequencies from the full
    evaluated set, which the resampling keeps fixed (it does not recompute df per resample).
    """
    values = np.asarray(list(per_item_values.values()) if isinstance(per_item_values, Mapping)
                        else per_item_values, np.float64)
    if len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
