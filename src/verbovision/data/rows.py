"""Multimodal records: read them, load their images, encode them for a VLM, and batch them.

One record model for every format: a record has an id, zero or more images, and conversation turns whose text
marks each image's position with `<image>`. Encoding renders the turns with the model's chat template (or a plain
template for caption pretraining), expands every `<image>` into the exact number of placeholder tokens the model's
processor uses, and masks everything but the assistant replies in the labels."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..config.sources import Source
from ..errors import DataError
from .images import BytesImage, FileSlice
from .records import (
    BAD_CONVERSATION,
    CAPTION_PROMPT,
    DATA_IMAGE_TOKEN,
    EMPTY_ANSWER,
    IMAGE_TOKENS,
    INVALID_JSON,
    MISSING_IMAGE,
    NOT_UNICODE,
    NOT_UTF8,
    UNREADABLE_IMAGE,
    Record,
    RecordError,
    Turn,
)


def source_path(source: Source, data_root: Path) -> Path:
    """A recipe source's file or folder: relative paths start at data_root; a streamed dataset that is not there is a
    hub id."""
    path = Path(source.path) if Path(source.path).is_absolute() else Path(data_root) / source.path
    return Path(source.path) if source.format == "hf-stream" and not path.exists() else path


def source_options(source: Source, data_root: Path):
    """How to read a recipe source (readers.ReadOptions): what the `verbo data` commands' reading flags say, from the
    source's keys; a relative image_root starts at data_root, like the source's path. Image files are checked to exist
    as records are indexed, so a source whose images are elsewhere fails before the first step."""

    root = Path(data_root) / source.image_root if source.image_root else None  # an absolute image_root stays as is
    columns = Columns(source.image_column, source.text_column, source.question_column)
    prompt = {"prompt": source.prompt} if source.prompt is not None else {}
    return ReadOptions(format=source.format, columns=columns, image_root=root, split=source.split,
                       check_image_files=True, several_splits=SOURCE_SPLITS, **prompt)


SOURCE_SPLITS = "name the ones this source reads with its split key (split: train,restval to train, as papers do; val)"
"""A recipe source's `ReadOptions.several_splits`."""


IMAGE_COLUMNS = ("image", "images", "image_path", "file_name", "file_names", "filename", "img", "path", "jpg", "png",
                 "jpeg", "webp")
TEXT_COLUMNS = ("caption", "captions", "text", "answer", "answers", "output", "response", "sentences", "txt")
QUESTION_COLUMNS = ("question", "instruction", "prompt", "query")
ID_COLUMNS = ("id", "question_id", "image_id", "__key__")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_URL_IN_PATH = re.compile(r"(?:^|/)((?:https?|s3|gs|hf):/)/?(.*)")  # a URL read as a path: its // became /


@dataclass
class Columns:
    """Which fields of a flat row hold what; None takes the first of the common names present in the row."""

    image: str | None = None
    """Image path (relative to the data file or image_root), a list of paths, or image bytes / a {bytes, path} struct."""
    text: str | None = None
    """The caption or answer; a list gives several references, the first one is trained on."""
    question: str | None = None
    """The question or prompt; rows without one get the caption prompt."""


@dataclass
class ReadOptions:
    """How to read a data path; every field has a working default."""

    format: str | None = None
    """One of FORMATS; None detects it from the path."""
    columns: Columns = field(default_factory=Columns)
    """Column names of flat rows (pairs, imagefolder metadata, parquet, webdataset .json)."""
    image_root: Path | None = None
    """Folder relative image paths start from (default: the data file's folder; COCO: guessed near the file)."""
    prompt: str = CAPTION_PROMPT
    """User turn of caption records (rows without a question)."""
    split: str | None = None
    """Split of a Hugging Face dataset read with `hf-stream` (default train); the splits of a Karpathy file, a saved
    DatasetDict, split parquet files or imagefolder split folders to read (comma-separated, e.g. train,restval;
    default all)."""
    several_splits: str | None = None
    """Where the records serve one purpose (a recipe's training or validation source, `verbo eval --data`), what to
    do about a Karpathy file holding several splits, none named by `split`: the error says it, since all of them
    would put test images in training, or training images in a score (a DatasetDict, split parquet files or split
    folders are refused the same way). None reads them all (`verbo data`)."""
    check_image_files: bool = False
    """A record whose image file does not exist is a problem (`image not found`) as it is read: one stat per image,
    nothing decoded. Training, evaluation and the `verbo data` commands read so, and data whose images are not where
    its paths say fails before anything runs; off, a data file reads without its images (to inspect it)."""


def validate(record: Record, check_image_files: bool = False) -> Record | RecordError:
    """The record itself when it can be trained on, else the first problem found (with `check_image_files`, a
    missing image file is one)."""

    def problem(kind: str, detail: str) -> RecordError:
        return RecordError(record.source, record.id, kind, detail)

    texts = [t.text for t in record.turns] + [r for r in record.references if isinstance(r, str)]
    if any(NOT_UNICODE.search(text) for text in texts):
        return problem(NOT_UTF8, "text is not valid UTF-8; re-save the file as UTF-8")
    roles = [t.role for t in record.turns if t.role != "system"]
    if not roles or roles[0] != "user" or any(a == b for a, b in zip(roles, roles[1:])):
        return problem(BAD_CONVERSATION, f"turns must alternate user/assistant starting with user, got {roles}")
    if roles[-1] != "assistant":
        return problem(BAD_CONVERSATION, "the conversation does not end with an assistant reply to learn from")
    if any(t.role == "system" for t in record.turns[1:]):
        return problem(BAD_CONVERSATION, "a system turn may only come first")
    placeholders = sum(t.text.count(DATA_IMAGE_TOKEN) for t in record.turns)
    if placeholders != len(record.images):
        return problem(IMAGE_TOKENS, f"{placeholders} {DATA_IMAGE_TOKEN} placeholders but {len(record.images)} images")
    if any(t.role == "assistant" and not t.text.strip() for t in record.turns):
        return problem(EMPTY_ANSWER, "an assistant reply is empty")
    if check_image_files:
        missing = next((image for image in record.images if isinstance(image, Path) and not image.exists()), None)
        if missing is not None:
            return problem(MISSING_IMAGE, _not_found(missing))
    return record


def _not_found(image: Path) -> str:
    """Why a record's image file is missing: a URL given as an image (not fetched) says so."""
    url = _URL_IN_PATH.search(str(image))
    if url:
        return (f"{url.group(1)}/{url.group(2)}: a URL; images are read from local files: download them and give "
                "their folder as image_root (--image-root)")
    return f"{image}: image not found"


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM is dropped); bytes that are not UTF-8 survive as escapes that `validate` reports per record."""
    return data.decode("utf-8-sig", errors="surrogateescape")


def json_document(path: Path):
    """A whole JSON file; invalid JSON is an error naming the line and column."""
    data = path.read_bytes()
    _refuse_utf16(path, data)
    text = decode_text(data)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}{_trailing_comma_hint(e)}") from None


def _refuse_utf16(path: Path, head: bytes) -> None:
    """A text file that starts with a UTF-16 byte order mark (Excel's "Unicode text", Windows editors) is an error
    saying so, not invalid JSON or columns with a space between every letter."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: UTF-16 text; re-save it as UTF-8")


def _trailing_comma_hint(error: json.JSONDecodeError) -> str:
    # Hand-edited files (LLaVA's own documented example among them) often end a list or object with a comma.
    before = error.doc[: error.pos].rstrip()
    if error.pos < len(error.doc) and error.doc[error.pos] in "]}" and before.endswith(","):
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1)
        return f" (trailing comma at line {line} column {column})"
    return ""


def _jsonl_rows(path: Path) -> Rows:
    """(default id, row) for each non-empty line, the id counting those lines from 0 (see file_rows); a line that is
    not a JSON object is a RecordError whose message gives its line number."""
    with open(path, "rb") as f:
        _refuse_utf16(path, f.read(2))
        f.seek(0)
        lines = ((line_no, decode_text(raw).strip()) for line_no, raw in enumerate(f, 1))
        for index, (line_no, line) in enumerate((n, line) for n, line in lines if line):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield str(index), RecordError(path, str(index), INVALID_JSON,
                                              f"line {line_no} column {e.colno}: invalid JSON: {e.msg}")
                continue
            if not isinstance(row, dict):
                yield str(index), RecordError(path, str(index), INVALID_JSON,
                                              f"line {line_no}: a line must hold a JSON object")
                continue
            yield str(index), row


def _csv_rows(path: Path) -> Iterator[dict]:
    data = path.read_bytes()
    _refuse_utf16(path, data)
    text = decode_text(data)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    yield from csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)


def file_rows(path: Path) -> Rows:
    """(default id, row) of a JSON list, JSONL, CSV/TSV or parquet/arrow file. A row without an id column is named by
    its 0-based position among the file's records, in every format: the item of a JSON list, the non-empty line of a
    JSONL file, the data row of a CSV (after its header) or of a parquet file (`rows[i]`, `jq '.[i]'`, pandas'
    `iloc[i]`)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix in (".csv", ".tsv"):
        yield from ((str(i), row) for i, row in enumerate(_csv_rows(path)))
    elif suffix in (".parquet", ".arrow"):
        yield from ((str(i), row) for i, row in enumerate(arrow_rows(path)))
    else:
        document = json_document(path)
        if not isinstance(document, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(document).__name__}")
        for i, row in enumerate(document):
            yield str(i), row if isinstance(row, dict) else RecordError(path, str(i), INVALID_JSON,
                                                                       "a record must be a JSON object")


Rows = Iterator[tuple[str, dict | RecordError]]
"""(default id, row) of a file, as `file_rows` reads them."""


def with_columns(rows: Rows, path: Path, columns: Columns, is_image: Callable[[str], bool] = IMAGE_COLUMNS.__contains__
                 ) -> Rows:
    """The rows of `path`, a file of caption/answer pairs, once the file is known to have an image column and a
    caption/answer column (the common names, or those named in `columns`, which also names the question column).

    A file lacking one is a `DataError` listing the columns it has, raised before its first record: one message
    instead of the same problem on every record. The first pair row settles it when it has them all; otherwise
    (JSON rows need not share their keys) the columns of all the file's rows decide. Conversation rows are LLaVA
    records, which need no columns."""
    checked = False
    for default_id, row in rows:
        if not checked and isinstance(row, dict) and "conversations" not in row:
            checked = True
            if _missing_columns(set(row), columns, is_image):
                _require_columns(path, columns, is_image)
        yield default_id, row


def _require_columns(path: Path, columns: Columns, is_image: Callable[[str], bool]) -> None:
    present = {key for _, row in file_rows(path) if isinstance(row, dict) and "conversations" not in row
               for key in row}
    missing = _missing_columns(present, columns, is_image)
    if not missing:
        return
    fields = [field_name for field_name, _ in missing]
    raise DataError(f"{path}: {' and '.join(what for _, what in missing)} (columns: {', '.join(sorted(present))}); "
                    f"name {'it' if len(fields) == 1 else 'them'} with {' and '.join(f'--{f}-column' for f in fields)}"
                    f" (a recipe source's {' and '.join(f'{f}_column' for f in fields)})")


def _missing_columns(present: set[str], columns: Columns, is_image: Callable[[str], bool]) -> list[tuple[str, str]]:
    """(Columns field, what is missing) for the image, caption/answer and (when named) question columns."""
    found = {"image": any(map(is_image, present)), "text": any(name in TEXT_COLUMNS for name in present),
             "question": True}
    missing = []
    for field_name, what in (("image", "image"), ("text", "caption/answer"), ("question", "question")):
        named = getattr(columns, field_name)
        if named is not None and named not in present:
            missing.append((field_name, f"no {what} column {named!r}"))
        elif named is None and not found[field_name]:
            missing.append((field_name, f"no {what} column"))
    return missing


def row_record(row: dict, default_id: str, source: Path, options: ReadOptions, base: Path) -> Record | RecordError:
    """One row of any row-shaped format: a LLaVA conversation, or an image with a caption/answer (and question)."""
    rid = str(next((row[k] for k in ID_COLUMNS if row.get(k) not in (None, "")), default_id))
    if "conversations" in row:
        return _llava_record(row, rid, source, base, options.columns.image)
    columns = options.columns
    image_key = columns.image or _first_present(row, IMAGE_COLUMNS)
    text_key = columns.text or _first_present(row, TEXT_COLUMNS)
    question_key = columns.question or _first_present(row, QUESTION_COLUMNS)
    for wanted, key in (("image", columns.image), ("text", columns.text), ("question", columns.question)):
        if key and key not in row:
            return RecordError(source, rid, BAD_CONVERSATION, f"no {wanted} column {key!r} (columns: {sorted(row)})")
    try:
        images = image_sources(row.get(image_key), base, source, rid)
    except RecordError as e:
        return e
    answers = as_texts(row.get(text_key))
    if not answers:
        return RecordError(source, rid, EMPTY_ANSWER, f"no caption or answer (looked for {text_key or TEXT_COLUMNS})")
    question = as_texts(row.get(question_key))
    return pair_record(rid, images, answers, question[0] if question else options.prompt, source)


def pair_record(rid: str, images: list, answers: list[str], prompt: str, source: Path | str) -> Record:
    """A one-exchange record: the prompt (images placed before it unless it marks them) and the first answer that
    is not blank; every answer is a reference (a blank one too: see `as_texts`)."""
    reply = next(answer for answer in answers if answer.strip())
    return Record(rid, images, [Turn("user", place_images(prompt, len(images))), Turn("assistant", reply)],
                  str(source), references=list(answers))


def place_images(text: str, n_images: int) -> str:
    """LLaVA's convention: images whose text has no `<image>` go before it, one placeholder per image."""
    if n_images and DATA_IMAGE_TOKEN not in text:
        return (DATA_IMAGE_TOKEN + "\n") * n_images + text
    return text


def _first_present(row: dict, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if row.get(name) not in (None, "", [])), None)


def as_texts(value, keep_blank: bool = False) -> list[str]:
    """A text field as a list of strings: one string, a list of them, Karpathy `sentences` ({raw}), numbers. NaN
    (how pandas writes a missing value into JSON or a float column) is no text, not the caption "nan". A blank
    string is no text either, unless `keep_blank`: references, which pycocoevalcap keeps (a blank COCO caption
    still counts in BLEU's closest reference length and in CIDEr's mean over the references)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if keep_blank or value.strip() else []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)] if math.isfinite(value) else []
    if isinstance(value, dict):
        text = next((value[k] for k in ("raw", "caption", "text", "answer") if k in value), None)
        return as_texts(text, keep_blank)
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in as_texts(item, keep_blank)]
    return []


def image_sources(value, base: Path, source: Path, rid: str) -> list:
    """A row's image field as image sources: paths (relative to `base`), lists of them, bytes, {bytes, path}; any
    other value (a number) is the record's RecordError."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [image for item in value for image in image_sources(item, base, source, rid)]
    if isinstance(value, (bytes, bytearray)):
        return [BytesImage(f"{source}:{rid}", bytes(value))]
    if isinstance(value, dict):
        if value.get("bytes"):
            return [BytesImage(f"{source}:{rid}:{value.get('path') or 'image'}", value["bytes"])]
        return image_sources(value.get("path"), base, source, rid)
    if isinstance(value, (str, Path)):
        return [(base / value).resolve()]
    if isinstance(value, (FileSlice, BytesImage, Image.Image)):
        return [value]  # already an image
    raise RecordError(source, rid, UNREADABLE_IMAGE, f"image field {value!r} is not a path, a list of paths, bytes "
                                                     "or {bytes, path}")


def _llava_record(raw: dict, rid: str, path: Path, base: Path, image_column: str | None) -> Record | RecordError:
    conversations = raw.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        return RecordError(path, rid, BAD_CONVERSATION, "missing or empty 'conversations'")
    turns = []
    for turn in conversations:
        role = _ROLES.get(turn.get("from") or turn.get("role")) if isinstance(turn, dict) else None
        text = turn.get("value", turn.get("content")) if role else None  # LLaVA's from/value, or role/content
        if not isinstance(text, str):
            return RecordError(path, rid, BAD_CONVERSATION, "each turn needs 'from' (human/gpt/system) and a string "
                                                            "'value' (or 'role' and a string 'content')")
        turns.append(Turn(role, text))
    # the column named (imagefolder's file_name) where the row has it, else LLaVA's "image", else "images" (Hugging
    # Face datasets' list of images)
    image_key = image_column if image_column in raw else _first_present(raw, ("image", "images"))
    try:
        images = image_sources(raw.get(image_key) if image_key else None, base, path, rid)
    except RecordError as e:
        return e
    first_user = next((t for t in turns if t.role == "user"), None)
    if images and first_user and not any(DATA_IMAGE_TOKEN in t.text for t in turns):
        first_user.text = place_images(first_user.text, len(images))
    last_reply = turns[-1].text if turns[-1].role == "assistant" else ""
    references = as_texts(raw.get("references"), keep_blank=True)  # as `verbo data convert` writes COCO's
    if not any(reference.strip() for reference in references):
        references = [last_reply]
    return Record(rid, images, turns, str(path), references=references)


def read_rows(path: Path, options: ReadOptions) -> Iterator[Record | RecordError]:
    """llava and pairs: a JSON list, JSONL, CSV/TSV or parquet file of rows."""
    base = options.image_root or path.parent
    rows = file_rows(path)
    if options.format == "pairs":
        rows = with_columns(rows, path, options.columns)
    for default_id, row in rows:
        if isinstance(row, RecordError):
            yield row
        elif options.format == "llava" and "conversations" not in row:
            yield RecordError(path, str(row.get("id", default_id)), BAD_CONVERSATION, "missing 'conversations'")
        else:
            yield row_record(row, default_id, path, options, base)


def arrow_rows(path: Path) -> Iterator[dict]:
    """Rows of a parquet file or an Arrow stream file (what `save_to_disk` writes), one batch in memory at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet/Arrow needs pyarrow: pip install datasets") from None
    try:
        if path.suffix.lower() == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
                yield from batch.to_pylist()
            return
        # Mapped, not read: a batch's buffers point into the mapping and only the pages read become resident. The
        # image bytes are never read here (not even copied into a scalar: that alone once made every image page of
        # the file resident, as much memory as the file during indexing); only their offsets are.
        mapped = pa.memory_map(str(path))
        whole = mapped.read_buffer()  # the file's bytes, where the batches' buffers point (no copy, nothing read)
        mapped.seek(0)
        first = 0
        for batch in pa.ipc.open_stream(mapped):
            yield from _rows_with_image_slices(batch, path, whole, first)
            first += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: unreadable {path.suffix[1:]} file ({e})") from None


def _rows_with_image_slices(batch, path: Path, whole, first: int) -> Iterator[dict]:
    """A record batch's rows, with each embedded image ({bytes, path} struct) as the byte range it has in the file
    (a row without bytes keeps its {path}); `first` is the file's row number of the batch's first row."""
    import pyarrow as pa

    images = {name: _image_cells(batch.column(name), whole) for name, kind in zip(batch.schema.names,
                                                                                  batch.schema.types)
              if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0}
    images = {name: cells for name, cells in images.items() if cells is not None}
    rest = batch.drop_columns(list(images)) if images else batch
    for row_index, row in enumerate(rest.to_pylist()):
        for name, cells in images.items():
            cell = cells[row_index]
            row[name] = FileSlice(path, f"row {first + row_index} {name}", *cell) if isinstance(cell, tuple) else cell
        yield row


def _image_cells(column, whole) -> list | None:
    """Each row's image: the (offset, size) of its bytes in the file, else its {path} (None when it has neither).
    None for the whole column when the bytes are not stored as-is in the file (a compressed Arrow file): they are
    then read into memory like parquet's.

    Only offsets, the validity bitmap and (for rows without bytes) paths are read: never the image bytes."""
    import numpy as np
    import pyarrow as pa

    fields = column.flatten()  # parent offsets and nulls applied
    data = fields[column.type.get_field_index("bytes")]
    if not (pa.types.is_binary(data.type) or pa.types.is_large_binary(data.type)):
        return None
    validity, offsets, values = data.buffers()
    start = values.address - whole.address if values is not None else -1
    if not 0 <= start < whole.size or not 0 <= start + values.size <= whole.size:
        return None
    width = np.int64 if pa.types.is_large_binary(data.type) else np.int32
    bounds = np.frombuffer(offsets, dtype=width)[data.offset : data.offset + len(data) + 1]
    has_bytes = bounds[1:] > bounds[:-1]
    if validity is not None and data.null_count:  # the bitmap itself (Array.is_valid() would load pyarrow.compute)
        bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
        has_bytes &= bits[data.offset : data.offset + len(data)].astype(bool)
    path_field = column.type.get_field_index("path")
    paths = fields[path_field].to_pylist() if path_field >= 0 and not has_bytes.all() else [None] * len(data)
    return [(start + int(lo), int(hi - lo)) if ok else ({"path": name} if name else None)
            for lo, hi, ok, name in zip(bounds[:-1], bounds[1:], has_bytes, paths)]
