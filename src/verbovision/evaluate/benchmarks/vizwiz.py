"""VizWiz-VQA (Gurari et al. 2018): questions blind people asked about the photos they took, 10 crowd answers each,
many of them "unanswerable".

Files: Annotations/val.json ([{image, question, answers: [{answer, answer_confidence}], answer_type, answerable}])
and the images in val/; split "test": Annotations/test.json (no answers: only the submission file) and test/.
Prompt: LLaVA-1.5's (llava_test.jsonl of its evaluation data; lmms-eval's vizwiz_vqa): the question, then
"\\nWhen the provided information is insufficient, respond with 'Unanswerable'.\\nAnswer the question using a single
word or phrase.".
Submission: [{image, answer}], each reply EvalAI-processed as LLaVA's scripts/convert_vizwiz_for_submission.py does.
Scoring: the VizWiz API's vqaEval.py, as the evaluation server applies it to that file: the submitted answer goes
through vqaEval.py's punctuation, digit and article steps (Python 3 semantics; its contraction table writes most
apostrophes as U+2019) and is compared with the human answers as they are in val.json (those are not normalised):
accuracy = the mean over annotators of min(1, matching other answers / 3). Broken down by answer_type and by
answerable / unanswerable; its unanswerability measures too: average precision and F1 of predicting "unanswerable"
(the processed answer is "unanswerable") for the unanswerable questions, as sklearn's average_precision_score and
f1_score compute them on those 0/1 predictions.
Hub: none. lmms-eval's lmms-lab-encoder/VizWiz-VQA (vizwiz_vqa/_default_template_vqa_yaml, splits val and test:
question_id, image, question, answers, category) has no answerable flag, which the answerable / unanswerable
breakdown and the unanswerability measures need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import DataError
from ..metrics import EvalResult
from ..vqa import normalize_textvqa_answer, normalize_vizwiz_answer, vizwiz_accuracy
from .base import Benchmark, BenchmarkItem
from .official import entry, official_json
from .replies import group_means, mean_with_interval, replies_of, write_rows

INSTRUCTION = ("\nWhen the provided information is insufficient, respond with 'Unanswerable'."
               "\nAnswer the question using a single word or phrase.")
PUBLISHED = "VizWiz (vizwiz.org, Annotations.zip)"
UNANSWERABLE = "unanswerable"

def read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    name = f"Annotations/{split}.json"
    rows = official_json("vizwiz", data_dir, name, PUBLISHED)
    if not isinstance(rows, list):
        raise DataError(f"{Path(data_dir) / name}: not the list of questions {PUBLISHED} publishes")
    items = []
    for number, row in enumerate(rows):
        where = f"{Path(data_dir) / name}[{number}]"
        image, question = entry(row, "image", where, str), entry(row, "question", where, str)
        labelled = split != "test"
        answers = tuple(entry(a, "answer", f"{where}.answers") for a in entry(row, "answers", where)) if labelled \
            else ()
        answerable = bool(entry(row, "answerable", where)) if labelled else True
        items.append(BenchmarkItem(
            id=image, image=Path(data_dir) / split / image, prompt=question + INSTRUCTION, references=answers,
            group=("answerable" if answerable else UNANSWERABLE) if labelled else "",
            meta={"question": question, "answer_type": entry(row, "answer_type", where) if labelled else ""}))
    return items


def submitted_answer(reply: str) -> str:
    return normalize_textvqa_answer(reply)


def unanswerability(predicted: Sequence[bool], truth: Sequence[bool]) -> dict[str, float]:
    """Average precision and F1 of 0/1 predictions of the positive class (sklearn's rules: AP sums precision over
    the recall gained at each threshold, here 1 then 0; without positives AP is undefined and F1 is 0)."""
    positives, total = sum(truth), len(truth)
    true_positives = sum(p and t for p, t in zip(predicted, truth))
    predicted_positives = sum(predicted)
    if not positives:
        return {"unanswerable_ap": float("nan"), "unanswerable_f1": 0.0}
    recall_at_1 = true_positives / positives
    precision_at_1 = true_positives / predicted_positives if predicted_positives else 0.0
    ap = recall_at_1 * precision_at_1 + (1 - recall_at_1) * positives / total
    return {"unanswerable_ap": ap, "unanswerable_f1": 2 * true_positives / (predicted_positives + positives)}


def score(items: Sequence[BenchmarkItem], replies: Mapping[str, str]) -> EvalResult:
    if any(not item.references for item in items):
        raise DataError("vizwiz: the test split publishes no answers; submit the file written with the replies to "
                        "the VizWiz evaluation server (EvalAI)")
    submitted = [submitted_answer(reply) for reply in replies_of("vizwiz", items, replies)]
    per_item = {item.id: vizwiz_accuracy(answer, item.references) for item, answer in zip(items, submitted)}
    accuracy, interval = mean_with_interval(per_item)
    details = {**group_means("accuracy", {item.id: item.group for item in items}, per_item),
               **group_means("accuracy", {item.id: f"answer_type={item.meta['answer_type']}" for item in items},
                             per_item)}
    predicted = [normalize_vizwiz_answer(answer) == UNANSWERABLE for answer in submitted]
    values = {"accuracy": accuracy, **unanswerability(predicted, [item.group == UNANSWERABLE for item in items])}
    return EvalResult(values, intervals={"accuracy": interval}, details=details, per_item={"accuracy": per_item})


def write_submission(items: Sequence[BenchmarkItem], replies: Mapping[str, str], folder: Path) -> Path:
    return write_rows("vizwiz", items, replies, Path(folder) / "vizwiz_submission.json",
                      lambda item, reply: {"image": item.id, "answer": submitted_answer(reply)})


BENCHMARK = Benchmark(
    name="vizwiz", task="vqa", splits=("val", "test"),
    files="Annotations/val.json and val/ (test: Annotations/test.json and test/)",
    prompt_source="LLaVA-1.5 (llava_test.jsonl; lmms-eval vizwiz_vqa): question + \"\\nWhen the provided "
                  "information is insufficient, respond with 'Unanswerable'.\\nAnswer the question using a single "
                  "word or phrase.\"",
    metric="VizWiz accuracy (the VizWiz API's vqaEval.py on the EvalAI-processed answer: min(1, matches/3) "
           "leave-one-out against the raw human answers), per answer type and answerable/unanswerable; "
           "unanswerability average precision and F1",
    reference="VizWiz API vqaEval.py (evaluation server); LLaVA scripts/convert_vizwiz_for_submission.py",
    max_new_tokens=128, read=read, score=score, write_submission=write_submission)
