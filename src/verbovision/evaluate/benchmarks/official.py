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


def entry(row, key: str, where: str):
    """row[key], or a DataError saying which record of which file lacks it."""
    if not isinstance(row, dict) or key not in row:
        raise DataError(f"{where}: no {key!r} (is this the benchmark's official file?)")
    return row[key]


def entries(data, key: str, path: Path) -> list:
    """The list under `key` of an official file's top-level object."""
    rows = entry(data, key, str(path))
    if not isinstance(rows, list):
        raise DataError(f"{path}: {key!r} is not a list")
    return rows
