"""Multimodal records: read them, load their images, encode them for a VLM, and batch them.

One record model for every format: a record has an id, zero or more images, and conversation turns whose text
marks each image's position with `<image>`. Encoding renders the turns with the model's chat template (or a plain
template for caption pretraining), expands every `<image>` into the exact number of placeholder tokens the model's
processor uses, and masks everything but the assistant replies in the labels.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError

DATA_IMAGE_TOKEN = "<image>"
"""How image positions are written in data files (LLaVA convention), whatever the model's own image token is."""

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Turn:
    role: str
    """user, assistant or system."""
    text: str
    """The turn's text; `<image>` marks where an image goes."""


@dataclass
class Record:
    id: str
    images: list[Path | Image.Image]
    """Image files (or in-memory images, for inference)."""
    turns: list[Turn]
    source: str
    """File the record came from, for error messages."""
    references: list[str] = field(default_factory=list)
    """Reference answers/captions for evaluation; by default the last assistant reply."""

    @property
    def prompt_turns(self) -> list[Turn]:
        """The conversation up to (not including) the last assistant reply."""
        last = max(i for i, t in enumerate(self.turns) if t.role == "assistant")
        return self.turns[:last]


# ---------------------------------------------------------------------------------------------------- reading


def read_records(path: str | Path) -> list[Record]:
    """Read a LLaVA JSON list or JSONL file of conversation records."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    return [_llava_record(raw, path, i) for i, raw in enumerate(_load_json_records(path))]


def _load_json_records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: invalid JSON: {e.msg} (column {e.colno})") from None
        return rows
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    return rows


def _llava_record(raw: dict, path: Path, index: int) -> Record:
    rid = str(raw.get("id", index))
    where = f"{path}: record {rid!r}"
    if not isinstance(raw.get("conversations"), list) or not raw["conversations"]:
        raise DataError(f"{where}: missing or empty 'conversations'")
    turns = []
    for turn in raw["conversations"]:
        role = _ROLES.get(turn.get("from") or turn.get("role"))
        if role is None or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: each turn needs 'from' (human/gpt/system) and a string 'value'")
        turns.append(Turn(role, turn["value"]))
    image = raw.get("image")
    names = [] if image is None else [image] if isinstance(image, str) else list(image)
    images = [(path.parent / name).resolve() for name in names]
    if images and not any(DATA_IMAGE_TOKEN in t.text for t in turns):
        # LLaVA convention: an image without a placeholder goes before the first user turn's text.
        first_user = next(t for t in turns if t.role == "user")
        first_user.text = DATA_IMAGE_TOKEN + "\n" + first_user.text
    placeholders = sum(t.text.count(DATA_IMAGE_TOKEN) for t in turns)
    if placeholders != len(images):
        raise DataError(f"{where}: {placeholders} {DATA_IMAGE_TOKEN} placeholders but {len(images)} images")
    if not any(t.role == "assistant" for t in turns):
        raise DataError(f"{where}: no assistant reply to learn from")
    record = Record(rid, images, turns, str(path))
    record.references = list(raw.get("references") or [turns[-1].text if turns[-1].role == "assistant" else ""])
    return record


def load_image(path: Path | Image.Image) -> Image.Image:
    """Open an image as RGB; a clear error names the file when it cannot be read."""
    if isinstance(path, Image.Image):
        return path.convert("RGB")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


# ---------------------------------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    record_id: str
    input_ids: list[int]
    labels: list[int]
    images: list[Path]


class Encoder:
    """Turns records into token ids + labels with the model's processor; the same code serves training and inference."""

    def __init__(self, processor, template: str = "chat", max_length: int = 2048):
        from .build import num_image_tokens

        if template not in ("chat", "plain"):
            raise DataError(f"template {template!r} unknown; use chat or plain")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = template
        self.max_length = max_length
        self.image_token = processor.image_token
        self.image_token_id = processor.image_token_id
        self.tokens_per_image = num_image_tokens(processor)

    def _expand(self, text: str) -> str:
        return text.replace(DATA_IMAGE_TOKEN, self.image_token * self.tokens_per_image)

    def render(self, turns: Sequence[Turn], add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """The text of a conversation and the character spans of its assistant replies (what the loss sees)."""
        if self.template == "plain":
            return self._render_plain(turns, add_generation_prompt)
        messages = [{"role": t.role, "content": self._expand(t.text)} for t in turns]
        spans = []
        for i, turn in enumerate(turns):
            if turn.role == "assistant":
                start = len(self._chat(messages[:i], add_generation_prompt=True))
                end = len(self._chat(messages[: i + 1]))
                spans.append((start, end))
        return self._chat(messages, add_generation_prompt), spans

    def _chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _render_plain(self, turns: Sequence[Turn], add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        text, spans = "", []
        for turn in turns:
            if turn.role == "assistant":
                reply = turn.text + self.tokenizer.eos_token
                spans.append((len(text), len(text) + len(reply)))
                text += reply
            else:
                text += self._expand(turn.text) + "\n"
        return text, spans

    def encode(self, record: Record, for_generation: bool = False) -> Encoded:
        turns = record.prompt_turns if for_generation else record.turns
        text, spans = self.render(turns, add_generation_prompt=for_generation)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [
            tok if any(s <= a and b <= e for s, e in spans) and b > a else -100
            for tok, (a, b) in zip(ids, enc["offset_mapping"])
        ]
        expected = self.tokens_per_image * len(record.images)
        found = sum(1 for i in ids if i == self.image_token_id)
        if found != expected:
            raise DataError(
                f"{record.source}: record {record.id!r}: {found} image tokens after tokenization, expected {expected} "
                f"({len(record.images)} images x {self.tokens_per_image}); the text may contain the image token itself"
            )
        if len(ids) > self.max_length:
            raise DataError(
                f"{record.source}: record {record.id!r}: {len(ids)} tokens exceed max_length {self.max_length}"
            )
        if not for_generation and all(label == -100 for label in labels):
            raise DataError(f"{record.source}: record {record.id!r}: empty assistant reply, nothing to learn")
        return Encoded(record.id, ids, labels, record.images)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]


# ---------------------------------------------------------------------------------------------------- datasets


@dataclass
class Source:
    """One data file of a stage, with its mixing weight."""

    path: str
    """LLaVA JSON/JSONL file."""
    weight: float = 1.0
    """Fraction of the file's records drawn per epoch (2.0 = each record twice, 0.5 = a random half)."""


class SkipLog:
    """Records skipped, counted by reason with the first few ids of each; nothing is dropped silently."""

    def __init__(self, keep: int = 5):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.keep = keep

    def add(self, reason: str, record_id: str) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.keep:
            examples.append(record_id)

    def merge(self, other: SkipLog) -> None:
        for reason, ids in other.examples.items():
            for rid in ids:
                self.add(reason, rid)
            self.counts[reason] += other.counts[reason] - len(ids)

    def as_dict(self) -> dict:
        return {reason: {"count": n, "examples": self.examples[reason]} for reason, n in self.counts.items()}

    def __len__(self) -> int:
        return sum(self.counts.values())


def skip_reason(error: DataError) -> str:
    """A short category for a data error, used to count skips by kind."""
    message = str(error)
    for key in ("image not found", "unreadable image", "exceed max_length", "image tokens", "empty assistant"):
        if key in message:
            return key
    return "invalid record"


def encode_sources(sources: Sequence[Source], encoder: Encoder, data_root: Path, skips: SkipLog) -> list[tuple[list[Encoded], float]]:
    """Read and tokenize every source once, up front; records that cannot be encoded are skipped and logged."""
    encoded_sources = []
    for source in sources:
        path = Path(source.path)
        path = path if path.is_absolute() else data_root / path
        encoded = []
        for record in read_records(path):
            try:
                encoded.append(encoder.encode(record))
            except DataError as e:
                skips.add(skip_reason(e), f"{record.id}: {e}")
        encoded_sources.append((encoded, source.weight))
    return encoded_sources


def epoch_order(sources: list[tuple[list[Encoded], float]], seed: int, shuffle: bool = True) -> list[Encoded]:
    """One epoch's examples: each source contributes weight x its size, mixed and shuffled with the seed."""
    rng = random.Random(seed)
    order: list[Encoded] = []
    for examples, weight in sources:
        whole, part = divmod(weight * len(examples), len(examples) or 1)
        for _ in range(int(whole)):
            order.extend(examples)
        order.extend(rng.sample(examples, int(round(part))))
    if shuffle:
        rng.shuffle(order)
    return order


class Collator:
    """Pads a list of encoded examples into a batch and loads their images; unreadable images skip the example."""

    def __init__(self, encoder: Encoder, pad_left: bool = False):
        self.encoder = encoder
        self.pad_id = encoder.tokenizer.pad_token_id
        self.pad_left = pad_left

    def __call__(self, examples: Sequence[Encoded]) -> dict:
        kept, images, skipped = [], [], []
        for example in examples:
            try:
                images.extend(load_image(p) for p in example.images)
                kept.append(example)
            except DataError as e:
                skipped.append((skip_reason(e), f"{example.record_id}: {e}"))
        batch = self.pad(kept)
        if images:
            batch["pixel_values"] = self.encoder.pixel_values(images)  # [n_images, 3, H, W]
        batch["skipped"] = skipped
        return batch

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
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def iter_batches(examples: Sequence[Encoded], batch_size: int) -> Iterator[list[Encoded]]:
    for start in range(0, len(examples), batch_size):
        yield list(examples[start : start + batch_size])
