"""An epoch's groups of micro-batches, in order, resumable at any group, prepared ahead in data workers when asked."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice

import torch

from ..config.schema import Stage
from ..data.batching import iter_batches, length_grouped, pack_examples
from ..data.sources import epoch_order
from ..data.streams import StreamMix


def prepared_groups(epoch: Callable[[], Iterator], prepare: Callable, workers: int) -> Iterator:
    """`epoch()`'s groups with each group prepared (a process's micro-batches collated: images read and processed),
    in this process or, with `workers`, ahead of time in DataLoader worker processes."""
    if not workers:
        return ((prepare(group), skips, end) for group, skips, end in epoch())
    # A generator of its own: seeding the workers from the global one would shift the training's dropout masks.
    loader = torch.utils.data.DataLoader(PreparedGroups(epoch, prepare), batch_size=None, num_workers=workers,
                                         generator=torch.Generator())
    return iter(loader)


class PreparedGroups(torch.utils.data.IterableDataset):
    """An epoch's groups prepared by DataLoader workers: of W workers, worker w prepares groups w, w + W, ...; the
    DataLoader takes one from each worker in turn, so they arrive in the epoch's order, the same as without workers.
    Each worker walks the whole epoch (a stream is read by every worker), preparing only its share."""

    def __init__(self, epoch: Callable[[], Iterator], prepare: Callable):
        self.epoch, self.prepare = epoch, prepare

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        for index, (group, skips, end) in enumerate(self.epoch()):
            if index % worker.num_workers == worker.id:
                yield self.prepare(group), skips, end


def epoch_groups(sources, stage: Stage, seed: int, epoch: int, start: int,
                 world_size: int) -> Iterator[tuple[list, list, bool]]:
    """Epoch `epoch` from its group `start` on (a resumed run): (group of `grad_accum` global micro-batches, records
    a stream skipped while building it, whether it ends the epoch)."""
    batch_size = stage.batch_size * world_size
    if isinstance(sources, StreamMix):
        groups = stream_groups(sources.examples(epoch), batch_size, stage.grad_accum)
    else:
        micro_batches = epoch_batches(sources, stage, seed=seed * 1000 + epoch, batch_size=batch_size)
        groups = ((micro_batches[i : i + stage.grad_accum], []) for i in range(0, len(micro_batches),
                                                                                stage.grad_accum))
    groups = islice(groups, start, None)  # a stream replays what it had read (text only, no image decoded)
    current = next(groups, None)
    for following in groups:
        yield *current, False
        current = following
    if current is not None:
        yield *current, True


def stream_groups(items: Iterator, batch_size: int, grad_accum: int) -> Iterator[tuple[list, list]]:
    """Groups of `grad_accum` micro-batches of streamed examples, each with the skips met while filling it (the
    stream's last ones go with its last group)."""
    group, batch, skipped = [], [], []
    for example, skip in items:
        if skip:
            skipped.append(skip)
            continue
        batch.append(example)
        if len(batch) == batch_size:
            group, batch = group + [batch], []
        if len(group) == grad_accum:
            yield group, skipped
            group, skipped = [], []
    if batch or group:
        yield group + ([batch] if batch else []), skipped


def epoch_batches(sources: list, stage: Stage, seed: int, batch_size: int | None = None) -> list[list]:
    """One epoch's micro-batches of `batch_size` (default the stage's; all processes' together when several train):
    the sources mixed and shuffled, then packed or grouped by length as asked."""
    batch_size = batch_size or stage.batch_size
    order = epoch_order(sources, seed=seed)
    if stage.packing:
        order = pack_examples(order, stage.packing)
    elif stage.group_by_length:
        order = length_grouped(order, batch_size, seed)
    return list(iter_batches(order, batch_size))
