"""Word and character error rates."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .inputs import as_list


@dataclass(frozen=True)
class ErrorRate:
    corpus: float
    """Total edits / total reference length."""
    per_item: dict
    """Per item: edits / reference length of the chosen reference."""
    edits: int
    reference_length: int


def wer(predictions: Mapping[object, str], references: Mapping[object, str | Sequence[str]]) -> ErrorRate:
    """Word error rate over whitespace tokens (case and punctuation as given)."""
    return _error_rate(predictions, references, str.split)


def cer(predictions: Mapping[object, str], references: Mapping[object, str | Sequence[str]]) -> ErrorRate:
    """Character error rate over the text with runs of whitespace collapsed to one space and ends stripped."""
    return _error_rate(predictions, references, lambda text: list(" ".join(text.split())))


def _error_rate(predictions: Mapping[object, str], references: Mapping[object, str | Sequence[str]],
                units: Callable[[str], list[str]]) -> ErrorRate:
    """With several references an item is scored against the one needing the fewest edits (on ties, the longer
    one, which gives the lower rate)."""
    total_edits = total_length = 0
    per_item = {}
    for key, prediction in predictions.items():
        hyp = units(prediction)
        candidates = [(_edit_distance(hyp, ref), -len(ref)) for ref in map(units, as_list(references[key]))]
        edits, neg_length = min(candidates)
        per_item[key] = edits / -neg_length if neg_length else float(edits > 0)
        total_edits += edits
        total_length -= neg_length
    corpus = total_edits / total_length if total_length else float(total_edits > 0)
    return ErrorRate(corpus, per_item, total_edits, total_length)


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance (unit costs) between two token sequences."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]
