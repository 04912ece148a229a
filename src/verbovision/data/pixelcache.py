"""Pixel cache: an image's processed pixels kept in memory, so later epochs and validation passes reuse them instead
of decoding, resizing and normalizing the same file again.

What is kept is exactly what the image processor gives for that image alone (float32, nothing rounded), so a batch
built from the cache equals the processor's output for the batch. Only image files are cached (paths and members
of shard files), each with its file's size and modification time: an edited file is processed again. The cache
holds at most `budget` bytes; once full, further images are processed every time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .images import FileSlice

PIXEL_CACHE_BYTES = 1 << 30
"""Default budget: 1 GiB (the quickstart's 9,960 64-pixel images take 0.5 GiB)."""


def _file_state(source) -> tuple | None:
    """What identifies an image file's current content; None for images that are not cached (in-memory ones) or
    files that cannot be read (loading them then reports why)."""
    path = source if isinstance(source, Path) else source.shard if isinstance(source, FileSlice) else None
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if stat else None


class PixelCache:
    def __init__(self, budget: int = PIXEL_CACHE_BYTES):
        self.budget = budget
        self.used = 0
        self.entries: dict[object, tuple[tuple, torch.Tensor]] = {}  # source -> (file state, pixel_values [1, C, H, W])

    def get(self, source, load: Callable, process: Callable) -> torch.Tensor | None:
        """pixel_values [1, C, H, W] of one image: cached, or loaded (`load(source)`, which may raise DataError) and
        processed alone (`process([image])`, the image processor). None when the processor gives more than pixel
        values (image sizes, grids, masks): such inputs are not cached and the caller processes the batch itself."""
        state = _file_state(source)
        entry = self.entries.get(source) if state else None
        if entry is not None and entry[0] == state:
            return entry[1]
        out = process([load(source)])
        if set(out) != {"pixel_values"} or out["pixel_values"].shape[0] != 1:
            return None
        pixels = out["pixel_values"]
        if state and (entry is not None or self.used + pixels.nbytes <= self.budget):
            self.used += pixels.nbytes - (entry[1].nbytes if entry is not None else 0)
            self.entries[source] = (state, pixels)
        return pixels
