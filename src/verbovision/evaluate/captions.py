"""``score_captions``: a caption per image scored as pycocoevalcap's COCOEvalCap does (BLEU-1..4, METEOR, ROUGE-L,
CIDEr-D, optionally SPICE, named as pycocoevalcap names them)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .bleu import bleu_of_ngrams
from .cider import CiderD
from .inputs import check_same_ids
from .java_scorers import MetricUnavailable, meteor, spice
from .ngrams import Layout, Ngrams, Tokens
from .ptb import ptb_tokenize, tokenize_captions
from .rouge import rouge_l_of_tokens


@dataclass(frozen=True)
class CaptionScores:
    corpus: dict[str, float]
    """Corpus scores named as pycocoevalcap names them: Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE."""
    per_image: dict
    """id -> {metric name: score of that image}."""
    skipped: dict[str, str]
    """Requested metrics that could not be computed -> the reason."""


CAPTION_METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")


def score_captions(predictions: Mapping[object, str], references: Mapping[object, Sequence[str]],
                   metrics: Sequence[str] = ("bleu", "meteor", "rouge_l", "cider"),
                   tokenize: bool = True) -> CaptionScores:
    """Score one caption per image against its references as pycocoevalcap's COCOEvalCap does.

    `metrics` are some of CAPTION_METRICS ("spice" only on request). Images are scored in the order of
    `references` (pycocoevalcap iterates its gts dict); with `tokenize` the references and the predictions are
    PTB-tokenized in two batches in that order, as COCOEvalCap does; without it they are taken as tokenized.
    CIDEr-D's document frequencies come from these references. Per-image scores use the corpus names.
    """
    unknown = set(metrics) - set(CAPTION_METRICS)
    if unknown:
        raise ValueError(f"unknown caption metrics {sorted(unknown)}; expected some of {CAPTION_METRICS}")
    check_same_ids(predictions, references)
    keys = list(references)
    hyps = [predictions[k] for k in keys]
    if not all(isinstance(h, str) for h in hyps):
        raise TypeError("predictions must map each id to one caption string")
    refs = [list(references[k]) for k in keys]
    if tokenize:
        hyps = ptb_tokenize(hyps)
        refs = list(tokenize_captions(dict(zip(keys, refs))).values())
    corpus: dict[str, float] = {}
    per_image: dict = {k: {} for k in keys}
    skipped: dict[str, str] = {}
    data = _CaptionData(hyps, refs)
    for metric in metrics:
        try:
            values, images = getattr(data, metric)()
        except MetricUnavailable as exc:
            skipped[metric] = str(exc)
            continue
        corpus.update(values)
        for key, scores in zip(keys, images):
            per_image[key].update(scores)
    return CaptionScores(corpus, per_image, skipped)


# A metric's corpus scores by name, and one {name: score} per image.
_MetricResult = tuple[dict[str, float], list[dict[str, float]]]


class _CaptionData:
    """One scored set, with the token and n-gram tables its metrics share; one method per metric name."""

    def __init__(self, hyps: list[str], refs: list[list[str]]):
        self.hyps, self.refs = hyps, refs
        self.layout = Layout.build(hyps, refs)

    @functools.cached_property
    def _tokens(self) -> Tokens:
        return Tokens.split(self.layout.sentences)

    @functools.cached_property
    def _ngrams(self) -> Ngrams:
        return Ngrams(self.layout, 4, self._tokens)

    def bleu(self) -> _MetricResult:
        corpus, images = bleu_of_ngrams(self._ngrams, 4)
        names = [f"Bleu_{k}" for k in range(1, 5)]
        return dict(zip(names, corpus)), [dict(zip(names, s)) for s in images]

    def rouge_l(self) -> _MetricResult:
        tokens = self._tokens if self._tokens.space_split else Tokens.split(self.layout.sentences, on_spaces=True)
        corpus, images = rouge_l_of_tokens(self.layout, tokens)
        return {"ROUGE_L": corpus}, [{"ROUGE_L": float(s)} for s in images]

    def cider(self) -> _MetricResult:
        images = CiderD()._score(self._ngrams)
        return {"CIDEr": float(np.mean(images))}, [{"CIDEr": float(s)} for s in images]

    def meteor(self) -> _MetricResult:
        return self._java("METEOR", meteor)

    def spice(self) -> _MetricResult:
        return self._java("SPICE", spice)

    def _java(self, name: str, function: Callable[..., tuple[float, list[float]]]) -> _MetricResult:
        corpus, images = function(self.hyps, self.refs)
        return {name: corpus}, [{name: s} for s in images]
