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
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from .test_resume import assert_same_losses, killed_and_resumed
from .test_train import stage, tiny_recipe

WORDS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle", "star"]
IMAGE_SIDE = 384  # a noise PNG of this side is ~440 KB: incompressible, so the shards are as big as they look


def noise_samples(n: int, seed: int = 0) -> Iterator[tuple[bytes, str]]:
    """(PNG of noise, caption) pairs."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)).save(png, "PNG")
        yield png.getvalue(), f"a {WORDS[i % 4]} {SHAPES[(i // 4) % 4]}"


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


def shard_recipe(shards: Path, val: Path, format: str = "webdataset", **options) -> dict:
    raw = tiny_recipe(shards.parent, [stage(
        "wds", data={"train": [{"path": str(shards), "format": format}], "val": [str(val)]},
        train={"vision": "frozen", "connector": "full", "language": "lora"}, lora={"r": 4, "alpha": 8},
        template="plain", batch_size=4, log_every=1, feature_cache=False, **{"max_steps": None, **options})])
    raw["model"]["vision"]["image_size"] = 32
    return raw


def peak_rss_mb(recipe: dict, folder: Path) -> float:
    """Train in a fresh process; its peak resident memory in MB.

    Read from /proc's VmHWM, the peak of this program alone: getrusage's ru_maxrss would carry over the peak of the
    parent (pytest) it was forked from, whatever the child itself used.
    """
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    script = ("import sys\nfrom verbovision.cli import main\n"
              "code = main(['train', sys.argv[1], '--out', sys.argv[2]])\n"
              "status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
              "print(int(status))\nraise SystemExit(code)")
    result = subprocess.run([sys.executable, "-c", script, str(path), str(folder / "run")], capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def assert_memory_flat(tmp_path: Path, val: Path, write: Callable[[Path, int], int], format: str, n_big: int,
                       **options) -> None:
    """One epoch over 25 images, then over `n_big` (every image read once, from its file, as its batch is built), each
    in a fresh process, data written by `write(folder, n)` to small/data and big/data: the big run's peak stays
    within a cap of the small one's, well below what holding the extra images would cost."""
    small_mb = write(tmp_path / "small/data", 25) / 2**20
    big_mb = write(tmp_path / "big/data", n_big) / 2**20
    assert big_mb > 15 * small_mb and big_mb > 150, (small_mb, big_mb)
    # One epoch, given as steps: a stream may not know its length.
    runs = {size: shard_recipe(tmp_path / size / "data", val, format, max_steps=n // 4, **options)
            for size, n in (("small", 25), ("big", n_big))}
    baseline, peak = (peak_rss_mb(runs[size], tmp_path / size) for size in ("small", "big"))
    cap = baseline + 40
    assert peak < cap < baseline + big_mb - small_mb, (peak, baseline, big_mb)
    assert json.loads((tmp_path / "big/run/run.json").read_text())["stages"]["wds"]["steps"] == n_big // 4


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

