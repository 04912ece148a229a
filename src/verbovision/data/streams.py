"""Hugging Face streaming datasets (`format: hf-stream`): rows are read as training consumes them.

A hub dataset id, a local folder of parquet/JSON/CSV/imagefolder files, or a folder written by `save_to_disk` is opened
with `datasets` in streaming mode: nothing is read up front, and memory holds only the shuffle buffer (`stream_buffer`
rows, images included), the current row group of the `stream_shards` shards that fill it, and the micro-batches
being built. The vision feature cache is off: it would need every image up front.

Every epoch the stream is shuffled anew (shard order and buffer, from the seed and the epoch), so a run is
reproducible; a resumed run replays the epoch's rows up to where its checkpoint stopped (only text is encoded, no
image decoded), so the resumed curve equals the uninterrupted one. When several processes train, each reads the
stream and trains on its own slice of every global micro-batch, as with indexed sources: the same examples, in the
same order, as one process with the whole batch. Rows that cannot be used are counted each time they are read."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.sources import Source
from ..errors import DataError
from .records import RecordError, skip_entry
from .rows import source_options, source_path

if TYPE_CHECKING:  # encoding loads torch and transformers; reading records needs neither
    from .encoding import Encoded, Encoder

STREAM_FORMAT = "hf-stream"
SOURCE_COLUMN = "__verbovision_source__"
"""Added to each row of a mix: which source it came from (for its record id and relative image paths)."""


def is_stream(source: Source) -> bool:
    return source.format == STREAM_FORMAT


def open_stream(path: str | Path, split: str | None):
    """The rows of a dataset as a `datasets.IterableDataset`, images left encoded ({bytes, path}) for the collator."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: streaming a Hugging Face dataset needs datasets: pip install datasets") from None
    if int(datasets.__version__.split(".")[0]) < 5:  # the shuffle buffer reads stream_shards shards at once
        raise DataError(f"{path}: streaming needs datasets>=5 (installed: {datasets.__version__}): "
                        "pip install -U datasets")
    local, split = Path(path), split or "train"
    try:
        if (local / "state.json").exists() or (local / "dataset_dict.json").exists():
            saved = datasets.load_from_disk(str(local))
            saved = saved[split] if isinstance(saved, datasets.DatasetDict) else saved
            stream = saved.to_iterable_dataset(num_shards=max(1, len(saved.cache_files)))
        else:
            stream = datasets.load_dataset(str(path), split=split, streaming=True)
    except (FileNotFoundError, ValueError, KeyError, ConnectionError, OSError) as e:
        raise DataError(f"{path}: cannot open as a Hugging Face dataset (split {split}): {e}") from None
    for name, kind in (stream.features or {}).items():
        if isinstance(kind, datasets.Image):
            stream = stream.cast_column(name, datasets.Image(decode=False))
    return stream


def read_stream(path: Path, options) -> Iterator:
    """Every record of a streamed dataset in stream order (the READERS entry: validation sets, `verbo data`)."""
    from .rows import row_record

    for index, row in enumerate(open_stream(path, options.split)):
        yield row_record(row, str(index), path, options, options.image_root or _base(path))


class StreamMix:
    """A stage's streaming training sources, mixed by weight (`datasets.interleave_datasets`), shuffled per epoch."""

    def __init__(self, sources: list[Source], encoder: Encoder, data_root: Path, buffer: int, shards: int, seed: int):
        self.paths = [source_path(source, data_root) for source in sources]
        self.options = [source_options(source, data_root) for source in sources]
        self.streams = [open_stream(path, source.split) for path, source in zip(self.paths, sources)]
        self.weights = [source.weight for source in sources]
        self.encoder, self.buffer, self.shards, self.seed = encoder, buffer, shards, seed

    def rows_per_epoch(self) -> int | None:
        """Known when one source's metadata gives its split's size (hub datasets usually do), else None."""
        if len(self.streams) != 1:
            return None
        splits, split = self.streams[0].info.splits, self.options[0].split or "train"
        return splits[split].num_examples if splits and split in splits else None

    def examples(self, epoch: int) -> Iterator[tuple[Encoded | None, tuple[str, str] | None]]:
        """The epoch's rows in order, each as (encoded example, None), or (None, (skip reason, record)) when the row
        cannot be used."""
        for index, row in enumerate(self._rows(epoch)):
            which = row.pop(SOURCE_COLUMN, 0)
            try:
                yield self.encoder.encode(self._record(row, which, f"epoch {epoch} row {index}")), None
            except DataError as e:
                record_id = e.record_id if isinstance(e, RecordError) else f"epoch {epoch} row {index}"
                yield None, skip_entry(record_id, e)

    def _rows(self, epoch: int):
        import datasets

        if len(self.streams) == 1:
            stream = self.streams[0]
        else:
            tagged = [s.map(partial(_tag, i)) for i, s in enumerate(self.streams)]
            stream = datasets.interleave_datasets(tagged, probabilities=[w / sum(self.weights) for w in self.weights],
                                                  seed=self.seed, stopping_strategy="all_exhausted")
        stream = stream.shuffle(seed=self.seed, buffer_size=self.buffer, max_buffer_input_shards=self.shards)
        stream.set_epoch(epoch)
        # Rows one at a time through `iter`: iterating the dataset itself inside a DataLoader worker would give that
        # worker only its share of the shards, and every worker must see the whole epoch (see train.PreparedGroups).
        return ({name: values[0] for name, values in batch.items()} for batch in stream.iter(batch_size=1))

    def _record(self, row: dict, which: int, default_id: str):
        from .rows import row_record, validate

        path, options = self.paths[which], self.options[which]
        record = row_record(row, default_id, path, options, options.image_root or _base(path))
        record = record if isinstance(record, RecordError) else validate(record, options.check_image_files)
        if isinstance(record, RecordError):
            raise record
        return record


def _tag(which: int, row: dict) -> dict:
    return {**row, SOURCE_COLUMN: which}


def _base(path: Path) -> Path:
    return path if path.is_dir() else Path.cwd()
