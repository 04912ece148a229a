"""What the synthetic generators share: the dataset's layout and splits, its LLaVA JSON / CSV / imagefolder tables,
and writing them and the images."""

from __future__ import annotations

import io
import json
import math
import os
import random
from bisect import bisect_right
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..errors import DataError
from ..files import read_json
from .convert import llava_row
from .records import DATA_IMAGE_TOKEN, Turn
from .records import Record as ParsedRecord

GENERATOR_VERSION = "1.0"
SPLIT_NAMES = ("train", "val", "test")

# Shapes are drawn at this multiple of the output size and downsampled with LANCZOS, so that edges
# are anti-aliased and a 6 px star still looks like a star.
SUPERSAMPLE = 4

Point = tuple[float, float]
Record = dict[str, Any]


BACKGROUND = (255, 255, 255)


def assign_splits(n: int, splits: Sequence[float], rng: random.Random) -> list[str]:
    """Split name per image index: shuffle the indices, then cut into consecutive chunks."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if len(splits) != len(SPLIT_NAMES) or min(splits) < 0 or not math.isclose(sum(splits), 1, abs_tol=1e-6):
        raise ValueError(f"splits must be three non-negative fractions summing to 1, got {splits}")
    bounds = [round(n * splits[0]), round(n * (splits[0] + splits[1]))]
    order = list(range(n))
    rng.shuffle(order)
    split_of = [""] * n
    for rank, index in enumerate(order):
        split_of[index] = SPLIT_NAMES[bisect_right(bounds, rank)]
    return split_of


def empty_tables(files: Sequence[str]) -> dict[str, dict[str, list[Record]]]:
    # Every file exists in every split, even when empty, so loaders can rely on the layout.
    return {split: {name: [] for name in files} for split in SPLIT_NAMES}


def llava_record(record_id: str, image: str, prompt: str, reply: str, answer_key: str | None = None) -> Record:
    turns = [Turn("user", f"{DATA_IMAGE_TOKEN}\n{prompt}"), Turn("assistant", reply)]
    # the image relative to {split}/, where the JSON file lives
    record = llava_row(ParsedRecord(record_id, [image], turns, "synth"), lambda path: f"../{path}")
    if answer_key is not None:
        record["answer"] = answer_key
    return record


def dataset_settings(generator: str, seed: int, n: int, image_size: int, splits: Sequence[float], **extra: Any) -> dict:
    """What a synthetic dataset is made from: dataset_info.json less its counts."""
    return {"generator": f"verbovision.synth.{generator}", "version": GENERATOR_VERSION, "seed": seed, "n": n,
            "image_size": image_size, **extra, "split_ratios": list(splits)}


def prepare_dir(out: str | Path, settings: dict) -> Path:
    """The dataset's folders; one holding a dataset of other settings is refused: its files (another language's
    tables, images past n) would stay beside the new ones, describing images that are now others."""
    root = Path(out)
    info = read_json(root / "dataset_info.json", {})
    shown = lambda value: ",".join(map(str, value)) if isinstance(value, list) else value  # noqa: E731
    differ = [f"{key} {shown(info.get(key))} (now {shown(value)})" for key, value in settings.items()
              if info and info.get(key) != value]
    if differ:
        raise DataError(f"--out {out}: holds a synthetic dataset made with {', '.join(differ)}; its files would mix "
                        "with the new one's: choose another --out, or delete that folder first")
    for sub in ("images", *SPLIT_NAMES):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def write_image(root: Path, index: int, image: Image.Image) -> str:
    """Save as PNG and return the path relative to ``root``."""
    name = f"images/{index:06d}.png"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _atomic_write(root / name, buffer.getvalue())
    return name


def write_dataset(root: Path, settings: dict, scenes: list[dict], records: dict[str, dict[str, list[Record]]]) -> dict:
    """Write scenes.jsonl, the split JSON files and dataset_info.json (last, as the completion mark)."""
    scene_lines = "".join(json.dumps(scene, ensure_ascii=False) + "\n" for scene in scenes)
    _atomic_write(root / "scenes.jsonl", scene_lines.encode("utf-8"))
    files = {"images": settings["n"], "scenes.jsonl": settings["n"]}
    for split, tables in records.items():
        for name, recs in tables.items():
            _atomic_write(root / split / f"{name}.json", _json_bytes(recs))
            files[f"{split}/{name}.json"] = len(recs)
    summary = {**settings, "splits": {split: sum(s["split"] == split for s in scenes) for split in SPLIT_NAMES},
               "files": files}
    _atomic_write(root / "dataset_info.json", _json_bytes(summary))
    return summary
