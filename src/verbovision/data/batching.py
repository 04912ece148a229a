"""Batches for training: collating encoded examples, packing, grouping by length."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .encoding import Encoded, Encoder
from .images import load_image, load_images
from .records import skip_entry


@dataclass
class Collated:
    """A batch of examples, and those left out of it."""

    batch: dict[str, torch.Tensor]
    """Model inputs and labels: input_ids [B, T], labels [B, T], pixel values or image features..."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(skip reason, "record id: why") of each example left out because an image of it could not be read."""


class Collator:
    """Pads a list of encoded examples into a batch and loads their images; unreadable images skip the example."""

    def __init__(self, encoder: Encoder, pad_left: bool = False, features=None, fast_decode: bool = False,
                 cache_pixels: bool = False):
        from .images import processor_side
        from .pixelcache import PixelCache

        self.encoder = encoder
        sized = encoder.image_tokens is not None and encoder.image_tokens.fixed is None
        self.min_side = processor_side(encoder.processor.image_processor) if fast_decode and not sized else None
        """With fast_decode, JPEGs are decoded at a reduced scale still at least the model's input size (not when
        the image's size sets its token count: a reduced decode would change it)."""
        self.pad_id = encoder.tokenizer.pad_token_id
        self.token_types = encoder.image_tokens.token_types if encoder.image_tokens else {}
        self.pad_left = pad_left
        self.features = features
        """A FeatureCache: batches then carry cached vision features instead of pixel values."""
        self.pixel_cache = PixelCache() if cache_pixels and features is None else None
        """With cache_pixels (training: every epoch sees the same images), each image file's processed pixels are
        kept in memory (see pixelcache.py); off by itself for processors that give more than pixel values."""

    def __call__(self, examples: Sequence[Encoded]) -> Collated:
        if self.features is not None:
            batch = self.pad(examples)
            paths = [p for e in examples for p in e.images]
            if paths:
                batch["image_features"] = self.features.get(paths)  # [n_images, n_patches, D_vision]
            return Collated(batch)
        if self.pixel_cache is not None:
            kept, rows, skipped = self._readable(examples, self._cached_pixels)
            # Images of different sizes: only the processor knows how it batches them.
            if all(row is not None for row in rows) and len({row.shape for row in rows}) <= 1:
                batch = self.pad(kept)
                if rows:
                    batch["pixel_values"] = torch.cat(rows)  # [n_images, C, H, W]
                return Collated(batch, skipped)
            self.pixel_cache = None  # the processor's inputs cannot be cached
        kept, images, skipped = self._readable(examples, lambda p: load_image(p, self.min_side))
        batch = self.pad(kept)
        if images:
            batch.update(self.encoder.pixel_inputs(images))
        return Collated(batch, skipped)

    @staticmethod
    def _readable(examples: Sequence[Encoded], read) -> tuple[list, list, list]:
        """The examples whose images all `read`, those images in order, and (skip reason, record) of the others."""
        kept, images, failed = load_images(examples, lambda example: example.images, read)
        skipped = [skip_entry(example.record_id, error) for example, error in failed]
        return kept, [image for row in images for image in row], skipped

    def _cached_pixels(self, path) -> torch.Tensor | None:
        """pixel_values [1, C, H, W] of one image from the pixel cache; None when the processor gives more."""
        return self.pixel_cache.get(path, lambda p: load_image(p, self.min_side), self.encoder.pixel_inputs)

    def pad(self, examples: Sequence[Encoded]) -> dict:
        width = max((len(e.input_ids) for e in examples), default=0)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)  # [B, T]
        labels = torch.full((len(examples), width), -100, dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(examples), width), dtype=torch.long)  # [B, T]
        for row, example in enumerate(examples):
            n = len(example.input_ids)
            cols = slice(width - n, width) if self.pad_left else slice(0, n)
            ids[row, cols] = torch.tensor(example.input_ids)
            labels[row, cols] = torch.tensor(example.labels)
            mask[row, cols] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if any(e.segments for e in examples):
            # Packed rows: positions restart at 0 for every sample, and without an attention mask transformers
            # reads those restarts as sample boundaries (block-diagonal causal attention). The padding is a sample
            # of its own, attended by nothing else.
            del batch["attention_mask"]
            batch["position_ids"] = torch.stack([segment_positions((e.segments or [len(e.input_ids)])
                                                                   + [width - len(e.input_ids)]) for e in examples])
        if self.encoder.family.prefix_lm:  # PaliGemma: prompt (0) attended both ways, replies (1) causally
            batch["token_type_ids"] = (labels != -100).long().cummax(dim=1).values  # [B, T]
        for name, marked in self.token_types.items():  # image tokens (1), text (0): Qwen2-VL's rotary positions...
            batch[name] = torch.isin(ids, torch.tensor(sorted(marked))).long()  # [B, T]
        return batch


def is_packed(batch: dict) -> bool:
    """Whether a collated batch holds packed rows (`Collator.pad`: position ids and no attention mask)."""
    return "position_ids" in batch and "attention_mask" not in batch


def segment_positions(lengths: Sequence[int]) -> torch.Tensor:
    """Position ids restarting at 0 for each segment: [3, 2] -> [0, 1, 2, 0, 1]."""
    return torch.cat([torch.arange(n) for n in lengths])  # [sum(lengths)]


def pack_examples(examples: Sequence[Encoded], budget: int) -> list[Encoded]:
    """Consecutive examples joined into rows of at most `budget` tokens (a longer example gets a row alone).

    Each sample's first label is masked: unpacked, position 0 is never predicted; packed, the previous sample's last
    token would otherwise be trained to predict it.
    """
    rows, current = [], []
    for example in examples:
        if current and sum(len(e.input_ids) for e in current) + len(example.input_ids) > budget:
            rows.append(_join(current))
            current = []
        current.append(example)
    if current:
        rows.append(_join(current))
    return rows


def _join(examples: list[Encoded]) -> Encoded:
    return Encoded("+".join(e.record_id for e in examples), [t for e in examples for t in e.input_ids],
                   [label for e in examples for label in [-100, *e.labels[1:]]], [p for e in examples for p in e.images],
                   [len(e.input_ids) for e in examples])


def length_grouped(examples: Sequence[Encoded], batch_size: int, seed: int, window: int = 64) -> list[Encoded]:
    """Examples reordered so that each batch holds similar lengths: within windows of `window` batches, sorted by
    length; then the batches shuffled, so the order of lengths is random (as in transformers' LengthGroupedSampler)."""
    span = batch_size * window
    ordered = [e for start in range(0, len(examples), span)
               for e in sorted(examples[start : start + span], key=lambda e: len(e.input_ids), reverse=True)]
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(seed).shuffle(batches)
    return [e for batch in batches for e in batch]


def iter_batches(examples: Sequence[Encoded], batch_size: int) -> Iterator[list[Encoded]]:
    for start in range(0, len(examples), batch_size):
        yield list(examples[start : start + batch_size])
