"""What the scorers check and accept of their inputs: the same ids on both sides, one reference or several."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def check_same_ids(predictions: Mapping, references: Mapping) -> None:
    if predictions.keys() != references.keys():
        missing = list(references.keys() - predictions.keys())[:5]
        extra = list(predictions.keys() - references.keys())[:5]
        raise ValueError(f"predictions and references must have the same ids (missing predictions for "
                         f"{missing}, no references for {extra})")


def as_list(answers: str | Sequence[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)
