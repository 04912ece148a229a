"""CIDEr-D as pycocoevalcap's Cider (pycocoevalcap/cider/cider_scorer.py), bit for bit; also a reusable SCST reward
with fixed document frequencies.

The document frequencies come from the references of the evaluated set, as in pycocoevalcap, so ``bootstrap_ci``
over per-image CIDEr resamples scores computed with the full set's df held fixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .ngrams import Groups, Layout, Ngrams


class CiderD:
    """CIDEr-D as pycocoevalcap's Cider (n-grams 1..n, Gaussian length penalty sigma, clipping, x10).

    ``CiderD()`` takes the document frequencies from the references of each scored set, exactly as
    pycocoevalcap does. ``CiderD(corpus_references)`` fixes them once from a reference corpus (one list of
    tokenized captions per image, e.g. the training set for an SCST reward) and reuses them for every call;
    log(number of corpus images) then replaces log(number of scored images).
    """

    def __init__(self, corpus_references: Sequence[Sequence[str]] | None = None, n: int = 4,
                 sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        self._corpus_df: dict[tuple[str, ...], int] | None = None
        self._corpus_log_size = 0.0
        self.corpus_size = 0
        if corpus_references is not None:
            self.corpus_size = len(corpus_references)
            self._corpus_df, self._corpus_log_size = self._document_frequencies(corpus_references)

    def scores_nothing(self) -> bool:
        """Whether the fixed document frequencies give every reference n-gram an idf of 0 (each occurs in the
        references of every corpus image: always so for one image), so that every score is 0."""
        return self._corpus_df is not None and all(df >= self.corpus_size for df in self._corpus_df.values())

    def _document_frequencies(self, corpus: Sequence[Sequence[str]]) -> tuple[dict[tuple[str, ...], int], float]:
        layout = Layout.build([""] * len(corpus), corpus)
        ngrams = Ngrams(layout, self.n)
        df: dict[tuple[str, ...], int] = {}
        for k in range(1, self.n + 1):
            df.update(zip(ngrams.ngram_words(k), _set_document_frequency(ngrams.orders[k - 1], layout).tolist()))
        return df, np.log(float(len(corpus)))

    def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of each hypothesis against its references (whitespace tokens, as given)."""
        ngrams = Ngrams(Layout.build(hypotheses, references), self.n)
        return self._score(ngrams)

    def _score(self, ngrams: Ngrams) -> np.ndarray:
        layout = ngrams.layout
        # pycocoevalcap: ref_len = np.log(float(len(self.crefs))), with df counted over the scored set.
        log_size = self._corpus_log_size if self._corpus_df is not None else np.log(float(len(layout.hyp)))
        bigrams = np.maximum(ngrams.tokens.lengths - 1, 0)  # cider_scorer.py's "length" counts bigrams (n == 1)
        delta = bigrams[layout.hyp][layout.image[layout.refs]] - bigrams[layout.refs]
        penalty = self._length_penalties(delta)
        per_order = []
        for k in range(1, self.n + 1):
            groups = ngrams.orders[k - 1]
            df = self._frequencies(ngrams, k, layout)
            per_order.append(_cider_order(groups, layout, ngrams.token_sentence, df, log_size, penalty))
        score = np.mean(np.stack(per_order, axis=1), axis=1)  # np.mean(score) over the n orders
        return score / layout.n_refs * 10.0

    def _frequencies(self, ngrams: Ngrams, k: int, layout: Layout) -> np.ndarray:
        if self._corpus_df is None:
            return _set_document_frequency(ngrams.orders[k - 1], layout)
        get = self._corpus_df.get
        return np.fromiter((get(words, 0) for words in ngrams.ngram_words(k)), np.int64)

    def _length_penalties(self, delta: np.ndarray) -> np.ndarray:
        """np.e ** (-(delta ** 2) / (2 * sigma ** 2)), evaluated as cider_scorer.py does (Python float pow)."""
        values = {d: np.e ** (-(float(d) ** 2) / (2 * self.sigma ** 2)) for d in set(delta.tolist())}
        return np.fromiter((values[d] for d in delta.tolist()), np.float64, len(delta))


def _set_document_frequency(groups: Groups, layout: Layout) -> np.ndarray:
    """Per n-gram, the number of images whose references contain it (hypotheses do not count)."""
    seg_len = np.diff(np.append(groups.segment, len(groups.ngram)))
    has_ref = seg_len > layout.is_hyp[groups.sentence[groups.segment]]
    n_ngrams = int(groups.ngram[-1]) + 1 if len(groups.ngram) else 0
    return np.bincount(groups.ngram[groups.segment[has_ref]], minlength=n_ngrams)


def _cider_order(groups: Groups, layout: Layout, token_sentence: np.ndarray, df: np.ndarray, log_size: float,
                 penalty: np.ndarray) -> np.ndarray:
    """Per image, the order-k similarity summed over its references, in cider_scorer.py's float operations."""
    n_images = len(layout.hyp)
    if len(groups.ngram) == 0:
        return np.zeros(n_images)
    group_df = df[groups.ngram]
    idf, square = _idf_tables(group_df, groups.count, log_size)
    weight = groups.count.astype(np.float64) * idf[group_df]  # float(term_freq) * (ref_len - df)
    # norm[n] += pow(vec[n][ngram], 2) in the order the sentence's n-grams first occur: place each square at its
    # first occurrence and sum the tokens in text order (adding the zeros in between changes nothing)
    n_tokens = len(token_sentence)
    at_first = np.zeros(n_tokens)
    at_first[groups.first] = square[groups.count, group_df]
    norm = np.sqrt(np.bincount(token_sentence, weights=at_first, minlength=len(layout.sentences)))
    hyp_group = _segment_hyp_group(groups, layout)
    matched = np.flatnonzero(~layout.is_hyp[groups.sentence] & (hyp_group >= 0))
    partner = hyp_group[matched]
    # val[n] += min(vec_hyp, vec_ref) * vec_ref, summed per reference in the hypothesis's n-gram order
    term = np.minimum(weight[partner], weight[matched]) * weight[matched]
    order = np.argsort(groups.sentence[matched] * n_tokens + groups.first[partner])
    val = np.bincount(groups.sentence[matched][order], weights=term[order], minlength=len(layout.sentences))
    val = val[layout.refs]
    norm_hyp = norm[layout.hyp][layout.image[layout.refs]]
    norm_ref = norm[layout.refs]
    both = (norm_hyp != 0) & (norm_ref != 0)
    val[both] = val[both] / (norm_hyp[both] * norm_ref[both])
    val = val * penalty
    return np.bincount(layout.image[layout.refs], weights=val, minlength=n_images)


def _idf_tables(df: np.ndarray, count: np.ndarray, log_size: float) -> tuple[np.ndarray, np.ndarray]:
    """idf[df] = ref_len - np.log(max(1.0, df)) and square[count, df] = pow(count * idf, 2) for the pairs used.

    Both are computed per distinct value with the scalar calls cider_scorer.py makes: numpy's vectorised log and
    libm's pow may round differently from the scalar ones, and pow(x, 2) is not always x * x.
    """
    max_df = int(df.max(initial=0))
    idf = np.zeros(max_df + 1)
    for d in np.flatnonzero(np.bincount(df)).tolist():
        idf[d] = log_size - np.log(max(1.0, float(d)))
    square = np.zeros((int(count.max()) + 1, max_df + 1))
    used = np.zeros(square.shape, bool)
    used[count, df] = True
    for c, d in zip(*np.nonzero(used)):
        square[c, d] = pow(float(c) * idf[d], 2)
    return idf, square


def _segment_hyp_group(groups: Groups, layout: Layout) -> np.ndarray:
    """For each group, the hypothesis group of the same n-gram and image, or -1 (hypothesis groups sort first)."""
    seg_len = np.diff(np.append(groups.segment, len(groups.ngram)))
    head = groups.segment
    hyp_of_segment = np.where(layout.is_hyp[groups.sentence[head]], head, -1)
    return np.repeat(hyp_of_segment, seg_len)
