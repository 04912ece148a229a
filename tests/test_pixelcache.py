"""Pixel cache: batches built from cached pixels equal the image processor's own, an edited image file is processed
again, unreadable images still skip their example, the byte budget holds, and processors that give more than pixel
values (Qwen2-VL's grids) are left uncached."""

from __future__ import annotations

import os
import shutil

import torch
from PIL import Image

from verbovision.data.batching import Collated, Collator
from verbovision.data.encoding import Encoder
from verbovision.data.sources import read_records
from verbovision.families import family_of
from verbovision.model.store import load_model

from .tiny_families import make_tiny_llava, make_tiny_qwen2_vl


def _same(a: Collated, b: Collated) -> bool:
    return a.batch.keys() == b.batch.keys() and all(torch.equal(a.batch[k], b.batch[k]) for k in a.batch) \
        and a.skipped == b.skipped


def _setup(tmp_path, shapes_data, texts, make=make_tiny_llava):
    model, processor = load_model(make(tmp_path / "model", texts), device="cpu")
    encoder = Encoder(processor, "chat", family=family_of(model.config))
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    examples = [encoder.encode(r) for r in read_records(data / "train/caption_short_en.json")[:6]]
    return encoder, examples


def test_cached_batches_equal_processed_ones_and_follow_file_edits(tmp_path, shapes_data, tiny_tokenizer_texts):
    encoder, examples = _setup(tmp_path, shapes_data, tiny_tokenizer_texts)
    plain, cached = Collator(encoder), Collator(encoder, cache_pixels=True)
    assert _same(plain(examples), cached(examples))
    assert len(cached.pixel_cache.entries) == 6 and cached.pixel_cache.used == 6 * plain(examples[:1]).batch[
        "pixel_values"].nbytes
    assert _same(plain(examples[2:]), cached(examples[2:]))  # from the cache this time

    edited = examples[0].images[0]
    Image.new("RGB", (64, 64), (255, 0, 0)).save(edited)
    os.utime(edited, ns=(1, 1))  # a different modification time even on coarse-clock file systems
    assert _same(plain(examples), cached(examples))
    assert len(cached.pixel_cache.entries) == 6

    examples[1].images[0].unlink()
    collated = cached(examples)
    assert _same(plain(examples), collated) and len(collated.skipped) == 1
    assert collated.batch["pixel_values"].shape[0] == 5


def test_budget_and_uncacheable_processors(tmp_path, shapes_data, tiny_tokenizer_texts):
    encoder, examples = _setup(tmp_path, shapes_data, tiny_tokenizer_texts)
    cached = Collator(encoder, cache_pixels=True)
    one = Collator(encoder)(examples[:1]).batch["pixel_values"].nbytes
    cached.pixel_cache.budget = 2 * one
    assert _same(Collator(encoder)(examples), cached(examples))
    assert len(cached.pixel_cache.entries) == 2 and cached.pixel_cache.used == 2 * one

    qwen, qwen_examples = _setup(tmp_path / "qwen", shapes_data, tiny_tokenizer_texts, make_tiny_qwen2_vl)
    cached = Collator(qwen, cache_pixels=True)
    assert _same(Collator(qwen)(qwen_examples), cached(qwen_examples))
    assert cached.pixel_cache is None  # image_grid_thw: the processor batches its own inputs
