"""`verbo data convert` and `split`: any readable format to LLaVA JSON with its images, and splits that keep an
image's records together."""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ..errors import DataError
from ..files import write_atomic, write_json
from .image_checks import PerImage
from .images import ImageSource, image_key, image_name, read_image_bytes
from .readers import iter_records
from .records import Record, SkipLog, require_usable
from .rows import ReadOptions

_LLAVA_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


class ImagePlacer(PerImage):
    """Gives each image a path in an output dataset: the original file (refer), or a copy/link in `folder`.

    Images that are not files of their own (shard members, bytes, in-memory images) are always written to `folder`.
    """

    def __init__(self, base: Path, folder: Path, mode: str = "refer"):
        super().__init__()
        self.base, self.folder, self.mode = base, folder, mode
        self._resolved_folder = folder.resolve()
        self.names: set[str] = set()

    def reserve(self, sources) -> None:
        """Keep the names of the images among `sources` that are already in the folder (a cleaned set cleaned again
        in place) for them: an image from elsewhere with the same name must not be copied over one of them."""
        self.names.update(name for name in map(self._in_folder, sources) if name)

    def _in_folder(self, source: ImageSource) -> str | None:
        """The name of an image file already in the folder, else None."""
        if not isinstance(source, Path):
            return None
        resolved = source.resolve()
        if not resolved.is_relative_to(self._resolved_folder):
            return None
        return str(resolved.relative_to(self._resolved_folder))

    def compute(self, source: ImageSource) -> str:
        if isinstance(source, Path) and (self.mode == "refer" or not source.exists()):
            return os.path.relpath(source, self.base)
        if self._in_folder(source):  # a copy onto itself would delete it
            return os.path.relpath(source, self.base)
        target = self.folder / self._unique_name(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            _copy_or_link(source, target, self.mode == "link")
        elif isinstance(source, Image.Image):
            source.save(target)
        else:
            target.write_bytes(read_image_bytes(source))
        return os.path.relpath(target, self.base)

    def _unique_name(self, source: ImageSource) -> str:
        name = Path(re.split(r"[:/\\]", image_name(source))[-1]).name if not isinstance(source, Image.Image) else ""
        stem, suffix = Path(name).stem or "image", Path(name).suffix or _sniff_suffix(source)
        candidate, n = f"{stem}{suffix}", 1
        while candidate in self.names:
            candidate, n = f"{stem}_{n}{suffix}", n + 1
        self.names.add(candidate)
        return candidate


def _sniff_suffix(source: ImageSource) -> str:
    if isinstance(source, Image.Image):
        return ".png"
    try:
        with Image.open(io.BytesIO(read_image_bytes(source))) as image:
            return "." + (image.format or "img").lower().replace("jpeg", "jpg")
    except (OSError, ValueError):
        return ".img"


def _copy_or_link(source: Path, target: Path, link: bool) -> None:
    if target.exists():
        target.unlink()
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another filesystem, or links unsupported: copy instead
    shutil.copy2(source, target)


def llava_row(record: Record, place: Callable[[ImageSource], str]) -> dict:
    """A record in LLaVA's JSON shape, each image at the path `place` gives it (an `ImagePlacer`); references are kept
    when they say more than the last reply."""
    row: dict = {"id": record.id}
    paths = [place(source) for source in record.images]
    if paths:
        row["image"] = paths[0] if len(paths) == 1 else paths
    row["conversations"] = [{"from": _LLAVA_ROLES[t.role], "value": t.text} for t in record.turns]
    if record.references and record.references != [record.turns[-1].text]:
        row["references"] = record.references
    return row


def write_llava(records: list[Record], out_file: Path, place: ImagePlacer) -> None:
    place.reserve(image for record in records for image in record.images)
    rows = [llava_row(record, place) for record in records]
    if out_file.suffix.lower() == ".jsonl":  # one record a line, as JSONL readers (ours too) expect of the name
        write_atomic(out_file, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    else:
        write_json(out_file, rows)


def convert_data(path: str | Path, out_file: str | Path, read: ReadOptions | None = None) -> tuple[int, SkipLog]:
    """Write a dataset as one LLaVA JSON file; images stay where they are (shard members and bytes are extracted
    beside it, into <name>_images/). Returns the records written and those skipped, by reason."""
    out_file = Path(out_file)
    refuse_writing_over(path, [out_file])
    skips = SkipLog()
    records = list(iter_records(path, read, skips))
    require_usable(len(records), skips, f"records in {path}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    place = ImagePlacer(out_file.parent, out_file.parent / f"{out_file.stem}_images")
    write_llava(records, out_file, place)
    return len(records), skips


def refuse_writing_over(data: str | Path, outputs: list[Path]) -> None:
    """Refuse, before any work, to write over the data file being read (`split data/train.json --out data`): its
    records would be replaced by a part of them, the skipped ones lost, and a rerun would split the part again."""
    for output in outputs:
        if Path(data).is_file() and output.exists() and output.resolve() == Path(data).resolve():
            raise DataError(f"{data}: --out would write {output.name} over it, the data being read; choose another "
                            "--out")


def split_data(path: str | Path, out: str | Path, ratios: list[float], seed: int = 0,
               names: list[str] | None = None, read: ReadOptions | None = None) -> tuple[dict[str, int], SkipLog]:
    """Split into out/<name>.json by the ratios, grouped by image (records sharing an image share a split), seeded."""
    names = names or _split_names(len(ratios))
    if len(names) != len(ratios) or not all(0 <= r < math.inf for r in ratios) or not sum(ratios):
        raise DataError(f"ratios {ratios} and names {names}: need one non-negative ratio per split name")
    if len(set(names)) != len(names) or not all(names):
        raise DataError(f"names {names}: each split needs a name of its own (one file per split)")
    out = Path(out)
    refuse_writing_over(path, [out / f"{name}.json" for name in names])
    skips = SkipLog()
    records = list(iter_records(path, read, skips))
    require_usable(len(records), skips, f"records in {path}")
    groups = image_groups(records)
    random.Random(seed).shuffle(groups)
    targets = [r / sum(ratios) * len(records) for r in ratios]
    splits: list[list[Record]] = [[] for _ in ratios]
    for group in groups:
        # the split furthest below its target takes the group, so sizes track the ratios whatever the group sizes
        index = max(range(len(splits)), key=lambda i: (targets[i] - len(splits[i]), -i))
        splits[index].extend(group)
    place = ImagePlacer(out, out / "images")
    position = {id(record): i for i, record in enumerate(records)}
    for name, members in zip(names, splits):
        write_llava(sorted(members, key=lambda r: position[id(r)]), out / f"{name}.json", place)
    return {name: len(members) for name, members in zip(names, splits)}, skips


def _split_names(n: int) -> list[str]:
    return ["train", "val", "test"][:n] if n <= 3 else [f"split{i}" for i in range(n)]


def image_groups(records: list[Record]) -> list[list[Record]]:
    """Records connected by a shared image (directly or through others), each group in file order."""
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_user: dict[str, int] = {}
    for i, record in enumerate(records):
        for source in record.images:
            j = first_user.setdefault(image_key(source), i)
            parent[root(i)] = root(j)
    groups: dict[int, list[Record]] = {}
    for i, record in enumerate(records):
        groups.setdefault(root(i), []).append(record)
    return list(groups.values())
