"""GQA (Hudson & Manning 2019): compositional questions about Visual Genome images, one answer each; the balanced
test-dev split, as LLaVA-1.5 and lmms-eval report it.

Files: testdev_balanced_questions.json ({question id: {imageId, question, answer, types: {structural, ...},
isBalanced, ...}}) and the images in images/<imageId>.jpg.
Prompt: LLaVA-1.5's (llava_gqa_testdev_balanced.jsonl of its evaluation data; lmms-eval's gqa.yaml): the question,
then "\\nAnswer the question using a single word or phrase.".
Scoring: GQA's eval.py accuracy over the balanced questions: the prediction equals the answer, as strings, after
LLaVA's scripts/convert_gqa_for_eval.py made it (trailing periods stripped, lowercased); broken down as eval.py does
into binary and open questions (open: structural type "query").
Submission: eval.py's predictions file [{questionId, prediction}], the converted predictions.
Hub: lmms-lab-encoder/GQA (lmms-lab/GQA until lmms-eval moved its datasets), the dataset of lmms-eval's gqa task
(lmms_eval/tasks/gqa/gqa.yaml: config testdev_balanced_instructions, split testdev; utils.py joins the images of
config testdev_balanced_images by id = imageId): the questions with their id, imageId, question, answer, fullAnswer,
isBalanced, types ({structural, semantic, detailed}) and GQA's other fields; the images as {id, image}. Written back
as testdev_balanced_questions.json ({id: the row but its id}) and images/<id>.jpg.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import DataError
from ...files import write_json
from ..metrics import EvalResult
from .base import Benchmark, BenchmarkItem, HubDataset, HubTable
from .hub import save_image, without
from .official import entry, official_json
from .replies import group_means, mean_with_interval, replies_of, write_rows

QUESTIONS = "testdev_balanced_questions.json"
INSTRUCTION = "\nAnswer the question using a single word or phrase."
PUBLISHED = "GQA (cs.stanford.edu/people/dorarad/gqa, questions1.2.zip)"


def read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    questions = official_json("gqa", data_dir, QUESTIONS, PUBLISHED)
    if not isinstance(questions, dict):
        raise DataError(f"{Path(data_dir) / QUESTIONS}: not the object of questions by id {PUBLISHED} publishes")
    items = []
    for question_id, row in questions.items():
        where = f"{Path(data_dir) / QUESTIONS}: question {question_id}"
        if not entry(row, "isBalanced", where):
            continue  # eval.py scores accuracy over the balanced questions only
        structural = entry(entry(row, "types", where), "structural", f"{where}: types")
        items.append(BenchmarkItem(
            id=question_id, image=Path(data_dir) / "images" / f"{entry(row, 'imageId', where)}.jpg",
            prompt=entry(row, "question", where, str) + INSTRUCTION, references=(entry(row, "answer", where),),
            group="open" if structural == "query" else "binary", meta={"structural": structural}))
    return items


def write_from_hub(folder: Path, split: str, tables) -> None:
    """lmms-eval's GQA question and image configs as GQA's questions file and images/."""
    questions, images = tables
    write_json(folder / QUESTIONS, {row["id"]: without(row, "id") for row in questions})
    for row in images:
        save_image(row["image"], folder / "images" / f"{row['id']}.jpg", f"{HUB.id}: image {row['id']}")


HUB = HubDataset("lmms-lab-encoder/GQA", {"testdev": "testdev"},
                 (HubTable("testdev_balanced_instructions", ("id", "imageId", "question", "answer", "isBalanced",
                                                             "types")),
                  HubTable("testdev_balanced_images", ("id", "image"))),
                 write_from_hub)


def prediction(reply: str) -> str:
    """convert_gqa_for_eval.py's prediction from a reply: trailing periods stripped, lowercased."""
    return reply.rstrip(".").lower()


def score(items: Sequence[BenchmarkItem], replies: Mapping[str, str]) -> EvalResult:
    answers = replies_of("gqa", items, replies)
    per_item = {item.id: float(prediction(reply) == item.references[0]) for item, reply in zip(items, answers)}
    accuracy, interval = mean_with_interval(per_item)
    return EvalResult({"accuracy": accuracy}, intervals={"accuracy": interval},
                      details=group_means("accuracy", {item.id: item.group for item in items}, per_item),
                      per_item={"accuracy": per_item})


def write_submission(items: Sequence[BenchmarkItem], replies: Mapping[str, str], folder: Path) -> Path:
    return write_rows("gqa", items, replies, Path(folder) / "testdev_balanced_predictions.json",
                      lambda item, reply: {"questionId": item.id, "prediction": prediction(reply)})


BENCHMARK = Benchmark(
    name="gqa", task="vqa", splits=("testdev",), files=f"{QUESTIONS}, images/",
    prompt_source="LLaVA-1.5 (llava_gqa_testdev_balanced.jsonl; lmms-eval gqa.yaml): question + \"\\nAnswer the "
                  "question using a single word or phrase.\"",
    metric="accuracy: exact match of the prediction (trailing periods stripped, lowercased) with the answer, over "
           "the balanced questions; binary and open",
    reference="GQA eval.py, LLaVA scripts/convert_gqa_for_eval.py", max_new_tokens=128,
    read=read, score=score, write_submission=write_submission, hub=HUB)
