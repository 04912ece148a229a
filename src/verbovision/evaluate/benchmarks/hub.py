"""A benchmark read from a Hugging Face hub dataset instead of its official files: the rows of the dataset lmms-eval
reads are written once as the benchmark's official layout (its annotation files as the official reader expects them,
each image once, as the row's original bytes) in a cache folder, and the official reader reads that folder, so the
items and their scores are the same whichever way the data came.

Where the data comes from (`--data-dir` of `verbo eval --benchmark`): omitted, each benchmark's declared hub dataset;
OWNER/NAME that is no local path, that hub dataset (one benchmark); a local folder of parquet files (a snapshot of a
hub dataset, e.g. `huggingface-cli download ID --repo-type dataset --local-dir DIR`), read as that dataset; any other
folder, the official files. `datasets.load_dataset` reads a hub id through Hugging Face's cache, so a cached dataset
is read offline too.

The folder written is `<cache>/benchmarks/<benchmark>/<dataset>/<config>/<split>/<fingerprint>` (`<cache>`:
$VERBO_CACHE, else $XDG_CACHE_HOME/verbovision, else ~/.cache/verbovision), reused while the dataset's fingerprint is
the same; it is written in a temporary folder renamed into place when whole, so a half-written one is never read."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError, DataError
from .base import Benchmark, HubTable

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""OWNER/NAME, a hub dataset id."""


@dataclass(frozen=True)
class DataSource:
    """The folder of official files a benchmark's split is read from, and where it came from."""

    folder: Path
    origin: Mapping[str, object]
    """{"data_dir": the folder} for official files; {"hub": {id (or the snapshot's folder), config, split,
    fingerprint}} for a hub dataset (settings.json, report.json, summary.json)."""


def is_hub_id(data: str | Path | None, root: str | Path = ".") -> bool:
    """Whether --data-dir (or a stage's data_dir) names a hub dataset: OWNER/NAME that is no local path, relative
    paths starting at `root` (a recipe's data_root)."""
    return data is not None and HUB_ID.fullmatch(str(data)) is not None and not (Path(root) / data).exists()


def check_data(benchmarks: Sequence[Benchmark], data: str | Path | None) -> None:
    """A hub id is one benchmark's data: with several benchmarks each would read the one dataset."""
    if is_hub_id(data) and len(benchmarks) > 1:
        raise ConfigError(f"--data-dir {data}: a hub dataset id holds one benchmark; give one benchmark with it, or "
                          f"omit --data-dir to read {', '.join(b.name for b in benchmarks)} each from its own hub "
                          "dataset")


def benchmark_data(benchmark: Benchmark, data: str | Path | None, split: str) -> DataSource:
    """Where `benchmark`'s `split` is read from, given --data-dir (None: its declared hub dataset)."""
    if data is not None and not is_hub_id(data) and not _is_snapshot(Path(data)):
        return DataSource(Path(data), {"data_dir": str(Path(data).resolve())})
    hub = benchmark.hub
    if hub is None:
        raise DataError(f"{benchmark.name} has no hub dataset; give --data-dir with its official files: "
                        f"{benchmark.files}")
    if split not in hub.splits:
        raise DataError(f"{benchmark.name}: split {split!r} is not in its hub dataset {hub.id} (which has "
                        f"{', '.join(hub.splits)}); give --data-dir with its official files: {benchmark.files}")
    return _materialised(benchmark, str(data) if data is not None else hub.id, split)


def _is_snapshot(folder: Path) -> bool:
    """A local copy of a hub dataset: parquet files at its top, under data/ or a config's folder (official layouts
    hold none)."""
    return folder.is_dir() and any(next(folder.glob(pattern), None) for pattern in ("*.parquet", "*/*.parquet",
                                                                                      "*/*/*.parquet"))


def cache_root() -> Path:
    """Where VerboVision keeps what it derives once: $VERBO_CACHE, $XDG_CACHE_HOME/verbovision or ~/.cache/."""
    if os.environ.get("VERBO_CACHE"):
        return Path(os.environ["VERBO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "verbovision"


def _materialised(benchmark: Benchmark, source: str, split: str) -> DataSource:
    """The official layout of `source`'s rows for `split`, written once per dataset fingerprint."""
    hub = benchmark.hub
    hub_split = hub.splits[split]
    tables = [_load(benchmark, source, table, split) for table in hub.tables]
    fingerprint = "-".join(table._fingerprint for table in tables)
    configs = "+".join(table.config or "default" for table in hub.tables)
    snapshot = Path(source) if Path(source).is_dir() else None
    name = snapshot.name if snapshot else source.replace("/", "--")
    folder = cache_root() / "benchmarks" / benchmark.name / name / configs / hub_split / fingerprint
    if not folder.is_dir():
        _write_atomically(folder, lambda partial: hub.write(partial, split, [_undecoded(t) for t in tables]))
    hub_id = str(snapshot.resolve()) if snapshot else source
    return DataSource(folder, {"hub": {"id": hub_id, "config": configs, "split": hub_split,
                                       "fingerprint": fingerprint}})


def _load(benchmark: Benchmark, source: str, table: HubTable, our_split: str):
    """One config's split, its columns checked: a DataError naming what is missing, or why it cannot be loaded."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{benchmark.name}: reading the hub dataset {source} needs datasets: pip install datasets") \
            from None
    split = benchmark.hub.splits[our_split]
    where = f"{source}" + (f" (config {table.config})" if table.config else "")
    try:
        rows = datasets.load_dataset(source, table.config, split=split)
    except (FileNotFoundError, ConnectionError, OSError, ValueError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # --data-dir OWNER/NAME is a hub id only where no such folder is: it may be a mistyped one
        typo = "" if source == benchmark.hub.id else f"; there is no local folder {source} either"
        raise DataError(f"{benchmark.name}: cannot load {where}, split {split} ({reason}){typo}; offline it must be "
                        f"in Hugging Face's cache, else give --data-dir with its official files or a local copy of "
                        "the dataset") from None
    missing = [column for column in table.read(our_split) if column not in rows.column_names]
    if missing:
        raise DataError(f"{benchmark.name}: {where}, split {split}, has no column {missing[0]!r}; "
                        f"{benchmark.name} reads {', '.join(table.read(our_split))} as {benchmark.hub.id} has them")
    return rows


def _undecoded(rows):
    """The rows with their images as {bytes, path}, the file as stored, so it is written without re-encoding."""
    import datasets

    for name, feature in rows.features.items():
        if isinstance(feature, datasets.Image):
            rows = rows.cast_column(name, datasets.Image(decode=False))
    return rows


def _write_atomically(folder: Path, write: Callable[[Path], None]) -> None:
    """`write` into a temporary sibling of `folder`, renamed to it when whole; another process that finished first
    keeps its folder (the same rows)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        write(partial)
        partial.rename(folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def save_image(image: Mapping | None, path: Path, where: str) -> None:
    """An image cell's original bytes (or the file it names) written to `path`, once: rows sharing an image (many
    questions about one photo) write it the first time."""
    if path.exists():
        return
    data = (image or {}).get("bytes")
    if data is None and (image or {}).get("path") and Path(image["path"]).is_file():
        data = Path(image["path"]).read_bytes()
    if data is None:
        raise DataError(f"{where}: the row has no image bytes")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def rows_saving_images(rows, images: Path, hub_id: str) -> list[dict]:
    """The rows but their images, each row's image saved once as images/<image_id>.jpg (TextVQA's train_images/,
    which TextCaps shares)."""
    kept = []
    for row in rows:
        save_image(row["image"], images / f"{row['image_id']}.jpg", f"{hub_id}: image {row['image_id']}")
        kept.append(without(row, "image"))
    return kept


def without(row: Mapping, *columns: str) -> dict:
    """The row's fields but `columns` (its images): what the official annotation file keeps of it."""
    return {key: value for key, value in row.items() if key not in columns}
