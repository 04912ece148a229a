"""Every data format read into records: the format detected from the path, the reader picked from one table, and a
scan that reports unreadable records instead of stopping."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import DataError
from .formats import metadata_files, read_coco, read_hf, read_imagefolder, read_webdataset
from .records import SKIP_HINTS, Record, RecordError, SkipLog
from .rows import IMAGE_SUFFIXES, ReadOptions, decode_text, read_rows, validate
from .streams import read_stream

FORMATS = ("llava", "coco", "pairs", "imagefolder", "webdataset", "hf", "hf-stream")


def iter_records(path: str | Path, options: ReadOptions | None = None, skips: SkipLog | None = None) -> Iterator[Record]:
    """The usable records of a data path; a bad one raises its RecordError, or is counted in `skips` when given."""
    for item in scan(path, options):
        if isinstance(item, RecordError):
            if skips is None:
                hint = SKIP_HINTS.get(item.kind)
                raise DataError(f"{item}; {hint}") if hint else item
            skips.add(item.kind, f"{item.record_id}: {item}")
        else:
            yield item


def scan(path: str | Path, options: ReadOptions | None = None) -> Iterator[Record | RecordError]:
    """Every record of a data path in file order, each a valid `Record` or the `RecordError` saying why it is not."""
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists() and options.format != "hf-stream":  # a stream may be a hub dataset id
        raise DataError(f"{path}: data file not found")
    fmt = options.format or detect_format(path)
    if fmt not in READERS:
        raise DataError(f"{path}: format {fmt!r} unknown; use one of {', '.join(FORMATS)}")
    for item in READERS[fmt](path, replace(options, format=fmt)):
        yield item if isinstance(item, RecordError) else validate(item, options.check_image_files)


def image_files(paths: list[str]) -> list[str]:
    """Image arguments with each folder among them replaced by its image files (IMAGE_SUFFIXES), in name order."""
    files = []
    for given in paths:
        if not Path(given).is_dir():
            files.append(given)
            continue
        inside = sorted(str(f) for f in Path(given).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not inside:
            raise DataError(f"{given}: a folder without images ({' '.join(IMAGE_SUFFIXES)})")
        files += inside
    return files


def detect_format(path: Path) -> str:
    """The format of a data path, from its name and (for JSON) its first record."""
    if path.is_dir():
        return _detect_folder(path)
    name = path.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "webdataset"
    if name.endswith((".parquet", ".arrow")):
        return "hf"
    if name.endswith((".csv", ".tsv")):
        return "pairs"
    head = decode_text(_head(path)).lstrip()
    if name.endswith(".jsonl"):
        return "llava" if '"conversations"' in head.split("\n", 1)[0] else "pairs"
    if head.startswith("{"):
        return "coco"  # the only format whose file is one JSON object
    return "llava" if '"conversations"' in head else "pairs"


def _head(path: Path, size: int = 1 << 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _detect_folder(path: Path) -> str:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return "hf"
    if any(path.glob("*.tar")) or any(path.glob("*.tar.gz")):
        return "webdataset"
    if metadata_files(path):
        return "imagefolder"
    if any(path.glob("*.parquet")):
        return "hf"
    raise DataError(f"{path}: cannot tell the format of this folder: no metadata.jsonl/.csv (imagefolder), .tar "
                    "shards (webdataset), dataset_dict.json/state.json or .parquet (Hugging Face); pass a data file")


READERS: dict[str, Callable[[Path, ReadOptions], Iterator[Record | RecordError]]] = {
    "llava": read_rows,
    "pairs": read_rows,
    "coco": read_coco,
    "imagefolder": read_imagefolder,
    "webdataset": read_webdataset,
    "hf": read_hf,
    "hf-stream": read_stream,
}
