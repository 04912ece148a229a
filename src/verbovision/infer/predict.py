"""`verbo predict`: answer a LLaVA questions JSONL into an answers JSONL, in batches, resumably.

Questions come in LLaVA's model_vqa format (`question_id`, `image`, `text` per line); answers go out in its answer
format (`question_id`, `prompt`, `text`, `answer_id`, `model_id`, `metadata`) plus `finish_reason` ("length" where the
reply was cut at max_new_tokens, "stop" where it ended by itself). Each batch's answers are appended with
one write, flushed and fsynced, so a kill loses at most the batch being generated; on restart a torn last line is cut
off and every question already answered is skipped, so no question is answered twice or lost."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from .options import BATCH_SIZE

if TYPE_CHECKING:  # imported lazily at run time: `verbo --help` should not load torch
    from .options import DecodeOptions, Generation, Truncation
    from .vlm import VLM


@dataclass
class Question:
    id: str | int
    """question_id, as written in the file (answers repeat it unchanged)."""
    text: str
    """The question (LLaVA's `text`); `<image>` may mark where the image goes."""
    image: Path | None
    """The image file, or None for a text-only question."""


@dataclass
class PredictConfig:
    questions: Path
    """LLaVA questions JSONL: question_id, image (optional) and text on each line."""
    out: Path
    """Answers JSONL; questions it already answers are skipped."""
    image_folder: Path | None = None
    """Folder relative image paths are under (default: the questions file's folder)."""
    model_id: str = ""
    """model_id written in every answer."""
    num_chunks: int = 1
    """Split the questions into this many contiguous chunks (one per machine or process)..."""
    chunk_idx: int = 0
    """...and answer only this one (0-based)."""
    batch_size: int = BATCH_SIZE
    """Questions generated together."""
    options: DecodeOptions | None = None
    """Decoding options (None: the defaults, greedy)."""


@dataclass
class PredictSummary:
    total: int
    """Questions in this chunk."""
    already: int
    """Answered by an earlier run, skipped."""
    answered: int
    """Answered by this run."""
    skipped: dict[str, str] = field(default_factory=dict)
    """question_id -> why it could not be answered (an unreadable image); a re-run tries them again."""
    truncation: Truncation | None = None
    """How many of this run's answers were cut at max_new_tokens."""

    def __str__(self) -> str:
        lines = [f"{self.answered} answered, {self.already} already answered, {len(self.skipped)} skipped "
                 f"(of {self.total} questions)"]
        lines += [f"  skipped {qid}: {reason}" for qid, reason in self.skipped.items()]
        if self.truncation is not None:
            lines.append(f"{self.truncation} (finish_reason \"length\" in the answers)")
        return "\n".join(lines)


def read_questions(path: str | Path, image_folder: str | Path | None = None) -> list[Question]:
    """Parse a LLaVA questions JSONL; a bad line or a repeated question_id is an error naming the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: questions file not found")
    folder = Path(image_folder) if image_folder else path.parent
    questions, seen = [], {}
    # utf-8-sig: a byte order mark (as Windows editors write one) is read as the data readers read it, not a JSON error
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        question = _question(line, folder, f"{path}:{line_no}")
        if question.id in seen:
            raise DataError(f"{path}:{line_no}: question_id {question.id!r} repeats line {seen[question.id]}")
        seen[question.id] = line_no
        questions.append(question)
    return questions


def _question(line: str, folder: Path, where: str) -> Question:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("question_id"), (str, int)):
        raise DataError(f"{where}: each line needs a question_id (string or integer)")
    if not isinstance(raw.get("text"), str):
        raise DataError(f"{where}: question {raw['question_id']!r} has no 'text'")
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        raise DataError(f"{where}: question {raw['question_id']!r}: 'image' must be a file name")
    return Question(raw["question_id"], raw["text"], folder / image if image else None)


def chunk(items: list, num_chunks: int, chunk_idx: int) -> list:
    """The chunk_idx-th of num_chunks contiguous, near-equal parts of items."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise DataError(f"--chunk-idx must be in 0..{num_chunks - 1} and --num-chunks >= 1 "
                        f"(got {chunk_idx} of {num_chunks})")
    n = len(items)
    return items[n * chunk_idx // num_chunks : n * (chunk_idx + 1) // num_chunks]


class AnswerLog:
    """A JSONL file appended one batch at a time: one write of whole lines, flushed and fsynced."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def answered_ids(self, made: dict | None = None) -> set:
        """question_ids answered so far; a torn last line (killed mid-write) is cut off the file first. `made`
        (`made_by`): what every line must say of how it was answered, for the file to be continued."""
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            os.truncate(self.path, complete)
        ids = set()
        for line_no, line in enumerate(data[:complete].decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    ids.add(row["question_id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{self.path}:{line_no}: not an answer line (JSON with a question_id); "
                                    "fix or remove it to resume") from None
                _check_made(row, made, f"{self.path}:{line_no}")
        return ids

    def append(self, rows: list[dict]) -> None:
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


def made_by(config: PredictConfig) -> dict:
    """What an answer line says of how it was answered (as read back from JSON): the lines a run continues say the
    same, or the file would hold another model's (or decoding's) answers as this one's."""
    from .options import DecodeOptions

    return json.loads(json.dumps({"model_id": config.model_id, "metadata": asdict(config.options or DecodeOptions())}))


def _check_made(row: dict, made: dict | None, where: str) -> None:
    if made is None:
        return
    if row.get("model_id") != made["model_id"]:
        differ = f"model_id {row.get('model_id')!r} (now {made['model_id']!r})"
    else:  # a setting an older answers file does not record is not held against it
        was = row.get("metadata") or {}
        differ = ", ".join(f"{key} {was[key]!r} (now {value!r})" for key, value in made["metadata"].items()
                           if key in was and was[key] != value)
    if differ:
        raise DataError(f"{where}: answered with {differ}: give another --out, or the flags it was answered with "
                        "to continue it")


def predict(vlm: VLM, config: PredictConfig, questions: list[Question] | None = None) -> PredictSummary:
    """Answer the questions of config's chunk that `config.out` does not answer yet; `questions`: the file's, where
    they have been read already (`verbo predict` reads them before the model loads)."""
    from .options import DecodeOptions, Truncation

    options = config.options or DecodeOptions()
    if questions is None:
        questions = read_questions(config.questions, config.image_folder)
    questions = chunk(questions, config.num_chunks, config.chunk_idx)
    log = AnswerLog(config.out)
    done = log.answered_ids(made_by(config))
    todo = [q for q in questions if q.id not in done]
    summary = PredictSummary(len(questions), len(questions) - len(todo), 0,
                             truncation=Truncation(options.max_new_tokens))
    bar = _progress(total=len(questions), initial=summary.already)
    for start in range(0, len(todo), config.batch_size):
        group = todo[start : start + config.batch_size]
        batch, records = _answerable(vlm, group, summary.skipped, config.questions, options)
        generations = vlm.generate_details(records, options, batch_size=config.batch_size)
        log.append([answer_row(q, g, config.model_id, options) for q, g in zip(batch, generations)])
        summary.answered += len(batch)
        summary.truncation.add(g.finish_reason for g in generations)
        bar.update(len(group))
    bar.close()
    return summary


def _answerable(vlm: VLM, questions: list[Question], skipped: dict[str, str], source: Path,
                options: DecodeOptions) -> tuple[list[Question], list]:
    """The questions (of the file `source`) whose image loads and whose prompt the model can take (e.g. as many
    `<image>` marks as images, room for the reply: `VLM.check_room`), with their prompt records; the others are
    noted in `skipped`, so that one skips its question, not the run."""
    from ..data.images import load_images
    from .messages import prompt_record

    kept, images, failed = load_images(questions, lambda question: [] if question.image is None else [question.image])
    skipped.update((str(question.id), str(error)) for question, error in failed)
    answerable, records = [], []
    for question, loaded in zip(kept, images):
        record = replace(prompt_record(loaded[0] if loaded else None, question.text), id=str(question.id),
                         source=str(source))  # what an error names
        try:
            vlm.check_room(record, vlm.prompt_tokens(record), options)
        except DataError as e:
            skipped[str(question.id)] = str(e)
            continue
        answerable.append(question)
        records.append(record)
    return answerable, records


def answer_row(question: Question, reply: Generation, model_id: str, options: DecodeOptions) -> dict:
    return {"question_id": question.id, "prompt": question.text, "text": reply.text, "answer_id": str(uuid.uuid4()),
            "model_id": model_id, "metadata": asdict(options), "finish_reason": reply.finish_reason}


def _progress(total: int, initial: int):
    from ..progress import progress

    return progress(total, initial, desc="predict", unit="question")
