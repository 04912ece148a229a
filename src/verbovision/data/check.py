"""`verbo data check`: every record read, each problem found reported by kind."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .image_checks import MIN_IMAGE_SIDE, ImageInspector
from .readers import scan
from .records import Record, RecordError, SkipLog
from .rows import ReadOptions

DUPLICATE_ID = "duplicate id"
DUPLICATE_ID_MESSAGE = ("an id that more than one record has: predictions, scores and skip logs name records by id, "
                        "so give each its own")

if TYPE_CHECKING:  # encoding loads torch and transformers: `verbo --help` builds this command's parser
    from .encoding import Encoder


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
    warnings: SkipLog = field(default_factory=SkipLog)
    """What usable records should still fix: an id that several records have (once per id, with how many)."""

    def add(self, kind: str, record_id: str, message: str) -> None:
        self.problems.add(kind, record_id)
        self.messages.setdefault(kind, message)

    def as_dict(self) -> dict:
        return {"path": self.path, "records": self.records, "usable": self.records - len(self.problems),
                "problems": {kind: {**info, "first": self.messages[kind]}
                             for kind, info in self.problems.as_dict().items()},
                "warnings": {kind: {**info, "first": DUPLICATE_ID_MESSAGE}
                             for kind, info in self.warnings.as_dict().items()}}

    def summary(self) -> str:
        lines = [f"{self.path}: {self.records} records, {self.records - len(self.problems)} usable, "
                 f"{len(self.problems)} with problems"]
        for kind, info in sorted(self.problems.as_dict().items(), key=lambda kv: -kv[1]["count"]):
            lines += kind_lines(kind, info, self.messages[kind])
        for kind, info in self.warnings.as_dict().items():
            lines += kind_lines(f"warning: {kind}", info, DUPLICATE_ID_MESSAGE)
        return "\n".join(lines)


def kind_lines(kind: str, info: dict, message: str) -> list[str]:
    """A kind of problem in the summary: its count and example ids, then its first message."""
    return [f"  {kind:<24} {info['count']:>7}   e.g. {', '.join(info['examples'])}", f"  {'':<24} {'':>7}   {message}"]


def check_data(path: str | Path, read: ReadOptions | None = None, options: CheckOptions | None = None,
               encoder: Encoder | None = None) -> CheckReport:
    """Read every record and report each problem found (the first one of each record); with `encoder` (a model's),
    also the records it cannot encode (too long, image tokens that do not fit)."""
    options = options or CheckOptions()
    inspect = ImageInspector(options.min_size)
    report = CheckReport(str(path))
    ids = Counter()
    for item in scan(path, read):
        report.records += 1
        ids[item.record_id if isinstance(item, RecordError) else item.id] += 1
        problem = item if isinstance(item, RecordError) else record_problem(item, inspect, encoder)
        if problem:
            report.add(problem.kind, problem.record_id, str(problem))
    for record_id, count in ids.items():
        if count > 1:
            report.warnings.add(DUPLICATE_ID, f"{record_id} ({count} records)")
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
