"""Readers of the collection formats: COCO, imagefolder, webdataset, Hugging Face datasets."""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import DataError
from .images import BytesImage, FileSlice
from .records import EMPTY_ANSWER, INVALID_JSON, MISSING_IMAGE, Record, RecordError
from .rows import (
    IMAGE_SUFFIXES,
    ReadOptions,
    arrow_rows,
    as_texts,
    decode_text,
    file_rows,
    json_document,
    pair_record,
    row_record,
    with_columns,
)


def read_coco(path: Path, options: ReadOptions) -> Iterator[Record | RecordError]:
    """COCO caption annotations (or a Karpathy split): one record per image with all its captions as references."""
    document = json_document(path)
    if _is_karpathy(document):
        images, captions = _karpathy(path, document, _karpathy_splits_read(path, document, options))
    else:
        images, captions = _coco_annotations(path, document)
    root = options.image_root or _coco_image_root(path, [name for name in images.values()])
    for image_id, file_name in images.items():
        references = captions.pop(image_id, [])  # blank ones too: the official scorer counts them
        if not any(reference.strip() for reference in references):
            blank = " but blank ones" if references else ""
            yield RecordError(path, str(image_id), EMPTY_ANSWER, f"image {file_name} has no captions{blank}")
            continue
        yield pair_record(str(image_id), [(root / file_name).resolve()], references, options.prompt, path)
    for image_id in captions:
        yield RecordError(path, str(image_id), MISSING_IMAGE,
                          f"captions for image id {image_id}, which the 'images' list does not have")


def _is_karpathy(document) -> bool:
    images = document.get("images") if isinstance(document, dict) else None
    return bool(images) and isinstance(images[0], dict) and "sentences" in images[0]


def _splits_of(document: dict) -> list[str]:
    return list(dict.fromkeys(str(image.get("split")) for image in document["images"] if isinstance(image, dict)))


def _karpathy_splits_read(path: Path, document: dict, options: ReadOptions) -> set[str] | None:
    """The splits of a Karpathy file that `options.split` names (None: all), each one present in the file."""
    present = _splits_of(document)
    if options.split is None:
        if options.several_splits and len(present) > 1:
            raise DataError(f"{path}: Karpathy's file holds the splits {', '.join(present)}; {options.several_splits}")
        return None
    return _named_splits(path, options.split, present)


def _named_splits(path: Path, split: str, present: list[str]) -> set[str]:
    """The splits a comma-separated `split` names, each one among those `present`."""
    wanted = {name.strip() for name in split.split(",") if name.strip()}
    unknown = sorted(wanted.difference(present))
    if unknown or not wanted:
        raise DataError(f"{path}: split {split!r}: the file's splits are {', '.join(present)}")
    return wanted


def _karpathy(path: Path, document: dict, splits: set[str] | None) -> tuple[dict, dict]:
    images, captions = {}, {}
    for index, image in enumerate(document["images"]):
        if splits is not None and str(image.get("split")) not in splits:
            continue
        file_name = _entry_text(image, "filename", f"images[{index}]", path)
        image_id = image.get("cocoid", image.get("imgid"))
        images[image_id] = str(Path(image.get("filepath", "")) / file_name)
        captions[image_id] = as_texts(image.get("sentences"), keep_blank=True)
    return images, captions


def _coco_annotations(path: Path, document) -> tuple[dict, dict]:
    if not isinstance(document, dict) or not isinstance(document.get("images"), list) \
            or not isinstance(document.get("annotations"), list):
        raise DataError(f"{path}: COCO annotations need 'images' and 'annotations' lists")
    images, entries = {}, {}
    for index, image in enumerate(document["images"]):
        image_id = _entry_field(image, "id", f"images[{index}]", path)
        if image_id in images:  # one of the two images would be dropped, and get the other's captions
            raise DataError(f"{path}: images[{index}] has id {image_id!r}, as images[{entries[image_id]}] does; "
                            "image ids must be unique")
        images[image_id] = _entry_text(image, "file_name", f"images[{index}]", path)
        entries[image_id] = index
    captions: dict = {}
    for index, annotation in enumerate(document["annotations"]):
        image_id = _entry_field(annotation, "image_id", f"annotations[{index}]", path)
        captions.setdefault(image_id, []).extend(as_texts(annotation.get("caption"), keep_blank=True))
    return images, captions


def _entry_field(entry, key: str, where: str, path: Path):
    """A required field of an image or annotation entry; an entry without it is a DataError naming it (a hand-made or
    truncated annotation file), not a traceback."""
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {where} is {type(entry).__name__}, not a JSON object; fix or remove that entry")
    if entry.get(key) is None:
        raise DataError(f"{path}: {where} has no {key!r}; add it or remove that entry")
    return entry[key]


def _entry_text(entry, key: str, where: str, path: Path) -> str:
    value = _entry_field(entry, key, where, path)
    if not isinstance(value, str):
        raise DataError(f"{path}: {where}: {key!r} must be a file name, got {value!r}")
    return value


def _coco_image_root(path: Path, names: list[str]) -> Path:
    """Where COCO's images are: beside the annotations, in images/, or in the split folder its name mentions."""
    split = re.search(r"(train|val|test)\d{4}", path.name)
    here, up = path.parent, path.parent.parent
    candidates = [here, here / "images", up, up / "images"]
    if split:
        candidates = [here / split[0], up / split[0], up / "images" / split[0], here / "images" / split[0]] + candidates
    sample = names[:20]
    return next((c for c in candidates if any((c / name).exists() for name in sample)), here)


def read_imagefolder(path: Path, options: ReadOptions) -> Iterator[Record | RecordError]:
    """Hugging Face imagefolder: each metadata file describes the images in its folder (`file_name` column)."""
    files = metadata_files(path)
    tops = [path / file.parent.relative_to(path).parts[0] if file.parent != path else path for file in files]
    split_of = lambda top: _split_in_name(top.name) if top != path else None  # noqa: E731 (train/, test/)
    read = set(_split_files(path, tops, split_of, options))
    for metadata in (file for file, top in zip(files, tops) if top in read):
        folder = metadata.parent
        for default_id, row in with_columns(file_rows(metadata), metadata, options.columns, _is_file_name_column):
            if isinstance(row, RecordError):
                yield row
                continue
            key = options.columns.image or _file_name_column(row)
            if key is None:
                yield RecordError(metadata, default_id, MISSING_IMAGE, "no file_name column")
                continue
            names = [n for n in (row[key] if isinstance(row[key], list) else [row[key]]) if n not in (None, "")]
            if not names:  # every row of an imagefolder is an image: not a text-only record
                yield RecordError(metadata, str(row.get("id", default_id)), MISSING_IMAGE, f"no image: {key} is empty")
                continue
            row_id = ",".join(str((folder / str(n)).relative_to(path)) for n in names)
            with_key = replace(options, columns=replace(options.columns, image=key))
            yield row_record(row, row_id, metadata, with_key, folder)  # named by its id column, else its image


def metadata_files(path: Path) -> list[Path]:
    """The metadata files of an imagefolder, in its folders at any depth (train/part1/metadata.jsonl, as `datasets`
    finds them), at most one per folder: two (metadata.csv beside a metadata.jsonl made from it) would give every
    image twice."""
    files = sorted(_metadata_under(path))
    folders = [file.parent for file in files]
    twice = next((folder for folder, after in zip(folders, folders[1:]) if folder == after), None)  # sorted: neighbours
    if twice is not None:
        names = ", ".join(file.name for file in files if file.parent == twice)
        raise DataError(f"{twice}: {names} both describe this folder's images; keep one")
    return files


def _metadata_under(path: Path) -> Iterator[Path]:
    """The metadata files in `path` and its folders, through linked folders too (a split folder linked from
    elsewhere; Path.rglob does not follow links), each real folder once (a link up the tree is no loop)."""
    seen = set()
    for folder, subfolders, names in os.walk(path, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        yield from (Path(folder) / name for name in names if name in ("metadata.jsonl", "metadata.csv",
                                                                       "metadata.parquet"))


def _file_name_column(row: dict) -> str | None:
    return next((k for k in row if _is_file_name_column(k)), None)


def _is_file_name_column(name: str) -> bool:
    # The imagefolder convention: file_name, <name>_file_name, or file_names for a list.
    return name in ("file_name", "file_names") or name.endswith("_file_name")


def read_webdataset(path: Path, options: ReadOptions) -> Iterator[Record | RecordError]:
    """webdataset shards, streamed member by member (never unpacked); a sample = the members sharing a key."""
    shards = sorted(list(path.glob("*.tar")) + list(path.glob("*.tar.gz"))) if path.is_dir() else [path]
    for shard in shards:
        for key, members in _tar_samples(shard):
            yield _webdataset_record(key, members, shard, options)


def _tar_samples(shard: Path) -> Iterator[tuple[str, dict]]:
    """(key, {extension: image source or text}) for each run of members with the same key, in shard order."""
    compressed = not shard.name.lower().endswith(".tar")
    try:
        with tarfile.open(shard, "r|*") as tar:
            key, sample = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, extension = base.partition(".")
                member_key = f"{folder}/{stem}" if folder else stem
                if member_key != key and sample:
                    yield key, sample
                    sample = {}
                key = member_key
                sample[extension.lower()] = _tar_member(tar, member, shard, compressed)
            if sample:
                yield key, sample
    except tarfile.TarError as e:
        raise DataError(f"{shard}: unreadable tar shard ({e})") from None


def _tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, shard: Path, compressed: bool):
    if not member.name.lower().endswith(IMAGE_SUFFIXES):
        return decode_text(tar.extractfile(member).read())
    if compressed:  # offsets in a compressed stream cannot be seeked to later
        return BytesImage(f"{shard}:{member.name}", tar.extractfile(member).read())
    return FileSlice(shard, member.name, member.offset_data, member.size)


def _webdataset_record(key: str, sample: dict, shard: Path, options: ReadOptions) -> Record | RecordError:
    images = [value for value in sample.values() if isinstance(value, (FileSlice, BytesImage))]
    row: dict = {"__key__": key}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except json.JSONDecodeError as e:
            return RecordError(shard, key, INVALID_JSON, f"{key}.json: invalid JSON: {e.msg}")
        row.update(meta if isinstance(meta, dict) else {})
    for extension in ("txt", "caption", "text"):
        if extension in sample:
            row.setdefault("caption", sample[extension].strip())
    image_key = options.columns.image or "image"
    row[image_key] = images  # a sample of several images (left.jpg, right.jpg) is one record with all of them
    return row_record(row, key, shard, options, shard.parent)


def read_hf(path: Path, options: ReadOptions) -> Iterator[Record | RecordError]:
    """A dataset saved with `datasets.save_to_disk` (one split or a DatasetDict), or parquet file(s).

    Images embedded in a saved dataset's Arrow files are indexed by their byte range in the file and read when
    needed (`FileSlice`), so a dataset larger than memory trains; parquet pages are compressed, so parquet images are
    held in memory (save such a dataset with `datasets` first to stream it)."""
    for split, file in _hf_files(path, options):
        rows = ((f"{split}/{index}" if split else str(index), row) for index, row in enumerate(arrow_rows(file)))
        for row_id, row in with_columns(rows, file, options.columns):
            yield row_record(row, row_id, file, options, options.image_root or file.parent)


def _splits_read(path: Path, splits: list[str], options: ReadOptions, one: Path) -> list[str]:
    """The splits of a dataset to read: those `options.split` names, else all of them, unless the records serve one
    purpose (`options.several_splits`), where test records would be trained on or training ones scored; `one` is
    where one split alone is (its folder or file)."""
    if options.split is not None:
        wanted = _named_splits(path, options.split, splits)
        return [split for split in splits if split in wanted]
    if options.several_splits and len(splits) > 1:
        kind = "file" if one.is_file() else "folder"
        raise DataError(f"{path}: holds the splits {', '.join(splits)}; read one: give its {kind} ({one}), or name "
                        "them with a recipe source's split key")
    return splits


def _split_files(path: Path, files: list[Path], split_of: Callable[[Path], str | None],
                 options: ReadOptions) -> list[Path]:
    """The files (or folders) of the splits read (`_splits_read`), where every one of `files` belongs to a split
    (`split_of`); all of them otherwise."""
    splits = [split_of(file) for file in files]
    if not files or None in splits:
        return files
    read = _splits_read(path, list(dict.fromkeys(splits)), options, files[0])
    return [file for file, split in zip(files, splits) if split in read]


SPLIT_NAME = re.compile(r"(?:^|[-._ 0-9])(train|training|validation|valid|dev|val|test|testing|eval|evaluation)"
                        r"(?:[-._ 0-9]|$)")
"""A split named in a folder or file name, as Hugging Face `datasets` finds them (data_files.SPLIT_KEYWORDS)."""


def _split_in_name(name: str) -> str | None:
    found = SPLIT_NAME.search(name)
    return found[1] if found else None


def _hf_files(path: Path, options: ReadOptions) -> list[tuple[str, Path]]:
    if path.is_file():
        return [("", path)]
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        return [(split, file) for split in _splits_read(path, splits, options, path / splits[0])
                for _, file in _hf_files(path / split, options)]
    if (path / "state.json").exists():
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        return [("", path / f["filename"]) for f in state["_data_files"]]
    parquet = sorted(path.glob("*.parquet"))
    if not parquet:  # a split folder copied without its files would otherwise give no records, without a word
        raise DataError(f"{path}: no state.json or .parquet files, so no Hugging Face dataset (save_to_disk or "
                        "to_parquet writes them)")
    return [("", p) for p in _split_files(path, parquet, lambda file: _split_in_name(file.stem), options)]
