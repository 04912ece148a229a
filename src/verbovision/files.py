"""Writing files so an interruption never leaves half of one: atomic writes, JSON, folder swaps."""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file so that readers see either the old or the new content, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}")
    # Created as open() creates files, read-write for all less the umask (mkstemp's would stay private: 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, or `path` a folder: no hidden temporary file stays behind
        tmp.unlink(missing_ok=True)
        raise


def write_figure(path: str | Path, figure) -> None:
    """A matplotlib figure as a PNG, written atomically: a kill while it renders leaves no truncated image."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())


def follow_umask(folder: str | Path) -> None:
    """Give the safetensors files in `folder` the mode open() would have: safetensors >= 0.8 writes them through a
    private temporary file (0600, safetensors#782), so a model saved for others to serve or load was unreadable to
    them while its config.json was not."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).glob("*.safetensors"):
        path.chmod(0o666 & ~umask)


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


PARTIAL = ".partial"
"""The folder `folder_written` writes into: beside a new folder (`.NAME.partial`), inside an existing one."""


@contextmanager
def folder_written(folder: str | Path, last: str | None = None) -> Iterator[Path]:
    """A temporary folder to write `folder`'s files into, moved into place once the block ends: a kill mid-write
    leaves the previous folder (or none), never a part of the new one under its name (a model without its tokenizer,
    which a later command or `--resume` would take for a whole one). A new folder is renamed into place whole; into
    one that exists (a mount point, the working directory: they cannot be swapped) the files are moved one by one,
    `last` (the file that makes the folder what it is: a model's config.json) last."""
    final = Path(folder)
    exists = final.is_dir()
    partial = final / PARTIAL if exists else final.resolve().with_name(f".{final.resolve().name}{PARTIAL}")
    if partial.exists():  # left by a write that was killed
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        yield partial
        if not exists:
            partial.rename(final)
            return
        for entry in sorted(partial.iterdir(), key=lambda path: path.name == last):
            if (final / entry.name).is_dir() and not (final / entry.name).is_symlink():
                shutil.rmtree(final / entry.name)
            os.replace(entry, final / entry.name)
        partial.rmdir()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
