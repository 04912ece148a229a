"""What the scorers of the benchmarks share: a reply for every item, per-item means with their bootstrap intervals."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ...errors import DataError
from ...files import write_json
from ..metrics import bootstrap_ci
from .base import BenchmarkItem


def replies_of(benchmark: str, items: Sequence[BenchmarkItem], replies: Mapping[str, str]) -> list[str]:
    """The reply to each item, in the items' order, or a DataError naming the first items without one."""
    missing = [item.id for item in items if item.id not in replies]
    if missing:
        raise DataError(f"{benchmark}: no reply for {len(missing)} item(s), e.g. {missing[:5]}; score the replies "
                        "of a run over the whole split")
    return [replies[item.id] for item in items]


def write_rows(benchmark: str, items: Sequence[BenchmarkItem], replies: Mapping[str, str], path: Path,
               row: Callable[[BenchmarkItem, str], dict]) -> Path:
    """A submission file: the JSON list of `row(item, reply)`, in the items' order, written atomically."""
    write_json(path, [row(item, reply) for item, reply in zip(items, replies_of(benchmark, items, replies))])
    return path


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")


def mean_with_interval(per_item: Mapping[str, float]) -> tuple[float, tuple[float, float] | None]:
    """The mean of per-item scores and its 95% bootstrap interval (None without items)."""
    values = list(per_item.values())
    return mean(values), (bootstrap_ci(values) if values else None)


def group_means(label: str, group_of: Mapping[str, str], per_item: Mapping[str, float]) -> dict[str, float]:
    """`label[group]` -> the mean of the group's items (`group_of`: item id -> group), e.g. accuracy[answerable]."""
    groups: dict[str, list[float]] = {}
    for key, value in per_item.items():
        groups.setdefault(group_of[key], []).append(value)
    return {f"{label}[{group}]": mean(values) for group, values in sorted(groups.items())}


def jsonl_rows(benchmark: str, path: Path, published: str) -> list[dict]:
    """The JSON lines of an official file, or a DataError naming the file and the line that is not JSON."""
    if not path.is_file():
        raise DataError(f"{benchmark}: {path} not found; expected {path.name} in --data-dir, as {published} "
                        "publishes it")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not a JSON line ({e}); expected {published}'s file") from None
    return rows
