"""METEOR and SPICE: pycocoevalcap's own Java scorers, or a reason why they cannot run (``MetricUnavailable``; the
caller reports it, never a silent zero). SPICE downloads Stanford CoreNLP on first use.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Sequence


class MetricUnavailable(RuntimeError):
    """A metric that needs Java and pycocoevalcap could not be computed; the message says why."""


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """METEOR 1.5 through pycocoevalcap (Java): (corpus score, per-image scores). Raises MetricUnavailable."""
    scorer = _java_scorer("METEOR", "pycocoevalcap.meteor.meteor", "Meteor")
    try:
        score, scores = scorer.compute_score(*_coco_inputs(hypotheses, references))
    except Exception as exc:  # a dead JVM shows up as a ValueError on its empty output
        raise _failed("METEOR", exc) from exc
    finally:
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
        if scorer.lock.locked():  # left held by a failed compute_score; Meteor.__del__ would wait on it forever
            scorer.lock.release()
    return float(score), [float(s) for s in scores]


def spice(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """SPICE through pycocoevalcap (Java; downloads Stanford CoreNLP on first use): (corpus score, per-image
    F-scores). Raises MetricUnavailable."""
    scorer = _java_scorer("SPICE", "pycocoevalcap.spice.spice", "Spice")
    try:
        score, scores = scorer.compute_score(*_coco_inputs(hypotheses, references))
    except Exception as exc:
        raise _failed("SPICE", exc) from exc
    return float(score), [float(s["All"]["f"]) for s in scores]  # in sorted id order, i.e. input order


def _java_scorer(name: str, module: str, cls: str) -> object:
    if shutil.which("java") is None:
        raise MetricUnavailable(f"java not found: {name} runs the official Java program; install a Java runtime "
                                "(e.g. OpenJDK: apt install default-jre) to compute it")
    try:
        scorer_class = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise MetricUnavailable(f"pycocoevalcap, which runs {name}, is not importable ({exc}); reinstall "
                                "verbovision (it depends on pycocoevalcap)") from exc
    try:
        return scorer_class()
    except Exception as exc:  # SPICE fetches CoreNLP here, which fails offline
        raise _failed(name, exc) from exc


def _failed(name: str, exc: Exception) -> MetricUnavailable:
    """The reason a Java scorer failed, on one line (a JVM's messages run over several)."""
    return MetricUnavailable(" ".join(f"{name} failed: {type(exc).__name__}: {exc}".split()))


def _coco_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """pycocoevalcap's gts and res dicts, keyed by position."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    return dict(enumerate(map(list, references))), {i: [h] for i, h in enumerate(hypotheses)}
