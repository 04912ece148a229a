"""Writing files so an interruption never leaves half of one: atomic writes, JSON, folder swaps."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file so that readers see either the old or the new content, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}")
    # Created as open() creates files, read-write for all less the umask (mkstemp's would stay private: 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, default=None):
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def blocking_file(folder: str | Path) -> Path | None:
    """The file standing where `folder` or one of its parents would be made (so it cannot be), if there is one."""
    nearest = next((p for p in [Path(folder), *Path(folder).parents] if p.exists()), None)
    return nearest if nearest is not None and not nearest.is_dir() else None


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place (a kill mid-save leaves the previous one intact)."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
