"""`--compare` of `verbo eval` and `verbo score`: is this model's score different from another's on the same items?

The other model's predictions are rescored with this evaluation's references and metrics, then each metric's
difference of means (this - other) is tested by a paired bootstrap: the items are resampled jointly (one draw picks
an item for both models), so what the two models share (hard items, easy items) cancels out.

Why a bootstrap rather than a paired permutation test: it gives the interval of the difference as well as a p-value,
and the p-value is read off the same resampled differences as the interval, so the two agree (p < 0.05 when the
95% interval leaves out 0) but where few items differ (below). The p-value is two-sided, twice the share of
resampled differences on the far side of 0 from the observed one (ties at 0 counted on both sides), with the +1 of a
Monte Carlo p-value so that it is never 0. It is never below 2 / 2^m either, m the number of items whose scores
differ: the chance that m differences all take one sign when neither model is better (a sign-flip test's smallest
p-value). Resampling cannot see a variation the items do not show: one differing item would otherwise give
p = 0.0002. So with fewer than 6 differing items no difference is significant, though the interval may leave out 0.

Only metrics whose corpus value is the mean of per-item scores are tested (CIDEr-D, ROUGE-L, SPICE, the answer
accuracies); corpus BLEU (from n-gram counts summed over items), METEOR (the Java scorer's
corpus statistics) and corpus WER/CER (edits over total length) would have to be recomputed on every resample, so
they are listed as not compared, with that reason, instead of being tested on a mean they do not report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import read_json, write_atomic, write_json
from .metrics import EvalResult, is_item_mean, score
from .scoring import load_predictions

RESAMPLES = 10_000
SEED = 0
_CHUNK = 4_000_000
"""Resampled item indices drawn at a time (memory bound for large evaluations)."""


@dataclass(frozen=True)
class MetricDifference:
    metric: str
    ours: float
    """This evaluation's value."""
    theirs: float
    """The other predictions' value on the same items."""
    difference: float
    """ours - theirs."""
    interval: tuple[float, float]
    """95% paired bootstrap interval of the difference."""
    p_value: float
    """Two-sided, of "no difference"."""

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


@dataclass
class Comparison:
    other: str
    """The evaluation folder or predictions file compared with."""
    items: int
    differences: list[MetricDifference] = field(default_factory=list)
    not_compared: dict[str, str] = field(default_factory=dict)
    """Metric -> why it was not tested."""
    resamples: int = RESAMPLES
    seed: int = SEED

    def as_dict(self) -> dict:
        return {"other": self.other, "items": self.items, "test": "paired bootstrap", "resamples": self.resamples,
                "seed": self.seed, "metrics": {d.metric: {**asdict(d), "significant": d.significant}
                                               for d in self.differences},
                "not_compared": self.not_compared}

    def title(self) -> str:
        return (f"comparison with {self.other} on {self.items} items (this - other; paired bootstrap, "
                f"{self.resamples} resamples, seed {self.seed}; * p < 0.05)")

    def rows(self) -> list[tuple[str, ...]]:
        """metric, this, other, difference, 95% interval, p-value: one row per tested metric, as text."""
        return [(d.metric, f"{d.ours:.4g}", f"{d.theirs:.4g}", f"{d.difference:+.4g}",
                 f"[{d.interval[0]:+.4g}, {d.interval[1]:+.4g}]", f"{d.p_value:.4g}{' *' if d.significant else ''}")
                for d in self.differences]

    def reasons(self) -> list[tuple[str, str]]:
        """(the metrics, comma-separated, why) for each reason metrics were not compared."""
        names: dict[str, list[str]] = {}
        for name, why in self.not_compared.items():
            names.setdefault(why, []).append(name)
        return [(", ".join(group), why) for why, group in names.items()]


HEADER = ("metric", "this", "other", "difference", "95% CI", "p")


def table(comparison: Comparison) -> str:
    """The comparison as printed by the commands: aligned columns, then the metrics not compared and why."""
    rows = [HEADER, *comparison.rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [comparison.title()] + ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines += [f"{names} not compared: {why}" for names, why in comparison.reasons()]
    return "\n".join(lines)


def markdown(comparison: Comparison) -> str:
    lines = ["## Comparison", "", comparison.title(), "", "| " + " | ".join(HEADER) + " |",
             "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in comparison.rows()] + [""]
    lines += [f"- {names} not compared: {why}" for names, why in comparison.reasons()]
    return "\n".join(lines) + "\n"


def write_comparison(out: str | Path, comparison: Comparison) -> None:
    """Add the comparison to an evaluation folder's report.json ("comparison") and report.md."""
    out = Path(out)
    write_json(out / "report.json", {**read_json(out / "report.json", {}), "comparison": comparison.as_dict()})
    report = out / "report.md"
    text = report.read_text(encoding="utf-8") if report.exists() else ""
    write_atomic(report, f"{text}\n{markdown(comparison)}" if text else markdown(comparison))


def compare_with(result: EvalResult, other: str | Path, metrics: Sequence[str],
                 refs: str | Path | None = None) -> Comparison:
    """This evaluation (`result`, with its predictions) against `other`: an evaluation folder (its
    predictions.jsonl) or a predictions file in a format `verbo score` reads (with `refs` where it needs them),
    rescored on the same items with this evaluation's references and `metrics`."""
    path = Path(other)
    if path.is_dir():
        path = path / "predictions.jsonl"
        if not path.is_file():
            raise DataError(f"{other}: no predictions.jsonl in this folder; pass an evaluation folder of verbo eval "
                            "or a predictions file")
    theirs = load_predictions(path, refs, refs_optional=True)  # an evaluation's predictions.jsonl has its own
    references = {row["id"]: row["references"] for row in result.predictions}
    their_predictions = same_keys(references, theirs.predictions)
    check_same_items(references, same_keys(references, theirs.references), path)
    rescored = score({k: their_predictions[k] for k in references}, references, metrics, ci=False)
    return compare(result, rescored, str(other))


def same_keys(ours: Mapping, theirs: Mapping) -> Mapping:
    """`theirs` keyed by our ids where the two name the same items with ids of another JSON type: verbo eval keeps
    a COCO image id as a string ("42"), COCO's results and annotations as a number (42)."""
    if ours.keys() == theirs.keys():
        return theirs
    ours_by_text = {str(k): k for k in ours}
    if len(ours_by_text) != len(ours) or {str(k) for k in theirs} != ours_by_text.keys() or len(theirs) != len(ours):
        return theirs  # not the same items, or ids that only their types tell apart: check_same_items says so
    return {ours_by_text[str(k)]: v for k, v in theirs.items()}


def check_same_items(ours: Mapping, theirs: Mapping, path: Path) -> None:
    """A paired test needs the same items with the same references on both sides: a DataError naming the ids
    (at most 5 of each side) otherwise, rather than a comparison on an intersection the two reports do not show."""
    only_ours = [k for k in ours if k not in theirs]
    only_theirs = [k for k in theirs if k not in ours]
    if only_ours or only_theirs:
        raise DataError(f"{path}: not the same items as this evaluation: {len(only_ours)} only here "
                        f"{only_ours[:5]}, {len(only_theirs)} only there {only_theirs[:5]}; compare predictions "
                        "of the same data")
    differing = [k for k in ours if list(ours[k]) != list(theirs[k])]
    if differing:
        raise DataError(f"{path}: {len(differing)} items have other references than here, e.g. {differing[0]!r}; "
                        "compare predictions of the same data")


def compare(ours: EvalResult, theirs: EvalResult, other: str, resamples: int = RESAMPLES,
            seed: int = SEED) -> Comparison:
    """Each metric of `ours` that is a per-item mean on both sides, tested on the paired per-item differences."""
    items = max((len(scores) for scores in ours.per_item.values()), default=0)
    comparison = Comparison(other, items, resamples=resamples, seed=seed)
    for name, value in ours.values.items():
        why = _not_comparable(name, ours, theirs)
        if why:
            comparison.not_compared[name] = why
            continue
        keys = list(ours.per_item[name])
        differences = np.array([ours.per_item[name][k] - theirs.per_item[name][k] for k in keys], np.float64)
        interval, p_value = paired_bootstrap(differences, resamples, seed)
        comparison.differences.append(MetricDifference(name, float(value), float(theirs.values[name]),
                                                       math.fsum(differences) / len(differences), interval, p_value))
    return comparison


def _not_comparable(name: str, ours: EvalResult, theirs: EvalResult) -> str | None:
    if name not in theirs.values:
        return "computed with the model (the other side is its predictions)"
    mine, other = ours.per_item.get(name), theirs.per_item.get(name)
    if not mine or not other or not (is_item_mean(mine, ours.values[name])
                                     and is_item_mean(other, theirs.values[name])):
        return ("corpus-level, not a mean of per-item scores: a paired test would recompute it on every resample "
                "(BLEU from summed n-gram counts, METEOR with its Java scorer, WER/CER from summed edits); not done")
    return None


def paired_bootstrap(differences: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
                     alpha: float = 0.05) -> tuple[tuple[float, float], float]:
    """The percentile interval of the mean of per-item `differences` over `resamples` resamples of the items, and
    the two-sided p-value of a zero mean (see the module's docstring)."""
    n = len(differences)
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one item")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, _CHUNK // n)
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        means[start:start + rows] = differences[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    far_side = min(np.count_nonzero(means <= 0), np.count_nonzero(means >= 0))
    floor = 2.0 ** (1 - int(np.count_nonzero(differences)))  # all differing items of one sign, by chance
    return (float(low), float(high)), min(1.0, max(floor, 2 * (int(far_side) + 1) / (resamples + 1)))
