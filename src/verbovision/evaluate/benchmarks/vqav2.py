"""vqav2: VQAv2 open-ended questions on COCO images, val (questions + annotations: scored here) or test-dev
(questions only: the answers file to submit to EvalAI), read from the files visualqa.org publishes.

Prompt: the question, then "\\nAnswer the question using a single word or phrase.", LLaVA-1.5's VQAv2 prompt
(haotian-liu/LLaVA, playground/data/eval/vqav2/llava_vqav2_mscoco_test-dev2015.jsonl, run by
scripts/v1_5/eval/vqav2.sh; lmms-eval's vqav2 task asks the same), greedy, 16 new tokens as lmms-eval's vqav2 task.

Answers: each reply goes through EvalAIAnswerProcessor (m4c's, which LLaVA's scripts/convert_vqav2_for_submission.py
applies before writing the answers file), and that answer is what the submission file holds and what val scores:
VQAv2 accuracy exactly as the official vqaEval.py computes it on a results file, per answer type and question type
too. The submission lists the questions read (test-dev's), in their order.

Hub: lmms-lab-encoder/VQAv2 (lmms-lab/VQAv2 until lmms-eval moved its datasets), the dataset of lmms-eval's vqav2
tasks (lmms_eval/tasks/vqav2/_default_template_vqav2_yaml; vqav2_val.yaml: split validation, vqav2_test.yaml: test;
test-dev is its testdev split): one row per question, columns question_type, multiple_choice_answer, answers
([{answer, answer_confidence, answer_id}]), image_id, answer_type, question_id, question, image, as the dataset card
lists them. Written back as the questions file (and val's annotations file) and <image set>/COCO_<image set>_<id>.jpg.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import DataError
from ...files import write_json
from ..metrics import EvalResult, score
from ..vqa import normalize_textvqa_answer
from .base import Benchmark, BenchmarkItem, HubDataset, HubTable
from .hub import save_image, without
from .official import entries, entry, official_json

SUFFIX = "\nAnswer the question using a single word or phrase."
PUBLISHED = "visualqa.org/download.html"
SUBSETS = {"val": "val2014", "test-dev": "test-dev2015"}
"""Split -> VQAv2's data subtype, as its file names spell it."""
IMAGE_SETS = {"val": "val2014", "test-dev": "test2015"}
"""Split -> the COCO image set its questions ask about (test-dev's images are test2015's)."""


def evalai_answer(reply: str) -> str:
    """EvalAIAnswerProcessor (m4c, copied into LLaVA's llava/eval/m4c_evaluator.py): what LLaVA submits for a reply."""
    return normalize_textvqa_answer(reply)


def _read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    subset = SUBSETS[split]
    name = f"v2_OpenEnded_mscoco_{subset}_questions.json"
    path = Path(data_dir) / name
    questions = entries(official_json("vqav2", data_dir, name, PUBLISHED), "questions", path)
    annotations = _annotations(data_dir) if split == "val" else {}
    items = []
    for i, question in enumerate(questions, 1):
        where = f"{path}: question {i}"
        question_id, image_id = entry(question, "question_id", where), entry(question, "image_id", where, int)
        image = Path(data_dir) / IMAGE_SETS[split] / f"COCO_{IMAGE_SETS[split]}_{image_id:012d}.jpg"
        meta = {"question_id": question_id, "image_id": image_id, "question": entry(question, "question", where, str),
                "split": split}
        answer = annotations.get(question_id)
        if split == "val" and answer is None:
            raise DataError(f"{path}: question_id {question_id} has no annotation in "
                            "v2_mscoco_val2014_annotations.json")
        references = tuple(a["answer"] for a in answer["answers"]) if answer else ()
        if answer:
            meta.update(answer_type=answer["answer_type"], question_type=answer["question_type"])
        items.append(BenchmarkItem(str(question_id), image, meta["question"] + SUFFIX, references,
                                   answer["answer_type"] if answer else "", meta))
    return items


def _annotations(data_dir: Path) -> dict:
    """question_id -> its annotation (answers, answer_type, question_type), each checked."""
    name = "v2_mscoco_val2014_annotations.json"
    path = Path(data_dir) / name
    by_question = {}
    for i, annotation in enumerate(entries(official_json("vqav2", data_dir, name, PUBLISHED), "annotations", path), 1):
        where = f"{path}: annotation {i}"
        for key in ("answer_type", "question_type"):
            entry(annotation, key, where)
        answers = entry(annotation, "answers", where, list)
        for j, answer in enumerate(answers, 1):
            entry(answer, "answer", f"{where}: answer {j}", str)
        by_question[entry(annotation, "question_id", where)] = annotation
    return by_question


def _write_from_hub(folder: Path, split: str, tables) -> None:
    """lmms-eval's VQAv2 rows as visualqa.org's questions file (val: and annotations file) and the COCO images."""
    questions, annotations = [], []
    image_set = IMAGE_SETS[split]
    for row in tables[0]:
        save_image(row["image"], folder / image_set / f"COCO_{image_set}_{row['image_id']:012d}.jpg",
                   f"{HUB.id}: question {row['question_id']}")
        questions.append({key: row[key] for key in ("image_id", "question", "question_id")})
        annotations.append(without(row, "image", "question"))
    write_json(folder / f"v2_OpenEnded_mscoco_{SUBSETS[split]}_questions.json", {"questions": questions})
    if split == "val":
        write_json(folder / "v2_mscoco_val2014_annotations.json", {"annotations": annotations})


HUB = HubDataset("lmms-lab-encoder/VQAv2", {"val": "validation", "test-dev": "testdev"},
                 (HubTable(None, ("image_id", "question_id", "question", "image"),
                           {"val": ("answers", "answer_type", "question_type")}),),
                 _write_from_hub)


def _score(items: Sequence[BenchmarkItem], replies: Mapping[str, str]) -> EvalResult:
    if not items[0].references:
        return EvalResult({}, skipped={"vqa": f"no public answers; submit {_file_name(items)} to EvalAI "
                                              "(eval.ai, VQA Challenge, test-dev phase)"})
    types = {name: {item.id: item.meta[name] for item in items} for name in ("answer_type", "question_type")}
    return score({item.id: evalai_answer(replies[item.id]) for item in items},
                 {item.id: list(item.references) for item in items}, ["vqa"], types=types)


def _file_name(items: Sequence[BenchmarkItem]) -> str:
    """VQA's results file name: vqa_OpenEnded_mscoco_<subtype>_<algorithm>_results.json."""
    return f"vqa_OpenEnded_mscoco_{SUBSETS[items[0].meta['split']]}_verbo_results.json"


def _write_submission(items: Sequence[BenchmarkItem], replies: Mapping[str, str], folder: Path) -> Path:
    path = Path(folder) / _file_name(items)
    write_json(path, [{"question_id": item.meta["question_id"], "answer": evalai_answer(replies[item.id])}
                      for item in items])
    return path


BENCHMARK = Benchmark(
    name="vqav2",
    task="vqa",
    splits=("val", "test-dev"),
    files=("v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json and val2014/; test-dev: "
           f"v2_OpenEnded_mscoco_test-dev2015_questions.json and test2015/ ({PUBLISHED}, images.cocodataset.org)"),
    prompt_source=('question + "\\nAnswer the question using a single word or phrase.": LLaVA-1.5\'s VQAv2 prompt '
                   "(scripts/v1_5/eval/vqav2.sh, llava_vqav2_mscoco_test-dev2015.jsonl), as lmms-eval's vqav2; "
                   "greedy, 16 new tokens as lmms-eval"),
    metric=("VQAv2 accuracy (min(1, matching humans / 3) over the 10 leave-one-out subsets) of the EvalAI-processed "
            "answer, overall and per answer type and question type; test-dev: the submission file only"),
    reference="vqaEval.py (GT-Vision-Lab/VQA) on the answers file LLaVA's convert_vqav2_for_submission.py writes",
    max_new_tokens=16,
    read=_read,
    score=_score,
    write_submission=_write_submission,
    hub=HUB,
)
