"""A stage's data files read and encoded, and each epoch's mix of them."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config.sources import Source
from ..errors import DataError
from .encoding import Encoded, Encoder
from .records import Record, SkipLog, report_skips, require_usable, skip_entry
from .rows import source_options, source_path


def read_records(path: str | Path, format: str | None = None, skips: SkipLog | None = None,
                 options=None) -> list[Record]:
    """Read a data file or folder in any supported format (detected unless given; see readers.py).

    A bad record raises its `RecordError`, or, when `skips` is given, is counted there and left out.
    """
    from .readers import iter_records
    from .rows import ReadOptions

    options = options or ReadOptions()
    if format:
        options = dataclasses.replace(options, format=format)
    return list(iter_records(path, options, skips))


def source_records(source: Source, data_root: Path, skips: SkipLog | None = None) -> Iterator[Record]:
    """The records of a recipe source; with `skips`, bad records are counted there and left out."""
    from .readers import iter_records

    return iter_records(source_path(source, data_root), source_options(source, data_root), skips)


def encode_sources(sources: Sequence[Source], encoder: Encoder, data_root: Path, skips: SkipLog,
                   what: str = "records", context: str | None = None, tally: list[dict] | None = None,
                   report: bool = True) -> list[tuple[list[Encoded], float]]:
    """Read and tokenize every source once, up front; records that cannot be encoded are skipped and logged.

    A source with no usable record is an error, and one with skipped records prints how many and why, before any
    step (`what`: "training records", `context`: "stage s"; see `require_usable`), if `report` (several processes
    read the same data: the main one prints). `tally` gets each source's `{source, usable, skipped}` counts."""
    encoded_sources = []
    for source in sources:
        encoded, source_skips = [], SkipLog()
        for record in source_records(source, data_root, source_skips):
            try:
                encoded.append(encoder.encode(record))
            except DataError as e:
                source_skips.add(*skip_entry(record.id, e))
        where = f"{what} in {source_path(source, data_root)}"
        require_usable(len(encoded), source_skips, where, context)
        if report:
            report_skips(len(encoded), source_skips, where, context)
        skips.merge(source_skips)
        encoded_sources.append((encoded, source.weight))
        if tally is not None:
            tally.append({"source": source.path, "usable": len(encoded), "skipped": len(source_skips)})
    return encoded_sources


def epoch_order(sources: list[tuple[list[Encoded], float]], seed: int, shuffle: bool = True) -> list[Encoded]:
    """One epoch's examples: each source contributes weight x its size, mixed and shuffled with the seed."""
    rng = random.Random(seed)
    order: list[Encoded] = []
    for examples, weight in sources:
        whole, part = divmod(weight * len(examples), len(examples) or 1)
        for _ in range(int(whole)):
            order.extend(examples)
        order.extend(rng.sample(examples, int(round(part))))
    if shuffle:
        rng.shuffle(order)
    return order
