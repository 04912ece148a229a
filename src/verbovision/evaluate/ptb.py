"""pycocoevalcap's PTBTokenizer: Stanford CoreNLP 3.4.1 ``PTBTokenizer -preserveLines -lowerCase`` followed by the
removal of pycocoevalcap's PUNCTUATIONS tokens.

The Java lexer reads all captions as one file, so a caption's tokens can depend on the next caption ("... letter A."
then "A dog" gives "a", "."; then "the dog" gives "a.") and the last caption sees the end of the file;
``ptb_tokenize`` lexes the same joined text and reproduces both effects. Brackets come out as "-lrb-" etc., as in
pycocoevalcap (its punctuation list has them in upper case only). The grammar itself is in ptb_grammar.py.

Known difference from pycocoevalcap: line breaks inside a caption ("\\r", U+2028, U+2029, VT, FF). pycocoevalcap
only replaces "\\n", so Java sees extra lines and pairs every later caption of the call with the wrong tokens. Here
they are spaces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from .ptb_grammar import ABBREV1_WORDS, ABBREV3_WORDS, ABBREV4_WORDS, lex_at

#: Tokens pycocoevalcap drops after tokenizing (pycocoevalcap/tokenizer/ptbtokenizer.py). Brackets come out of
#: Java lowercased ("-lrb-"), so the upper-case bracket entries never match and brackets survive as tokens.
PTB_PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                              "-", "--", "...", ";"])


# Fast paths, equivalent to the rule search where they apply. No rule that starts at a letter can match across a
# space unless the word holds a "." or an "@", so a plain word (inner hyphens allowed) followed by a space or
# line end is a token -- and so are a following "," or ".", unless the grammar splits the word, the period
# belongs to the word (abbreviations, single letters: _PERIOD_WORDS is a superset of them) or starts a spaced
# ellipsis (". . ."). A clitic such as "'s" after the word is its own token: the only longer competitors, words
# with an inner apostrophe, at best tie and come later in the grammar (except "cont'd.").
_PLAIN_WORD = re.compile(r"([A-Za-z]+(?:-[A-Za-z]+)*)('(?:[sSmMdD]|[rR][eE]|[vV][eE]|[lL][lL]))?"
                         r"(?:(,)|(\.)(?! \.))?(?= |\n|\Z)")
_PLAIN_NUMBER = re.compile(r"[0-9]+(?= [^0-9]|\n|\Z)")  # a digit after the space could make a phone number
_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_PERIOD_WORDS = frozenset(
    w.replace("[", "").replace("]", "").lower()
    for w in "|".join((ABBREV1_WORDS, ABBREV4_WORDS, ABBREV3_WORDS)).split("|")) | frozenset(
    "abcdefghijklmnopqrstuvwxyz")
# A caption made of such words (no clitics), commas and one final period lexes as its words. The captions that
# are not of that kind hold a character outside it, a hyphen not inside a word, a period before the end, one of
# the split words, or a final period that may belong to its word. These regexes are literal or one character
# class, so they scan the text fast.
_ODD_CHAR = re.compile(r"[^A-Za-z ,.\n-]")
_HYPHEN_CHAR = re.compile("-")
_EARLY_PERIOD = re.compile(r"\.(?! *(?:\n|\Z))")
_FINAL_PERIOD = re.compile(r"\.(?= *(?:\n|\Z))")
_SPLIT_WORDS_BYTES = re.compile(b"cannot|gonna|gotta|lemme|gimme|wanna")
_SPACES = re.compile("  +")
# Java ends a line at these; pycocoevalcap only replaces "\n" in captions (see "Known differences").
_LINE_BREAKS = re.compile("\r|\u2028|\u2029|\u000B|\u000C")


def _lex_line(text: str, start: int, end: int) -> list[str]:
    """Raw PTB tokens of text[start:end] (one caption); lookahead may read on into the following captions."""
    tokens: list[str] = []
    pos = start
    while pos < end:
        if text[pos] == " ":
            pos += 1
            continue
        plain = _PLAIN_WORD.match(text, pos)
        if plain is not None and _is_plain(*plain.group(1, 2, 4)):
            tokens.extend(t for t in plain.groups() if t)
            pos = plain.end()
            continue
        plain = _PLAIN_NUMBER.match(text, pos)
        if plain is not None:
            tokens.append(plain.group())
            pos = plain.end()
            continue
        new_tokens, consumed = lex_at(text, pos)
        tokens.extend(new_tokens)
        pos += consumed
    return tokens


def _is_plain(word: str, clitic: str | None, period: str | None) -> bool:
    lower = word.lower()
    if clitic:  # "cont'd." is a word of its own
        return lower not in _SPLIT_WORDS and lower != "cont"
    return lower not in _SPLIT_WORDS and not (period and lower in _PERIOD_WORDS)


def _java_lower(token: str) -> str:
    """Java's String.toLowerCase, which differs from str.lower() only in when a capital sigma is word-final."""
    if "\u03A3" not in token:
        return token.lower()
    return "".join(_java_lower_sigma(token, i) if c == "\u03A3" else c.lower() for i, c in enumerate(token))


# The JDK's word BreakIterator joins letters across these (its "$_mid_word_" characters).
_JAVA_MID_WORD = frozenset("-\u00AD\u2010\u2011\u2012\u2013\u2014\u2015\u2027\"'.")


def _java_lower_sigma(token: str, i: int) -> str:
    """Final sigma iff the JDK word around position i has a cased letter before i and none after it."""
    def joins(j: int) -> bool:  # is token[j] inside the word?
        if token[j].isalnum():
            return True
        return token[j] in _JAVA_MID_WORD and 0 < j < len(token) - 1 and token[j - 1].isalpha() \
            and token[j + 1].isalpha()
    start, end = i, i + 1
    while start > 0 and joins(start - 1):
        start -= 1
    while end < len(token) and joins(end):
        end += 1
    cased = [c.islower() or c.isupper() or c.istitle() for c in token[start:end]]
    final = any(cased[:i - start]) and not any(cased[i - start + 1:])
    return "\u03C2" if final else "\u03C3"


def _plain_results(text: str) -> list[str]:
    """Each line's result if it is a plain caption: its lowercased words, without commas and periods."""
    words = text.lower().replace(",", " ").replace(".", " ")
    words = _SPACES.sub(" ", words).replace(" \n", "\n").replace("\n ", "\n").strip(" ")
    return words.split("\n")


def _special_lines(text: str, line_starts: np.ndarray, plain: list[str]) -> list[int]:
    """The lines that are not plain captions, in order; `plain` holds each line's result if it were plain."""
    positions = [m.start() for m in _ODD_CHAR.finditer(text)]
    positions += [i for i in (m.start() for m in _HYPHEN_CHAR.finditer(text))
                  if not (text[i - 1:i].isalpha() and text[i + 1:i + 2].isalpha())]
    positions += [m.start() for m in _EARLY_PERIOD.finditer(text)]
    # bytes keep one position per character, and bytes.lower() only touches ASCII: a conservative search
    positions += [m.start() for m in _SPLIT_WORDS_BYTES.finditer(text.encode("latin-1", "replace").lower())]
    special = set((np.searchsorted(line_starts, positions, side="right") - 1).tolist())
    for i in (np.searchsorted(line_starts, [m.start() for m in _FINAL_PERIOD.finditer(text)], side="right")
              - 1).tolist():
        if plain[i].rpartition(" ")[2] in _PERIOD_WORDS:
            special.add(i)
    return sorted(special)


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer on `captions` lexed as one file, in this order: one string per caption.

    Each result is the space-joined lowercased PTB tokens minus pycocoevalcap's PUNCTUATIONS, as pycocoevalcap
    returns it. The order matters only in rare cases (see the module docstring); pass captions in the order
    pycocoevalcap would (``tokenize_captions`` does).
    """
    text = "\n".join(captions)
    if text.count("\n") == len(captions) - 1 and _LINE_BREAKS.search(text) is None:
        lines = captions  # the common case: no line breaks inside captions
    else:
        lines = [_LINE_BREAKS.sub(" ", c.replace("\n", " ")) for c in captions]
        text = "\n".join(lines)
    starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]]) if len(lines) else np.zeros(0, np.int64)
    results = _plain_results(text) if lines else []
    for i in _special_lines(text, starts, results):
        start = int(starts[i])
        raw = _lex_line(text, start, start + len(lines[i]))
        results[i] = " ".join(t for t in map(_java_lower, raw) if t not in PTB_PUNCTUATIONS)
    return results


def ptb_raw_tokens(caption: str) -> list[str]:
    """The PTB tokens of one caption before lowercasing and punctuation removal (for debugging parity)."""
    return _lex_line(caption, 0, len(caption))


def tokenize_captions(captions: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """Tokenize {id: [caption, ...]} exactly as pycocoevalcap's PTBTokenizer.tokenize (same file order)."""
    flat = ptb_tokenize([c for caps in captions.values() for c in caps])
    out, i = {}, 0
    for key, caps in captions.items():
        out[key] = flat[i:i + len(caps)]
        i += len(caps)
    return out
