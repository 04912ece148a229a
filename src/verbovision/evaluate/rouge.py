"""ROUGE-L as pycocoevalcap's Rouge (pycocoevalcap/rouge/rouge.py), bit for bit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .ngrams import Layout, Tokens, run_starts

_ROUGE_BETA = 1.2
_WORD_BITS = 64
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], np.int64)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
    """ROUGE-L as pycocoevalcap's Rouge: (mean over images, per-image scores).

    Per image: precision and recall maxed separately over the references, then F with beta = 1.2. Tokens are
    split on single spaces, as rouge.py does (so "" is one empty token).
    """
    layout = Layout.build(hypotheses, references)
    return rouge_l_of_tokens(layout, Tokens.split(layout.sentences, on_spaces=True))


def rouge_l_of_tokens(layout: Layout, tokens: Tokens) -> tuple[float, np.ndarray]:
    hyp_len = tokens.lengths[layout.hyp].astype(np.float64)
    ref_len = tokens.lengths[layout.refs].astype(np.float64)
    pair_image = layout.image[layout.refs]
    lcs = _lcs_lengths(tokens, layout)
    begin = np.cumsum(layout.n_refs) - layout.n_refs
    prec = np.maximum.reduceat(lcs / hyp_len[pair_image], begin)
    rec = np.maximum.reduceat(lcs / ref_len, begin)
    beta2 = _ROUGE_BETA ** 2
    scores = np.zeros(len(layout.hyp))
    ok = (prec != 0) & (rec != 0)
    scores[ok] = ((1 + beta2) * prec[ok] * rec[ok]) / (rec[ok] + beta2 * prec[ok])
    return float(np.mean(scores)), scores


def _lcs_lengths(tokens: Tokens, layout: Layout) -> np.ndarray:
    """LCS length of each (hypothesis, reference) pair, for all pairs at once (bit-parallel, Hyyro 2004).

    Bit i of a pair's state word stands for hypothesis token i; one step per reference token. Hypotheses
    longer than 64 tokens take a plain dynamic programme.
    """
    offsets, lengths, ids = tokens.offsets, tokens.lengths, tokens.ids
    pair_image = layout.image[layout.refs]
    hyp_len = lengths[layout.hyp]
    lcs = np.zeros(len(layout.refs), np.float64)
    for p in np.flatnonzero(hyp_len[pair_image] > _WORD_BITS).tolist():
        hyp, ref = layout.hyp[pair_image[p]], layout.refs[p]
        lcs[p] = _lcs_dp(ids[offsets[hyp]:offsets[hyp] + lengths[hyp]].tolist(),
                         ids[offsets[ref]:offsets[ref] + lengths[ref]].tolist())
    masks = _reference_token_masks(tokens, layout)
    ref_len = lengths[layout.refs]
    pair_start = np.cumsum(ref_len) - ref_len
    pairs = np.flatnonzero(hyp_len[pair_image] <= _WORD_BITS)
    pairs = pairs[np.argsort(-ref_len[pairs], kind="stable")]  # the pairs still running form a prefix
    running = np.searchsorted(-ref_len[pairs], -np.arange(int(ref_len.max(initial=0))), side="left")
    state = np.full(len(pairs), np.iinfo(np.uint64).max, np.uint64)
    for j, n in enumerate(running.tolist()):
        u = state[:n] & masks[pair_start[pairs[:n]] + j]
        state[:n] = (state[:n] + u) | (state[:n] - u)
    m = hyp_len[pair_image[pairs]]
    low_bits = np.where(m == _WORD_BITS, np.iinfo(np.uint64).max,
                        (np.uint64(1) << np.minimum(m, _WORD_BITS - 1).astype(np.uint64)) - np.uint64(1))
    lcs[pairs] = m - _popcount(state & low_bits)
    return lcs


def _reference_token_masks(tokens: Tokens, layout: Layout) -> np.ndarray:
    """For every reference token, the bitmask of the positions of that word in its image's hypothesis."""
    offsets, lengths, ids = tokens.offsets, tokens.lengths, tokens.ids
    vocab = max(tokens.vocab_size, 1)
    hyp_len = lengths[layout.hyp]
    hyp_tokens = _ranges(offsets[layout.hyp], hyp_len)
    position = hyp_tokens - np.repeat(offsets[layout.hyp], hyp_len)
    key = np.repeat(np.arange(len(layout.hyp)), hyp_len) * vocab + ids[hyp_tokens]
    order = np.argsort(key)
    key, position = key[order], position[order]
    bits = np.where(position < _WORD_BITS, np.uint64(1) << np.minimum(position, _WORD_BITS - 1).astype(np.uint64),
                    np.uint64(0))
    begin = run_starts(key)  # every hypothesis has a token: str.split(" ") never returns []
    keys, word_masks = key[begin], np.bitwise_or.reduceat(bits, begin)
    ref_len = lengths[layout.refs]
    ref_key = np.repeat(layout.image[layout.refs], ref_len) * vocab + ids[_ranges(offsets[layout.refs], ref_len)]
    found = np.searchsorted(keys, ref_key).clip(max=len(keys) - 1)
    return np.where(keys[found] == ref_key, word_masks[found], np.uint64(0))


def _popcount(x: np.ndarray) -> np.ndarray:
    return _POPCOUNT8[x.view(np.uint8)].reshape(-1, 8).sum(axis=1)


def _lcs_dp(a: Sequence, b: Sequence) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of range(start, start + length) for each pair."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
