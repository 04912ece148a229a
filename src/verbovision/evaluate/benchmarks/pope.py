"""POPE (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models"): yes/no questions "Is
there a <object> in the image?" about COCO val2014 images, in three subsets whose absent objects are drawn at random,
among the most frequent COCO objects (popular) or among those that co-occur most with the present ones (adversarial).

Files (AoiDragon/POPE, output/coco/): coco_pope_random.json, coco_pope_popular.json, coco_pope_adversarial.json, each
JSON lines {question_id, image, text, label}, and the COCO val2014 images in val2014/.
Prompt: LLaVA-1.5's (llava_pope_test.jsonl of its evaluation data; lmms-eval's pope.yaml): the question, then
"\\nAnswer the question using a single word or phrase.".
Scoring: LLaVA's llava/eval/eval_pope.py (the same rule as POPE's evaluate.py), per subset: a reply is "no" when its
first sentence (the text before the first ".", commas removed, split on single spaces) has the word "No", "no" or
"not", else "yes"; a label other than "no" counts as yes. Accuracy, precision, recall and F1 of "yes", and the ratio
of "yes" replies. The overall values are the means over the three subsets, as LLaVA-1.5 reports POPE; precision and
F1 are undefined (nan) where nothing is answered "yes" (eval_pope.py divides by zero there).

Hub: lmms-lab-encoder/POPE (lmms-lab/POPE until lmms-eval moved its datasets), the dataset lmms-eval's pope task
reads (lmms_eval/tasks/pope/pope.yaml: default config, split test; utils.py reads question, answer, image): one row
per question of the three subsets, columns id, question_id (a string), question, answer, image_source (the COCO file
name's stem), image, category (the subset), as the dataset card lists them. Written back as the three files, in the
rows' order, each question_id as its number, and val2014/<image_source>.jpg.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...files import write_atomic
from ..metrics import EvalResult, bootstrap_ci
from .base import Benchmark, BenchmarkItem, HubDataset, HubTable
from .hub import save_image
from .official import entry
from .replies import jsonl_rows, mean, replies_of

SUBSETS = ("random", "popular", "adversarial")
INSTRUCTION = "\nAnswer the question using a single word or phrase."
PUBLISHED = "POPE (github.com/AoiDragon/POPE, output/coco/)"
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    items = []
    for subset in SUBSETS:
        path = Path(data_dir) / f"coco_pope_{subset}.json"
        for number, row in enumerate(jsonl_rows("pope", path, PUBLISHED), 1):
            where = f"{path}:{number}"
            question = entry(row, "text", where, str)
            items.append(BenchmarkItem(
                id=f"{subset}/{entry(row, 'question_id', where)}",
                image=Path(data_dir) / "val2014" / entry(row, "image", where),
                prompt=question + INSTRUCTION, references=(entry(row, "label", where),), group=subset,
                meta={"question_id": row["question_id"], "question": question}))
    return items


def write_from_hub(folder: Path, split: str, tables) -> None:
    """lmms-eval's POPE rows as POPE's three JSON lines files and the COCO images they ask about."""
    by_subset: dict[str, list[dict]] = {subset: [] for subset in SUBSETS}
    for row in tables[0]:
        image = f"{row['image_source']}.jpg"
        save_image(row["image"], folder / "val2014" / image, f"{HUB.id}: question {row['question_id']}")
        question_id = int(row["question_id"]) if str(row["question_id"]).isdigit() else row["question_id"]
        by_subset.setdefault(row["category"], []).append(
            {"question_id": question_id, "image": image, "text": row["question"], "label": row["answer"]})
    for subset, rows in by_subset.items():
        write_atomic(folder / f"coco_pope_{subset}.json", "".join(json.dumps(row) + "\n" for row in rows))


HUB = HubDataset("lmms-lab-encoder/POPE", {"test": "test"},
                 (HubTable(None, ("question_id", "question", "answer", "image_source", "image", "category")),),
                 write_from_hub)


def says_no(reply: str) -> bool:
    """eval_pope.py's reading of a reply: "no" when its first sentence has the word "No", "no" or "not"."""
    words = reply.split(".")[0].replace(",", "").split(" ")
    return "No" in words or "not" in words or "no" in words


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def subset_scores(predicted_yes: Sequence[bool], labelled_yes: Sequence[bool]) -> dict[str, float]:
    pairs = list(zip(predicted_yes, labelled_yes))
    tp = sum(p and y for p, y in pairs)
    fp = sum(p and not y for p, y in pairs)
    fn = sum(y and not p for p, y in pairs)
    tn = len(pairs) - tp - fp - fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else float("nan")
    return {"accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(predicted_yes) / len(pairs)}


def score(items: Sequence[BenchmarkItem], replies: Mapping[str, str]) -> EvalResult:
    answers = replies_of("pope", items, replies)
    predicted_yes = {item.id: not says_no(reply) for item, reply in zip(items, answers)}
    correct = {item.id: float(predicted_yes[item.id] == (item.references[0] != "no")) for item in items}
    by_subset = {}
    for subset in dict.fromkeys(item.group for item in items):
        members = [item for item in items if item.group == subset]
        by_subset[subset] = subset_scores([predicted_yes[m.id] for m in members],
                                          [m.references[0] != "no" for m in members])
    values = {metric: mean([scores[metric] for scores in by_subset.values()]) for metric in METRICS}
    details = {f"{metric}[{subset}]": scores[metric] for subset, scores in by_subset.items() for metric in METRICS}
    # The mean of the subsets' accuracies is the per-item mean when the subsets are of one size (3000 in POPE's
    # files): then its interval is the per-item bootstrap.
    equal_sizes = math.isclose(values["accuracy"], mean(list(correct.values())), rel_tol=1e-12)
    intervals = {"accuracy": bootstrap_ci(correct)} if equal_sizes else {}
    return EvalResult(values, intervals=intervals, details=details, per_item={"accuracy": correct})


def write_submission(items: Sequence[BenchmarkItem], replies: Mapping[str, str], folder: Path) -> Path:
    """LLaVA's answer file, one per subset merged: JSON lines {question_id, prompt, text, category} in the order of
    the items, "category" the subset (what eval_pope.py reads back)."""
    answers = replies_of("pope", items, replies)
    path = Path(folder) / "pope_answers.jsonl"
    rows = [{"question_id": item.meta["question_id"], "prompt": item.prompt, "text": reply, "category": item.group}
            for item, reply in zip(items, answers)]
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


BENCHMARK = Benchmark(
    name="pope", task="vqa", splits=("test",),
    files="coco_pope_random.json, coco_pope_popular.json, coco_pope_adversarial.json (JSON lines), val2014/",
    prompt_source="LLaVA-1.5 (llava_pope_test.jsonl; lmms-eval pope.yaml): question + \"\\nAnswer the question "
                  "using a single word or phrase.\"",
    metric="accuracy, precision, recall, F1 and yes-ratio per subset (LLaVA eval_pope.py's yes/no reading), "
           "overall the mean of the three subsets",
    reference="LLaVA llava/eval/eval_pope.py (POPE evaluate.py)", max_new_tokens=128,
    read=read, score=score, write_submission=write_submission, hub=HUB)
