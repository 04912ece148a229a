"""Hugging Face streaming datasets (`format: hf-stream`): trained as they are read, resumed in the middle of an epoch,
the same on two processes as on one, and within a memory cap whatever their size.

The streams here are local parquet shards opened with `datasets.load_dataset(..., streaming=True)`, the path a hub
dataset id takes too (without the network).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from verbovision.config.parse import parse_recipe
from verbovision.data.sources import read_records
from verbovision.errors import ConfigError
from verbovision.train.run import train_recipe

from .helpers import (
    assert_memory_flat,
    assert_same_losses,
    curve,
    killed_and_resumed,
    noise_samples,
    stage,
    tiny_recipe,
    verbo_train,
)

datasets = pytest.importorskip("datasets")


def write_parquet_shards(folder: Path, rows: list[dict], per_shard: int) -> float:
    """`rows` ({image: bytes, caption}) as parquet shards of `per_shard` rows (one row group each); size in MB."""
    folder.mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    for first in range(0, len(rows), per_shard):
        part = rows[first : first + per_shard]
        table = datasets.Dataset.from_dict({"image": [{"bytes": r["image"], "path": None} for r in part],
                                            "caption": [r["caption"] for r in part]}, features=features)
        table.to_parquet(str(folder / f"part-{first // per_shard:04d}.parquet"), batch_size=per_shard)
    return sum(p.stat().st_size for p in folder.glob("*.parquet")) / 2**20


def shapes_rows(shapes_data: Path) -> list[dict]:
    """The shapes training split as rows, plus one row without a caption and one whose image is not an image."""
    rows = [{"image": Path(r.images[0]).read_bytes(), "caption": r.turns[-1].text}
            for r in read_records(shapes_data / "train/caption_short_en.json")]
    rows[3]["caption"] = ""
    rows[7]["image"] = b"not an image"
    return rows


def stream_recipe(data_root: Path, stream: Path, **options) -> dict:
    settings = {"train": {"vision": "frozen", "connector": "full", "language": "lora"}, "template": "plain",
                "lora": {"r": 4, "alpha": 8, "dropout": 0.2}, "log_every": 1, "stream_buffer": 8, "max_steps": 14}
    return tiny_recipe(data_root, [stage(
        "stream", data={"train": [{"path": str(stream), "format": "hf-stream"}], "val": ["val/caption_short_en.json"]},
        **{**settings, **options})])


def run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_stream_trains_counts_bad_rows_and_resumes_mid_epoch(tmp_path, shapes_data):
    rows = shapes_rows(shapes_data)
    write_parquet_shards(tmp_path / "stream", rows, per_shard=7)
    raw = stream_recipe(shapes_data, tmp_path / "stream", save_every=2, eval_every=5)
    reference = tmp_path / "reference"
    train_recipe(parse_recipe(raw), reference)
    per_epoch = (len(rows) - 2) // 4  # the row without a caption never batches; the bad image drops at collation
    assert 14 > per_epoch  # the run crosses into a second epoch, which the stream reshuffles
    skipped = run_json(reference)["skipped"]["stream"]
    assert set(skipped) == {"empty answer", "unreadable image"}, skipped

    raw["stages"][0]["data_workers"] = 2  # and its images read by 2 DataLoader workers: the same run again
    run = tmp_path / "resumed"
    killed_and_resumed(raw, run, (3, 11))
    assert_same_losses(reference, run)
    assert run_json(run)["skipped"]["stream"] == skipped  # counted once each time read, replays not counted again
    resumed, uninterrupted = load_file(str(run / "final/adapter_model.safetensors")), \
        load_file(str(reference / "final/adapter_model.safetensors"))
    assert max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed) <= 1e-6


def test_two_processes_on_a_stream_equal_one(tmp_path, shapes_data):
    write_parquet_shards(tmp_path / "stream", shapes_rows(shapes_data), per_shard=8)
    raw = stream_recipe(shapes_data, tmp_path / "stream", max_steps=4, batch_size=4,
                        train={"vision": "full", "connector": "full", "language": "full"})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert verbo_train(str(path), "--out", str(tmp_path / "one")) == 0
    assert verbo_train(str(path), "stages.0.batch_size=2", "--nproc", "2", "--out", str(tmp_path / "two")) == 0
    one = load_file(str(tmp_path / "one/final/model.safetensors"))
    two = load_file(str(tmp_path / "two/final/model.safetensors"))
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    assert [r[1] for r in curve(tmp_path / "one")] == pytest.approx([r[1] for r in curve(tmp_path / "two")], abs=1e-5)


def write_noise_stream(folder: Path, n: int) -> int:
    """`n` noise images with captions as parquet shards of 50 rows; their size in bytes."""
    rows = [{"image": png, "caption": text} for png, text in noise_samples(n)]
    return int(write_parquet_shards(folder, rows, per_shard=50) * 2**20)


def test_a_large_stream_trains_within_a_memory_cap(tmp_path, shapes_data):
    # Memory holds the shuffle buffer's rows (8 here) and each feeding shard's row group: with datasets' default of 10
    # shards feeding it, 10 of these shards would be held at once (+400 MB seen), hence stream_shards' default of 1.
    assert_memory_flat(tmp_path, shapes_data / "val/caption_short_en.json", write_noise_stream, "hf-stream", 1000,
                       stream_buffer=8)


def test_streams_refuse_what_needs_a_whole_epoch(tmp_path, shapes_data):
    raw = stream_recipe(shapes_data, tmp_path / "stream", packing=64)
    with pytest.raises(ConfigError, match="packing: not available with streamed"):
        parse_recipe(raw)
    write_parquet_shards(tmp_path / "stream", shapes_rows(shapes_data), per_shard=8)
    with pytest.raises(ConfigError, match="set max_steps"):
        train_recipe(parse_recipe(stream_recipe(shapes_data, tmp_path / "stream", max_steps=None)), tmp_path / "run")
