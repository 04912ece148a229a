"""The record model every format reads into, and the bookkeeping of records skipped."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

DATA_IMAGE_TOKEN = "<image>"
"""How image positions are written in data files (LLaVA convention), whatever the model's own image token is."""

CAPTION_PROMPT = "Describe the image briefly."
"""The user turn of caption records (rows without a question), and what `caption` asks a model whose metadata names
no trained prompt."""


@dataclass
class Turn:
    role: str
    """user, assistant or system."""
    text: str
    """The turn's text; `<image>` marks where an image goes."""


@dataclass
class Record:
    id: str
    images: list
    """Image files, in-memory images, or images inside other files (see images.ImageSource)."""
    turns: list[Turn]
    source: str
    """File the record came from, for error messages."""
    references: list[str] = field(default_factory=list)
    """Reference answers/captions for evaluation; by default the last assistant reply."""

    @property
    def prompt_turns(self) -> list[Turn]:
        """The conversation up to (not including) the last assistant reply."""
        last = max(i for i, t in enumerate(self.turns) if t.role == "assistant")
        return self.turns[:last]


MISSING_IMAGE = "image not found"
UNREADABLE_IMAGE = "unreadable image"
TOO_SMALL = "image too small"
BAD_CONVERSATION = "bad conversation"
IMAGE_TOKENS = "image tokens != images"
TOO_LONG = "too long"
EMPTY_ANSWER = "empty answer"
NOT_UTF8 = "non-UTF-8"
INVALID_JSON = "invalid JSON"
"""The kinds of record problems above: checks and training count them by these names."""


NOT_UNICODE = re.compile("[\ud800-\udfff]")
"""Characters no valid text holds, which tokenizers refuse with a TypeError: lone surrogates, as `surrogateescape`
turns bytes that are not UTF-8 into (a file, a piped stdin) and a JSON string's "\\udcff" escape writes."""


def is_question(prompt: str) -> bool:
    """A user turn that asks a question (has a question mark), whose reply is an answer rather than a caption."""
    return "?" in prompt or "\uff1f" in prompt  # ASCII or full-width (Chinese/Japanese) question mark


class RecordError(DataError):
    """One record cannot be used (the rest of its file can); `kind` is one of the problem kinds above."""

    def __init__(self, source: str | Path, record_id: str, kind: str, detail: str):
        super().__init__(f"{source}: record {record_id!r}: {detail}")
        self.record_id = record_id
        self.kind = kind


class SkipLog:
    """Records skipped, counted by reason with the first few ids of each; nothing is dropped silently."""

    def __init__(self, keep: int = 5):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.keep = keep

    def add(self, reason: str, record_id: str) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.keep:
            examples.append(record_id)

    def merge(self, other: SkipLog) -> None:
        for reason, ids in other.examples.items():
            for rid in ids:
                self.add(reason, rid)
            self.counts[reason] += other.counts[reason] - len(ids)

    @classmethod
    def from_dict(cls, data: dict) -> SkipLog:
        log = cls()
        for reason, info in data.items():
            log.counts[reason] = info["count"]
            log.examples[reason] = list(info["examples"])
        return log

    def as_dict(self) -> dict:
        return {reason: {"count": n, "examples": self.examples[reason]} for reason, n in self.counts.items()}

    def __len__(self) -> int:
        return sum(self.counts.values())

    def describe(self, reasons: int = 3) -> str:
        """One line: how many were skipped, the commonest reasons with counts, and the first example of the first."""
        if not self.counts:
            return "nothing skipped: the data holds no records"
        top = self.counts.most_common(reasons)
        more = ", ..." if len(self.counts) > reasons else ""
        kinds = ", ".join(f"{reason} x{n}" for reason, n in top)
        return f"{len(self)} skipped: {kinds}{more}; e.g. {self.examples[top[0][0]][0]}"


SKIP_HINTS = {MISSING_IMAGE: "relative image paths start at the data file's folder (COCO: a guess near it); "
                             "if the images are elsewhere, say where with image_root (--image-root)"}
"""What to do about a kind of unusable record, where one fix usually serves them all."""


def require_usable(usable: int, skips: SkipLog, what: str, context: str | None = None) -> None:
    """Nothing trains, evaluates or converts on no data: zero usable records is an error saying why, e.g.
    `stage s: 0 usable training records in data.json (120 skipped: image not found x120; e.g. ...)`
    (`what`: "training records in data.json", `context`: "stage s")."""
    if usable:
        return
    top = skips.counts.most_common(1)
    hint = SKIP_HINTS.get(top[0][0]) if top else None
    prefix = f"{context}: " if context else ""
    raise DataError(f"{prefix}0 usable {what} ({skips.describe()})" + (f"; {hint}" if hint else ""))


def report_skips(usable: int, skips: SkipLog, what: str, context: str | None = None) -> None:
    """Print how many records were skipped and why, before anything runs (a warning when most of them were)."""
    if skips:
        warning = "warning: " if len(skips) > usable else ""
        prefix = f"{context}: " if context else ""
        print(f"{warning}{prefix}{usable} usable {what} ({skips.describe()})")


def skip_entry(record_id: str, error: DataError) -> tuple[str, str]:
    """How a record skipped for `error` is counted (`SkipLog.add`'s arguments): its reason, and the record with the
    error."""
    return skip_reason(error), f"{record_id}: {error}"


def skip_reason(error: DataError) -> str:
    """A short category for a data error (a problem kind when known), used to count skips by kind."""
    if isinstance(error, RecordError):
        return error.kind
    message = str(error)
    for kind in (MISSING_IMAGE, UNREADABLE_IMAGE):
        if kind in message:
            return kind
    return "invalid record"
