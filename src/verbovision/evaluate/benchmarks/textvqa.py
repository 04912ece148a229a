"""TextVQA (Singh et al. 2019): questions that need the text in the image read, 10 human answers each.

Files: TextVQA_0.5.1_val.json ({"data": [{question_id, question, image_id, answers, ...}]}) and the images in
train_images/<image_id>.jpg (the val images are in train_val_images.zip's train_images/); split "val-ocr" also reads
llava_textvqa_val_v051_ocr.jsonl of LLaVA's evaluation data (eval.zip: JSON lines {question_id, image, text}).
Prompt: "val" sends LLaVA-1.5's short-answer prompt, the question then "\\nAnswer the question using a single word or
phrase." (LLaVA-1.5's response-format prompt; eval_textvqa.py reads back this two-line form); "val-ocr" sends
LLaVA's own prompt of each question verbatim, where the OCR tokens come between ("<question>\\nReference OCR token:
<tokens>\\nAnswer the question using a single word or phrase."), the prompt of LLaVA-1.5's reported TextVQA numbers.
LLaVA's file names each question by its image (its question_id is the image_id), so prompts are matched to questions
as eval_textvqa.py matches its results: by image id and lowercased question.
Scoring: TextVQA accuracy as m4c's TextVQAAccuracyEvaluator (LLaVA's eval_textvqa.py): ``vqa.textvqa_accuracy``.
Submission: EvalAI's [{question_id, answer}], the answers EvalAI-processed as lmms-eval's textvqa submission.
Hub: lmms-lab-encoder/textvqa (lmms-lab/textvqa until lmms-eval moved its datasets), the dataset of lmms-eval's
textvqa_val task (lmms_eval/tasks/textvqa/_default_template_textvqa_yaml, textvqa_val.yaml: split validation): one row
per question, columns image_id, question_id, question, question_tokens, image, image_width, image_height,
flickr_original_url, flickr_300k_url, answers, image_classes, set_name, ocr_tokens, as the dataset card lists them.
Written back as TextVQA_0.5.1_val.json (each row but its image) and train_images/<image_id>.jpg. Split val only: the
prompts of val-ocr are LLaVA's file, which no hub dataset carries (the rows' ocr_tokens are TextVQA's own OCR, not
the tokens LLaVA's prompts quote).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import DataError
from ...files import write_json
from ..metrics import EvalResult, bootstrap_ci
from ..vqa import normalize_textvqa_answer, score_vqa
from .base import Benchmark, BenchmarkItem, HubDataset, HubTable
from .hub import rows_saving_images
from .official import entries, entry, official_json
from .replies import jsonl_rows, replies_of, write_rows

ANNOTATIONS = "TextVQA_0.5.1_val.json"
LLAVA_PROMPTS = "llava_textvqa_val_v051_ocr.jsonl"
INSTRUCTION = "\nAnswer the question using a single word or phrase."
PUBLISHED = "TextVQA (textvqa.org/dataset)"
LLAVA_PUBLISHED = "LLaVA's evaluation data (eval.zip, textvqa/)"
OCR_LINE = "Reference OCR token:"


def read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    path = Path(data_dir) / ANNOTATIONS
    rows = entries(official_json("textvqa", data_dir, ANNOTATIONS, PUBLISHED), "data", path)
    llava_prompts = _llava_prompts(Path(data_dir) / LLAVA_PROMPTS) if split == "val-ocr" else None
    items = []
    for number, row in enumerate(rows):
        where = f"{path}: data[{number}]"
        question, image_id = entry(row, "question", where, str), entry(row, "image_id", where)
        if llava_prompts is None:
            prompt = question + INSTRUCTION
        elif (prompt := llava_prompts.get((str(image_id), question.lower()))) is None:
            raise DataError(f"{LLAVA_PROMPTS}: no prompt for image {image_id} and question {question!r} of "
                            f"{ANNOTATIONS}; use the file of {LLAVA_PUBLISHED} for TextVQA 0.5.1 val")
        items.append(BenchmarkItem(
            id=str(entry(row, "question_id", where)), image=Path(data_dir) / "train_images" / f"{image_id}.jpg",
            prompt=prompt, references=tuple(entry(row, "answers", where, list)),
            meta={"question_id": row["question_id"], "image_id": image_id, "question": question}))
    return items


def _llava_prompts(path: Path) -> dict[tuple[str, str], str]:
    """(image id, lowercased question) -> LLaVA's prompt; the question is the line that is neither the OCR tokens
    nor the instruction, as eval_textvqa.py's prompt_processor finds it."""
    prompts = {}
    for number, row in enumerate(jsonl_rows("textvqa", path, LLAVA_PUBLISHED), 1):
        text = entry(row, "text", f"{path}:{number}")
        lines = text.split("\n")
        question = lines[1] if lines[0].startswith(OCR_LINE) and len(lines) > 1 else lines[0]
        prompts[(str(entry(row, "question_id", f"{path}:{number}")), question.lower())] = text
    return prompts


def write_from_hub(folder: Path, split: str, tables) -> None:
    """lmms-eval's TextVQA rows as TextVQA_0.5.1_val.json and the train_images/ they ask about."""
    rows = rows_saving_images(tables[0], folder / "train_images", HUB.id)
    write_json(folder / ANNOTATIONS, {"dataset_name": "textvqa", "dataset_version": "0.5.1", "dataset_type": "val",
                                      "data": rows})


HUB = HubDataset("lmms-lab-encoder/textvqa", {"val": "validation"},
                 (HubTable(None, ("image_id", "question_id", "question", "answers", "image")),), write_from_hub)


def score(items: Sequence[BenchmarkItem], replies: Mapping[str, str]) -> EvalResult:
    answers = replies_of("textvqa", items, replies)
    # score_vqa sums the items as m4c's sum() does (left to right), the float `verbo score --metrics textvqa` gives
    scores = score_vqa({item.id: reply for item, reply in zip(items, answers)},
                       {item.id: item.references for item in items}, kind="textvqa")
    return EvalResult({"accuracy": scores.mean}, intervals={"accuracy": bootstrap_ci(scores.per_item)},
                      per_item={"accuracy": scores.per_item})


def write_submission(items: Sequence[BenchmarkItem], replies: Mapping[str, str], folder: Path) -> Path:
    return write_rows("textvqa", items, replies, Path(folder) / "textvqa_submission.json",
                      lambda item, reply: {"question_id": item.meta["question_id"],
                                           "answer": normalize_textvqa_answer(reply)})


BENCHMARK = Benchmark(
    name="textvqa", task="vqa", splits=("val", "val-ocr"),
    files=f"{ANNOTATIONS}, train_images/; val-ocr also {LLAVA_PROMPTS} (LLaVA's eval.zip)",
    prompt_source="LLaVA-1.5: question + \"\\nAnswer the question using a single word or phrase.\"; val-ocr: "
                  "LLaVA's llava_textvqa_val_v051_ocr.jsonl prompts, with \"Reference OCR token: ...\"",
    metric="TextVQA accuracy (m4c TextVQAAccuracyEvaluator: EvalAI answer processing, min(1, matches/3) averaged "
           "over the 10 leave-one-out answer sets)",
    reference="LLaVA llava/eval/eval_textvqa.py (m4c_evaluator.py)", max_new_tokens=128,
    read=read, score=score, write_submission=write_submission, hub=HUB)
