"""Reading a benchmark's official files: the JSON it publishes, where --data-dir should hold it, and its fields."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import DataError


def official_json(benchmark: str, data_dir: Path, name: str, published: str):
    """`data_dir/name` parsed, or a DataError naming the file expected there and where `benchmark` publishes it."""
    path = Path(data_dir) / name
    if not path.is_file():
        raise DataError(f"{benchmark}: {path} not found; expected {name} in --data-dir, as {published} publishes it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not the JSON {published} publishes ({e})") from None


KINDS = {str: "a string", int: "an integer", list: "a list"}
"""The kinds of value `entry` checks, in words."""


def entry(row, key: str, where: str, kind: type | None = None):
    """row[key], or a DataError saying which record of which file lacks it, or holds no `kind` (one of KINDS) there."""
    if not isinstance(row, dict) or key not in row:
        raise DataError(f"{where}: no {key!r} (is this the benchmark's official file?)")
    value = row[key]
    if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise DataError(f"{where}: {key!r} is {value!r:.60}, not {KINDS[kind]} (is this the benchmark's official "
                        "file?)")
    return value


def entries(data, key: str, path: Path) -> list:
    """The list under `key` of an official file's top-level object."""
    rows = entry(data, key, str(path))
    if not isinstance(rows, list):
        raise DataError(f"{path}: {key!r} is not a list")
    return rows
