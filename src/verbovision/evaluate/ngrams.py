"""Token and n-gram tables shared by BLEU, ROUGE-L and CIDEr-D.

BLEU-1..4, ROUGE-L and CIDEr-D return the same floats, bit for bit, as pycocoevalcap 1.2's ``Bleu(4)``, ``Rouge`` and
``Cider``: every order-dependent floating-point sum runs in pycocoevalcap's order (n-grams in first-occurrence order,
the same ``np.mean`` calls), and every transcendental function is the same scalar call (Python's ``**`` and
``math.exp``, ``np.log`` on scalars, libm's ``pow(x, 2)``, which is not always ``x * x``) -- never a vectorised numpy
ufunc, whose SIMD kernels may round differently. Sentences are whitespace-tokenized as given (tokenize them first
with ``ptb.ptb_tokenize``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """Sentences as the scorers see them: image by image, each image's hypothesis followed by its references."""
    sentences: list[str]
    image: np.ndarray        # image index of each sentence
    is_hyp: np.ndarray       # True for the hypothesis sentences
    hyp: np.ndarray          # sentence index of each image's hypothesis
    refs: np.ndarray         # sentence indices of all references, image by image
    n_refs: np.ndarray       # number of references of each image

    @classmethod
    def build(cls, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> Layout:
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
        if not references:
            raise ValueError("nothing to score: no captions given")
        if any(len(refs) == 0 for refs in references):
            raise ValueError("every hypothesis needs at least one reference")
        n_refs = np.fromiter(map(len, references), np.int64, len(references))
        sentences = [s for hyp, refs in zip(hypotheses, references) for s in (hyp, *refs)]
        image = np.repeat(np.arange(len(hypotheses)), n_refs + 1)
        hyp = np.cumsum(n_refs + 1) - (n_refs + 1)
        is_hyp = np.zeros(len(sentences), bool)
        is_hyp[hyp] = True
        return cls(sentences, image, is_hyp, hyp, np.flatnonzero(~is_hyp), n_refs)


@dataclass(frozen=True)
class Groups:
    """The distinct n-grams of one order in every sentence, sorted by (n-gram, sentence)."""
    ngram: np.ndarray        # dense n-gram id, non-decreasing
    sentence: np.ndarray     # sentence holding the n-gram
    count: np.ndarray        # occurrences in that sentence
    first: np.ndarray        # token index of the first occurrence: pycocoevalcap's dicts iterate in this order
    segment: np.ndarray      # start of each run of groups with the same n-gram and image (hypothesis first)


@dataclass(frozen=True)
class Tokens:
    """The tokens of a list of sentences, as word ids in one array."""
    words: list[str]
    ids: np.ndarray          # word id of each token, sentence after sentence
    lengths: np.ndarray      # tokens per sentence
    vocab_size: int
    space_split: bool
    """Whether these are also the str.split(" ") tokens (rouge.py's), i.e. the text is single-spaced words."""

    @classmethod
    def split(cls, sentences: Sequence[str], on_spaces: bool = False) -> Tokens:
        """str.split() tokens (BLEU and CIDEr), or str.split(" ") tokens (ROUGE-L) when `on_spaces`."""
        joined = " ".join(sentences)  # joining with " " keeps both splits' tokens, even split(" ")'s empty ones
        # A leading, trailing or doubled space, or an empty sentence, shows in the joined text at an end or as a
        # double space; without those and other whitespace both splits agree.
        single_spaced = (joined[:1] not in ("", " ") and joined[-1] != " " and "  " not in joined
                         and _OTHER_WHITESPACE.search(joined) is None)
        if on_spaces or single_spaced:
            words = joined.split(" ")
            lengths = np.fromiter((s.count(" ") + 1 for s in sentences), np.int64, len(sentences))
        else:
            words = joined.split()
            lengths = np.fromiter(map(len, map(str.split, sentences)), np.int64, len(sentences))
        vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
        ids = np.fromiter(map(vocab.__getitem__, words), np.int64, len(words))
        return cls(words, ids, lengths, len(vocab), on_spaces or single_spaced)

    @property
    def offsets(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths


_OTHER_WHITESPACE = re.compile(r"[^\S ]")


class Ngrams:
    """Whitespace tokens (str.split, as pycocoevalcap's precook) and their n-grams of orders 1..max_n."""

    def __init__(self, layout: Layout, max_n: int, tokens: Tokens | None = None):
        self.layout = layout
        self.tokens = tokens = tokens or Tokens.split(layout.sentences)
        ids, lengths = tokens.ids, tokens.lengths
        self.token_sentence = sentence = np.repeat(np.arange(len(lengths)), lengths)
        remaining = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(ids))  # tokens left in the sentence
        self.orders: list[Groups] = []
        dense = ids  # dense id of the (k-1)-gram starting at each token
        for k in range(1, max_n + 1):
            groups, dense = self._group(ids, dense, sentence, remaining, k, max(tokens.vocab_size, 1))
            self.orders.append(groups)

    def _group(self, ids: np.ndarray, dense: np.ndarray, sentence: np.ndarray, remaining: np.ndarray, k: int,
               vocab_size: int) -> tuple[Groups, np.ndarray]:
        """The groups of order k, and the dense id of the k-gram starting at each token (-1 where none does)."""
        starts = np.flatnonzero(remaining >= k)
        code = ids[starts] if k == 1 else dense[starts] * vocab_size + ids[starts + k - 1]
        n_sentences = max(len(self.tokens.lengths), 1)
        if len(code) and (int(code.max()) + 1) * n_sentences >= 2 ** 62:  # keep the sort key inside int64
            code = np.unique(code, return_inverse=True)[1].astype(np.int64)
        key = code * n_sentences + sentence[starts]
        order = np.argsort(key)
        key, starts = key[order], starts[order]
        begin = run_starts(key)
        count = np.diff(np.append(begin, len(key)))
        group_code = key[begin] // n_sentences
        ngram = np.cumsum(_run_flags(group_code)) - 1
        group_sentence = key[begin] - group_code * n_sentences
        image = self.layout.image[group_sentence]
        segment = np.flatnonzero(_run_flags(ngram) | _run_flags(image))
        first = np.minimum.reduceat(starts, begin) if len(begin) else begin
        next_dense = np.full(len(ids), -1, np.int64)
        next_dense[starts] = np.repeat(ngram, count)
        return Groups(ngram, group_sentence, count, first, segment), next_dense

    def ngram_words(self, k: int) -> list[tuple[str, ...]]:
        """The words of each dense n-gram id of order k."""
        groups = self.orders[k - 1]
        firsts = groups.first[np.flatnonzero(_run_flags(groups.ngram))]
        words = self.tokens.words
        return [tuple(words[t:t + k]) for t in firsts.tolist()]


def _run_flags(values: np.ndarray) -> np.ndarray:
    """True where a run of equal values starts."""
    flags = np.ones(len(values), bool)
    flags[1:] = values[1:] != values[:-1]
    return flags


def run_starts(values: np.ndarray) -> np.ndarray:
    return np.flatnonzero(_run_flags(values))
