"""BLEU-1..n as pycocoevalcap's Bleu (pycocoevalcap/bleu/bleu_scorer.py, option="closest"), bit for bit."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .ngrams import Groups, Layout, Ngrams

# bleu_scorer.py adds these to numerator and denominator ("so that if guess is 0 still return 0").
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4
         ) -> tuple[list[float], list[list[float]]]:
    """BLEU-1..n as pycocoevalcap's Bleu(n): (corpus scores, per-image scores [image][order]).

    Sentences are whitespace-tokenized as given (tokenize them first with ``ptb_tokenize``).
    """
    layout = Layout.build(hypotheses, references)
    return bleu_of_ngrams(Ngrams(layout, n), n)


def bleu_of_ngrams(ngrams: Ngrams, n: int) -> tuple[list[float], list[list[float]]]:
    layout = ngrams.layout
    test_len = ngrams.tokens.lengths[layout.hyp]
    ref_len = _closest_ref_len(ngrams.tokens.lengths[layout.refs], layout.n_refs, test_len)
    correct = np.stack([_clipped_matches(g, layout) for g in ngrams.orders[:n]], axis=1)
    guess = np.maximum(0, test_len[:, None] - np.arange(n)[None, :])
    per_image = _bleu_scores(correct, guess, test_len, ref_len)
    corpus = _bleu_scores(correct.sum(axis=0, keepdims=True), guess.sum(axis=0, keepdims=True),
                          test_len.sum(keepdims=True), ref_len.sum(keepdims=True))[0]
    return corpus, per_image


def _closest_ref_len(ref_lengths: np.ndarray, n_refs: np.ndarray, test_len: np.ndarray) -> np.ndarray:
    """Per image, the reference length closest to the hypothesis length; the shorter one on ties."""
    image = np.repeat(np.arange(len(n_refs)), n_refs)
    scale = int(ref_lengths.max()) + 1
    key = np.abs(ref_lengths - test_len[image]) * scale + ref_lengths
    return np.minimum.reduceat(key, np.cumsum(n_refs) - n_refs) % scale


def _clipped_matches(groups: Groups, layout: Layout) -> np.ndarray:
    """Per image, the hypothesis n-gram counts clipped by the largest count in any one reference."""
    hyp_count = np.where(layout.is_hyp[groups.sentence], groups.count, 0)
    ref_count = groups.count - hyp_count
    if len(groups.segment) == 0:
        return np.zeros(len(layout.hyp), np.int64)
    clipped = np.minimum(hyp_count[groups.segment], np.maximum.reduceat(ref_count, groups.segment))
    image = layout.image[groups.sentence[groups.segment]]
    return np.bincount(image, weights=clipped, minlength=len(layout.hyp)).astype(np.int64)


def _bleu_scores(correct: np.ndarray, guess: np.ndarray, test_len: np.ndarray, ref_len: np.ndarray
                 ) -> list[list[float]]:
    """BleuScorer.compute_score's arithmetic for each row, operation for operation.

    Products, quotients and sums are exact IEEE operations in numpy too; the powers and the exponential are
    taken with Python's float ** and math.exp, as bleu_scorer.py does (numpy's SIMD versions may round
    differently).
    """
    products = np.cumprod((correct + _BLEU_TINY) / (guess + _BLEU_SMALL), axis=1)  # bleu *= ..., k = 1..n
    exponents = [1.0 / (k + 1) for k in range(correct.shape[1])]
    scores = [[p ** e for p, e in zip(row, exponents)] for row in products.tolist()]
    ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    for i in np.flatnonzero(ratio < 1).tolist():
        penalty = math.exp(1 - 1 / float(ratio[i]))
        scores[i] = [s * penalty for s in scores[i]]
    return scores
