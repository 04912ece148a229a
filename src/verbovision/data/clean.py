"""`verbo data clean`: near-duplicate images, normalised texts, language and length filters."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..files import write_atomic
from .convert import ImagePlacer, write_llava
from .image_checks import MIN_IMAGE_SIDE, ImageInspector, ImageVerdict, NearDuplicates, same_picture
from .images import image_key
from .readers import scan
from .records import Record, RecordError, SkipLog, Turn, is_question, require_usable
from .rows import ReadOptions

_SPACES = re.compile(r"[^\S\n]+")
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")


def normalise_text(text: str) -> str:
    """NFC Unicode, no zero-width characters, single spaces, no blank runs, no leading/trailing whitespace."""
    text = unicodedata.normalize("NFC", _INVISIBLE.sub("", text)).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def normalise_record(record: Record) -> Record:
    turns = [Turn(t.role, normalise_text(t.text)) for t in record.turns]
    return replace(record, turns=turns, references=[normalise_text(r) for r in record.references])


_STOPWORDS = {
    "en": "the a an of and is are in on with to this there at it for by its two man woman people".split(),
    "pt": "o os as um uma de do da dos das e em no na nos nas com para que é são ao pelo pela sobre".split(),
    "es": "el la los las un una de del y en con para que es son al por sobre hay".split(),
    "fr": "le la les un une des de du et en dans avec pour que est sont au sur".split(),
    "de": "der die das ein eine und in mit auf ist sind zu den dem von".split(),
    "it": "il lo la i gli le un una di del della e in con per che è sono sul".split(),
}
_SCRIPTS = [("ru", "\u0400", "\u04ff"), ("zh", "\u4e00", "\u9fff"), ("ja", "\u3040", "\u30ff"),
            ("ko", "\uac00", "\ud7af"), ("ar", "\u0600", "\u06ff"), ("el", "\u0370", "\u03ff"),
            ("hi", "\u0900", "\u097f")]
_WORDS = re.compile(r"[^\W\d_]+")


def guess_language(text: str) -> str | None:
    """A simple heuristic, no model: the script for non-Latin text (Cyrillic = ru, Han = zh, kana = ja, Hangul = ko,
    Arabic, Greek, Devanagari); for Latin text the most frequent stopwords among en, pt, es, fr, de, it.
    None when there is no evidence (no letters, or no stopword in a short caption)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    scripts = Counter(code for c in letters for code, low, high in _SCRIPTS if low <= c <= high)
    if scripts and scripts.most_common(1)[0][1] * 2 >= len(letters):
        return "ja" if scripts["ja"] else scripts.most_common(1)[0][0]
    words = _WORDS.findall(text.lower())
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(scores, key=scores.get)
    tied = [lang for lang, score in scores.items() if score == scores[best]]
    return best if scores[best] and len(tied) == 1 else None


@dataclass
class CleanOptions:
    """What `verbo data clean` removes."""

    min_size: int = MIN_IMAGE_SIDE
    """Images shorter than this many pixels on a side are removed."""
    min_words: int = 3
    """Captions with fewer words are removed ("dog", "a dog"; a Chinese/Japanese character counts as a word).
    A caption is a reply to a prompt that asks no question (see is_question); answers ("yes", "4") only need a word."""
    max_words: int = 150
    """Captions with more words are removed: run-on or scraped text (detailed descriptions rarely pass 150 words)."""
    near_duplicates: int = 4
    """Largest difference (bits of 64) between the dHashes of near-duplicate images; -1 keeps near-duplicates.
    Exact duplicates (the same pixels in another file) are always removed."""
    langs: tuple[str, ...] = ()
    """Keep only replies guessed to be in these languages (see guess_language; unknown is kept); empty keeps all."""
    link: bool = False
    """Hard-link image files into the output instead of copying them (copies when linking is impossible)."""


@dataclass
class CleanReport:
    kept: int
    """Records written to data.json."""
    removed: Counter
    """Removed records by reason (each one is in removed.jsonl)."""
    out: Path

    def summary(self) -> str:
        total = self.kept + sum(self.removed.values())
        lines = [f"{self.out / 'data.json'}: kept {self.kept} of {total} records"]
        lines += [f"  removed {n:>7}  {reason}" for reason, n in self.removed.most_common()]
        return "\n".join(lines + [f"every removal, with its reason: {self.out / 'removed.jsonl'}"])


def exchanges(record: Record) -> Iterator[tuple[str, str]]:
    """(user turn, assistant reply) for each reply of a record; system turns are not prompts."""
    prompt = ""
    for turn in record.turns:
        if turn.role == "user":
            prompt = turn.text
        elif turn.role == "assistant":
            yield prompt, turn.text


def word_count(text: str) -> int:
    """Words and numbers; in Chinese/Japanese, which have no spaces, each character counts as a word."""
    cjk_runs = re.findall(r"[\u3040-\u9fff]+", text)
    return len(re.findall(r"\w+", text)) - len(cjk_runs) + sum(map(len, cjk_runs))


class Cleaner:
    """Decides, record by record in file order, whether a record stays; the first of duplicate images stays."""

    def __init__(self, options: CleanOptions):
        self.options = options
        self.inspect = ImageInspector(options.min_size)
        self.exact: dict[str, str] = {}  # pixel digest -> image key of the first file with those pixels
        self.near = NearDuplicates(options.near_duplicates) if options.near_duplicates >= 0 else None
        self.owners: dict[str, str] = {}  # image key -> id of the first kept record that used it
        self.thumbnails: dict[str, np.ndarray] = {}  # image key -> thumbnail, for kept images

    def reason(self, record: Record) -> tuple[str, str] | None:
        """(reason, detail) to remove the record, or None to keep it."""
        return self._text_reason(record) or self._image_reason(record)

    def _text_reason(self, record: Record) -> tuple[str, str] | None:
        replies = []
        for prompt, reply in exchanges(record):
            replies.append(reply)
            words = word_count(reply)
            if is_question(prompt):
                if not words:
                    return "answer without words", repr(reply)
            elif words < self.options.min_words:
                return "caption too short", f"{words} words < {self.options.min_words}: {reply!r}"
            elif words > self.options.max_words:
                return "caption too long", f"{words} words > {self.options.max_words}"
        if self.options.langs:
            language = guess_language(" ".join(replies))
            if language and language not in self.options.langs:
                return "language", f"guessed {language}, keeping {','.join(self.options.langs)}"
        return None

    def _image_reason(self, record: Record) -> tuple[str, str] | None:
        verdicts = [(source, self.inspect(source)) for source in record.images]
        for source, verdict in verdicts:
            if verdict.problem:
                return verdict.problem
        for source, verdict in verdicts:
            duplicate = self._duplicate_of(image_key(source), verdict)
            if duplicate:
                return duplicate
        for source, verdict in verdicts:
            key = image_key(source)
            if key not in self.owners:
                self.owners[key] = record.id
                self.thumbnails[key] = verdict.thumbnail
                self.exact.setdefault(verdict.digest, key)
                if self.near is not None:
                    self.near.add(verdict.dhash, key)
        return None

    def _duplicate_of(self, key: str, verdict: ImageVerdict) -> tuple[str, str] | None:
        if key in self.owners:
            return None  # the same file as a kept record's: several questions about one image are not duplicates
        first = self.exact.get(verdict.digest)
        if first is not None:
            return "duplicate image", f"same pixels as the image of record {self.owners[first]!r}"
        candidates = self.near.candidates(verdict.dhash) if self.near is not None else ()
        first = next((k for k in candidates if same_picture(self.thumbnails[k], verdict.thumbnail)), None)
        if first is not None:
            return "near-duplicate image", f"within {self.options.near_duplicates} bits of the image of record " \
                                           f"{self.owners[first]!r}"
        return None


def clean_data(path: str | Path, out: str | Path, read: ReadOptions | None = None,
               options: CleanOptions | None = None) -> CleanReport:
    """Write the records worth training on to out/data.json (+ out/images/) and every other one to removed.jsonl."""
    out = Path(out)
    options = options or CleanOptions()
    cleaner = Cleaner(options)
    kept, removed, counts, log = [], [], Counter(), SkipLog()
    for item in scan(path, read):
        if isinstance(item, RecordError):
            verdict = (item.kind, str(item))
        else:
            item = normalise_record(item)
            verdict = cleaner.reason(item)
        if verdict:
            reason, detail = verdict
            rid = item.record_id if isinstance(item, RecordError) else item.id
            counts[reason] += 1
            log.add(reason, f"{rid}: {detail}")
            removed.append({"id": rid, "reason": reason, "detail": detail})
        else:
            kept.append(item)
    require_usable(len(kept), log, f"records in {path}")
    out.mkdir(parents=True, exist_ok=True)
    write_llava(kept, out / "data.json", ImagePlacer(out, out / "images", "link" if options.link else "copy"))
    write_atomic(out / "removed.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in removed))
    return CleanReport(len(kept), counts, out)
