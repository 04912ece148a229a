"""`verbo data check`: every record read, each problem found reported by kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .image_checks import MIN_IMAGE_SIDE, ImageInspector
from .readers import scan
from .records import Record, RecordError, SkipLog
from .rows import ReadOptions

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
