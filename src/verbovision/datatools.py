"""`verbo data check / clean / split / convert`: validate, clean, split and convert datasets in any supported format.

Every command reads through readers.py, so it accepts every format training does, and none loses a record silently:
`check` counts each problem with the first record ids, `clean` writes `removed.jsonl` (id + reason for every record
it drops), `split` and `convert` print what they skipped by reason. Outputs are LLaVA JSON (UTF-8, not escaped).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .data import (
    TOO_SMALL,
    Encoder,
    Record,
    RecordError,
    SkipLog,
    Turn,
    is_question,
    require_usable,
    skip_reason,
)
from .errors import DataError
from .images import ImageSource, image_key, image_name, open_image, read_image_bytes
from .readers import ReadOptions, iter_records, scan
from .store import write_atomic, write_json

_LLAVA_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


# ---------------------------------------------------------------------------------------------------- images


@dataclass
class ImageVerdict:
    """What one image file is worth: a problem, or its content hashes for duplicate detection."""

    problem: tuple[str, str] | None = None
    """(kind, message) when the image cannot be used."""
    digest: str = ""
    """Hash of the decoded pixels: equal for the same picture saved twice, even in another format."""
    dhash: int = 0
    """64-bit difference hash: a few differing bits for a resized, recompressed or slightly edited copy."""
    thumbnail: np.ndarray | None = None
    """16 x 16 RGB thumbnail that confirms a near-duplicate (a hash alone confuses near-blank images)."""


class PerImage(ABC):
    """Computes something once per distinct image (same file, member or bytes), however many records use it."""

    def __init__(self):
        self.done: dict = {}

    def __call__(self, source: ImageSource):
        key = image_key(source)
        if key not in self.done:
            self.done[key] = self.compute(source)
        return self.done[key]

    @abstractmethod
    def compute(self, source: ImageSource):
        """The per-image result that __call__ memoizes."""


class ImageInspector(PerImage):
    """Decodes each distinct image once and says what it is worth."""

    def __init__(self, min_size: int):
        super().__init__()
        self.min_size = min_size

    def compute(self, source: ImageSource) -> ImageVerdict:
        try:
            image = open_image(source)
        except DataError as e:
            return ImageVerdict((skip_reason(e), str(e)))
        if min(image.size) < self.min_size:
            return ImageVerdict((TOO_SMALL, f"{image_name(source)}: {image.width}x{image.height} is under "
                                            f"{self.min_size} px on a side"))
        return ImageVerdict(None, pixel_digest(image), dhash(image), thumbnail(image))


def pixel_digest(image: Image.Image) -> str:
    return hashlib.sha1(f"{image.size}".encode() + image.tobytes()).hexdigest()


def dhash(image: Image.Image, size: int = 8) -> int:
    """Difference hash: is each pixel of a (size+1) x size greyscale thumbnail brighter than its right neighbour."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()  # [size * size]
    return int("".join("1" if b else "0" for b in bits), 2)


def thumbnail(image: Image.Image, size: int = 16) -> np.ndarray:
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.int16)  # [size, size, 3]


def same_picture(a: np.ndarray, b: np.ndarray, tolerance: int = 40, share: float = 0.02) -> bool:
    """Thumbnails of one picture: at most `share` of their pixels differ by more than `tolerance` levels (of 255)
    in some channel. A resized or recompressed copy passes; another object on the same background does not."""
    differing = (np.abs(a - b).max(axis=-1) > tolerance).mean()
    return bool(differing <= share)


class NearDuplicates:
    """Finds a stored hash within `distance` bits of a new one without comparing against all of them.

    Pigeonhole: split the 64 bits into distance + 1 bands; two hashes that differ in at most `distance` bits agree
    exactly on at least one band, so only hashes sharing a band value are compared.
    """

    def __init__(self, distance: int, bits: int = 64):
        self.distance = distance
        bands = distance + 1
        self.bands = [(i * bits // bands, (i + 1) * bits // bands) for i in range(bands)]
        self.index: list[dict[int, list[tuple[int, str]]]] = [{} for _ in self.bands]

    def _band(self, value: int, band: tuple[int, int]) -> int:
        start, end = band
        return (value >> start) & ((1 << (end - start)) - 1)

    def candidates(self, value: int) -> Iterator[str]:
        """The owners of stored hashes within `distance` bits of `value`."""
        for table, band in zip(self.index, self.bands):
            for other, owner in table.get(self._band(value, band), []):
                if bin(value ^ other).count("1") <= self.distance:
                    yield owner

    def add(self, value: int, owner: str) -> None:
        for table, band in zip(self.index, self.bands):
            table.setdefault(self._band(value, band), []).append((value, owner))


# ---------------------------------------------------------------------------------------------------- text


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


# ---------------------------------------------------------------------------------------------------- check

MIN_IMAGE_SIDE = 32
"""Images shorter than this many pixels on a side are `image too small` to `check` and removed by `clean`: an icon or
thumbnail, not a picture an encoder learns from."""


@dataclass
class CheckOptions:
    """What `verbo data check` looks for."""

    min_size: int = MIN_IMAGE_SIDE
    """An image shorter than this many pixels on a side is `image too small`."""


@dataclass
class CheckReport:
    """The result of a check: how many records, how many usable, the problems by kind with example ids."""

    path: str
    records: int = 0
    problems: SkipLog = field(default_factory=SkipLog)
    messages: dict[str, str] = field(default_factory=dict)
    """The first full message of each problem kind."""

    def add(self, kind: str, record_id: str, message: str) -> None:
        self.problems.add(kind, record_id)
        self.messages.setdefault(kind, message)

    def as_dict(self) -> dict:
        return {"path": self.path, "records": self.records, "usable": self.records - len(self.problems),
                "problems": {kind: {**info, "first": self.messages[kind]}
                             for kind, info in self.problems.as_dict().items()}}

    def summary(self) -> str:
        lines = [f"{self.path}: {self.records} records, {self.records - len(self.problems)} usable, "
                 f"{len(self.problems)} with problems"]
        for kind, info in sorted(self.problems.as_dict().items(), key=lambda kv: -kv[1]["count"]):
            lines.append(f"  {kind:<24} {info['count']:>7}   e.g. {', '.join(info['examples'])}")
            lines.append(f"  {'':<24} {'':>7}   {self.messages[kind]}")
        return "\n".join(lines)


def check_data(path: str | Path, read: ReadOptions | None = None, options: CheckOptions | None = None,
               encoder: Encoder | None = None) -> CheckReport:
    """Read every record and report each problem found (the first one of each record); with `encoder` (a model's),
    also the records it cannot encode (too long, image tokens that do not fit)."""
    options = options or CheckOptions()
    inspect = ImageInspector(options.min_size)
    report = CheckReport(str(path))
    for item in scan(path, read):
        report.records += 1
        problem = item if isinstance(item, RecordError) else record_problem(item, inspect, encoder)
        if problem:
            report.add(problem.kind, problem.record_id, str(problem))
    return report


def record_problem(record: Record, inspect: ImageInspector, encoder: Encoder | None = None) -> RecordError | None:
    """The first problem of a readable record: an image that cannot be used, or (with an encoder) its tokenization."""
    for source in record.images:
        verdict = inspect(source)
        if verdict.problem:
            kind, message = verdict.problem
            return RecordError(record.source, record.id, kind, message)
    if encoder is not None:
        try:
            encoder.encode(record)
        except RecordError as e:
            return e
    return None


# ---------------------------------------------------------------------------------------------------- clean


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


# ---------------------------------------------------------------------------------------------------- writing


class ImagePlacer(PerImage):
    """Gives each image a path in an output dataset: the original file (refer), or a copy/link in `folder`.

    Images that are not files of their own (shard members, bytes, in-memory images) are always written to `folder`.
    """

    def __init__(self, base: Path, folder: Path, mode: str = "refer"):
        super().__init__()
        self.base, self.folder, self.mode = base, folder, mode
        self.names: set[str] = set()

    def compute(self, source: ImageSource) -> str:
        if isinstance(source, Path) and (self.mode == "refer" or not source.exists()):
            return os.path.relpath(source, self.base)
        target = self.folder / self._unique_name(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            _copy_or_link(source, target, self.mode == "link")
        elif isinstance(source, Image.Image):
            source.save(target)
        else:
            target.write_bytes(read_image_bytes(source))
        return os.path.relpath(target, self.base)

    def _unique_name(self, source: ImageSource) -> str:
        name = Path(re.split(r"[:/\\]", image_name(source))[-1]).name if not isinstance(source, Image.Image) else ""
        stem, suffix = Path(name).stem or "image", Path(name).suffix or _sniff_suffix(source)
        candidate, n = f"{stem}{suffix}", 1
        while candidate in self.names:
            candidate, n = f"{stem}_{n}{suffix}", n + 1
        self.names.add(candidate)
        return candidate


def _sniff_suffix(source: ImageSource) -> str:
    if isinstance(source, Image.Image):
        return ".png"
    try:
        with Image.open(io.BytesIO(read_image_bytes(source))) as image:
            return "." + (image.format or "img").lower().replace("jpeg", "jpg")
    except (OSError, ValueError):
        return ".img"


def _copy_or_link(source: Path, target: Path, link: bool) -> None:
    if target.exists():
        target.unlink()
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another filesystem, or links unsupported: copy instead
    shutil.copy2(source, target)


def llava_row(record: Record, place: Callable[[ImageSource], str]) -> dict:
    """A record in LLaVA's JSON shape, each image at the path `place` gives it (an `ImagePlacer`); references are kept
    when they say more than the last reply."""
    row: dict = {"id": record.id}
    paths = [place(source) for source in record.images]
    if paths:
        row["image"] = paths[0] if len(paths) == 1 else paths
    row["conversations"] = [{"from": _LLAVA_ROLES[t.role], "value": t.text} for t in record.turns]
    if record.references and record.references != [record.turns[-1].text]:
        row["references"] = record.references
    return row


def write_llava(records: list[Record], out_file: Path, place: ImagePlacer) -> None:
    write_json(out_file, [llava_row(record, place) for record in records])


# ---------------------------------------------------------------------------------------------------- split, convert


def convert_data(path: str | Path, out_file: str | Path, read: ReadOptions | None = None) -> tuple[int, SkipLog]:
    """Write a dataset as one LLaVA JSON file; images stay where they are (shard members and bytes are extracted
    beside it, into <name>_images/). Returns the records written and those skipped, by reason."""
    out_file = Path(out_file)
    skips = SkipLog()
    records = list(iter_records(path, read, skips))
    require_usable(len(records), skips, f"records in {path}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    place = ImagePlacer(out_file.parent, out_file.parent / f"{out_file.stem}_images")
    write_llava(records, out_file, place)
    return len(records), skips


def split_data(path: str | Path, out: str | Path, ratios: list[float], seed: int = 0,
               names: list[str] | None = None, read: ReadOptions | None = None) -> tuple[dict[str, int], SkipLog]:
    """Split into out/<name>.json by the ratios, grouped by image (records sharing an image share a split), seeded."""
    names = names or _split_names(len(ratios))
    if len(names) != len(ratios) or any(r < 0 for r in ratios) or not sum(ratios):
        raise DataError(f"ratios {ratios} and names {names}: need one non-negative ratio per split name")
    out = Path(out)
    skips = SkipLog()
    records = list(iter_records(path, read, skips))
    require_usable(len(records), skips, f"records in {path}")
    groups = image_groups(records)
    random.Random(seed).shuffle(groups)
    targets = [r / sum(ratios) * len(records) for r in ratios]
    splits: list[list[Record]] = [[] for _ in ratios]
    for group in groups:
        # the split furthest below its target takes the group, so sizes track the ratios whatever the group sizes
        index = max(range(len(splits)), key=lambda i: (targets[i] - len(splits[i]), -i))
        splits[index].extend(group)
    place = ImagePlacer(out, out / "images")
    position = {id(record): i for i, record in enumerate(records)}
    for name, members in zip(names, splits):
        write_llava(sorted(members, key=lambda r: position[id(r)]), out / f"{name}.json", place)
    return {name: len(members) for name, members in zip(names, splits)}, skips


def _split_names(n: int) -> list[str]:
    return ["train", "val", "test"][:n] if n <= 3 else [f"split{i}" for i in range(n)]


def image_groups(records: list[Record]) -> list[list[Record]]:
    """Records connected by a shared image (directly or through others), each group in file order."""
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_user: dict[str, int] = {}
    for i, record in enumerate(records):
        for source in record.images:
            j = first_user.setdefault(image_key(source), i)
            parent[root(i)] = root(j)
    groups: dict[int, list[Record]] = {}
    for i, record in enumerate(records):
        groups.setdefault(root(i), []).append(record)
    return list(groups.values())
