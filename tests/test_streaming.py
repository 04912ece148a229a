"""Training from webdataset shards or a saved Hugging Face dataset without holding them in memory, and resuming in
the middle of a shard.

Shards and the Arrow files of a dataset saved with `save_to_disk` are indexed once (text and byte offsets); each image
is read from its file when its batch is built. So the training process's peak memory does not grow with the data's
size: 16-20x more image data here costs next to no memory (the 'cap' below), and a run killed mid-shard resumes to
the same curve as an uninterrupted one.

The peak is VmHWM, the most the process ever had resident: anonymous memory and mapped file pages alike. An Arrow
file is memory-mapped while it is indexed, so image pages touched then would count (they once did: every image was
copied into a scalar, and the peak grew with the file); the page cache that plain reads fill counts in no process's
RSS, so neither can hide growth from the test or fake it.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from .helpers import assert_memory_flat, assert_same_losses, killed_and_resumed, noise_samples, shard_recipe


def write_shards(folder: Path, n: int, per_shard: int = 25) -> int:
    """webdataset shards of noise images (key.png) with captions (key.txt); returns their total size in bytes."""
    folder.mkdir(parents=True)
    samples = noise_samples(n)
    for first in range(0, n, per_shard):
        with tarfile.open(folder / f"shard-{first // per_shard:04d}.tar", "w") as tar:
            for i in range(first, min(n, first + per_shard)):
                png, caption = next(samples)
                for name, data in ((f"{i:06d}.png", png), (f"{i:06d}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return sum(p.stat().st_size for p in folder.glob("*.tar"))


def save_dataset(folder: Path, n: int) -> int:
    """A Hugging Face dataset of noise images (an Image column) with captions, saved with `save_to_disk` as Arrow files
    with the images embedded; returns their total size in bytes."""
    import datasets

    pngs, captions = zip(*noise_samples(n))
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": png, "path": None} for png in pngs],
                                          "caption": list(captions)}).cast_column("image", datasets.Image())
    dataset.save_to_disk(str(folder))
    return sum(p.stat().st_size for p in folder.glob("*.arrow"))


def test_a_saved_dataset_trains_within_a_memory_cap(tmp_path, shapes_data):
    # 400 images, 169 MB of Arrow files vs 10.6 MB: before the images were indexed without being read, the big run
    # peaked ~115 MB above the small one (mapped pages of every image), now within a few MB.
    pytest.importorskip("datasets")
    assert_memory_flat(tmp_path, shapes_data / "val/caption_short_en.json", save_dataset, "hf", 400)


def test_shards_train_within_a_memory_cap_and_resume_mid_shard(tmp_path, shapes_data):
    val = shapes_data / "val/caption_short_en.json"
    assert_memory_flat(tmp_path, val, write_shards, "webdataset", 500)

    # Killed in the middle of a shard (25 images = 6.25 steps per shard), resumed: the same curve as the run above.
    killed_and_resumed(shard_recipe(tmp_path / "big/data", val, epochs=1, save_every=3), tmp_path / "resumed",
                       (20, 100))
    assert_same_losses(tmp_path / "big/run", tmp_path / "resumed")

