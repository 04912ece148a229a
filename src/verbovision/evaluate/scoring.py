"""`verbo score`: the scoring alone, on our predictions JSONL, on LLaVA answers JSONL or VQAv2 results (+ VQAv2
annotations, TextVQA data or records with answers), or on COCO caption results (+ COCO annotations)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..files import read_json
from .metrics import EvalResult, score
from .report import write_eval_folder

PREDICTION_FORMATS = {
    "ours": "our predictions JSONL (id, prediction, references)",
    "llava": "LLaVA answers JSONL (question_id, text)",
    "vqa_results": "VQAv2 results JSON ([{question_id, answer}])",
    "coco": "COCO caption results JSON ([{image_id, caption}])",
}
REFERENCE_FORMATS = ("VQAv2 annotations JSON ({annotations: [{question_id, question_type, answer_type, answers: "
                     "[{answer, answer_id}]}]}), TextVQA JSON ({data: [{question_id, answers: [10 strings]}]}), "
                     "JSON/JSONL records with question_id and answers (strings) or answer, or COCO caption "
                     "annotations JSON ({annotations: [{image_id, caption}]})")


@dataclass
class ScoreInputs:
    """What `verbo score` scores, by id, in the order the official scorers take the items."""

    predictions: dict
    references: dict
    types: dict[str, dict] = field(default_factory=dict)
    """Type name ("answer_type", "question_type") -> id -> type, where the references give them."""
    rows: dict = field(default_factory=dict)
    """id -> the record as our predictions file has it (image, prompt, finish_reason... kept when written again)."""
    unscored: int = 0
    """Items of the references file without a prediction (a results file may cover part of it)."""
    cut: int = 0
    """Predictions whose finish_reason is "length": cut at max_new_tokens."""


def _read_json_or_jsonl(path: Path) -> list | dict:
    if not path.is_file():
        raise DataError(f"{path}: {'not a file' if path.exists() else 'file not found'}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte order mark is no JSON error
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); expected JSON or JSONL") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: invalid JSON: {e.msg}") from None
        return rows


def _objects(data, path: Path, what: str) -> list[dict]:
    """`data` as a non-empty list of JSON objects (one object counts as a list of one)."""
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected {what}, found {'nothing' if rows in ([], {}) else type(rows).__name__}")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i}: expected a JSON object, found {type(row).__name__}")
    return rows


def _field(row: dict, key: str, types: type | tuple[type, ...], where: str, expected: str):
    """row[key], or a DataError saying what `where` should hold."""
    value = row.get(key)
    if not isinstance(value, types) or isinstance(value, bool):
        found = "none" if key not in row else json.dumps(value, ensure_ascii=False)[:40]
        raise DataError(f"{where}: expected {key!r} ({expected}), found {found}")
    return value


def _question_id(row: dict, where: str):
    return _field(row, "question_id", (int, str), where, "an integer or a string")


def load_predictions(path: str | Path, refs: str | Path | None = None, refs_optional: bool = False) -> ScoreInputs:
    """Predictions and their references from one of PREDICTION_FORMATS (+ one of REFERENCE_FORMATS). `refs` given
    for our predictions, which carry their own, is an error unless `refs_optional` (a --compare file, where the
    --refs are PREDICTIONS')."""
    path = Path(path)
    rows = _objects(_read_json_or_jsonl(path), path, "a list of predictions")
    inputs = _inputs(rows, path, refs, refs_optional)
    # verbo eval's and verbo predict's rows say which replies hit max_new_tokens
    inputs.cut = sum(row.get("finish_reason") == "length" for row in rows)
    return inputs


def _inputs(rows: list[dict], path: Path, refs: str | Path | None, refs_optional: bool) -> ScoreInputs:
    kind = _prediction_format(rows[0], path)
    if kind == "ours":
        if refs is not None and not refs_optional:
            raise DataError(f"{path}: our predictions carry their references; drop --refs")
        return _ours(rows, path)
    if refs is None:
        raise DataError(f"{path}: {PREDICTION_FORMATS[kind]} carry no references; pass --refs")
    refs = Path(refs)
    ref_data = _read_json_or_jsonl(refs)
    if kind == "coco":
        return _coco(rows, ref_data, path, refs)
    return _answers(rows, "answer" if kind == "vqa_results" else "text", _answer_references(ref_data, refs),
                    path, refs)


def _prediction_format(first: dict, path: Path) -> str:
    if "prediction" in first:
        return "ours"
    if "image_id" in first and "caption" in first:
        return "coco"
    if "question_id" in first and ("answer" in first or "text" in first):
        return "vqa_results" if "answer" in first else "llava"
    raise DataError(f"{path}: record 1: unrecognised predictions format; expected "
                    + ", ".join(PREDICTION_FORMATS.values()))


def _ours(rows: list[dict], path: Path) -> ScoreInputs:
    predictions, references, by_id = {}, {}, {}
    for i, row in enumerate(rows, 1):
        where = f"{path}: record {i}"
        key = _field(row, "id", (int, str), where, "an integer or a string")
        if key in predictions:
            raise DataError(f"{where}: id {key!r} appears twice")
        predictions[key] = _field(row, "prediction", str, where, "a string")
        references[key] = _strings(_field(row, "references", list, where, "a list of strings"), where)
        by_id[key] = row
    return ScoreInputs(predictions, references, rows=by_id)


def _strings(values: list, where: str) -> list[str]:
    if not values or not all(isinstance(v, str) for v in values):
        raise DataError(f"{where}: expected a non-empty list of reference strings, found "
                        f"{json.dumps(values, ensure_ascii=False)[:60]}")
    return values


def _coco(results: list[dict], annotations, path: Path, refs: Path) -> ScoreInputs:
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise DataError(f"{refs}: expected COCO caption annotations with an 'annotations' list")
    references: dict = {}
    for i, ann in enumerate(_objects(annotations["annotations"], refs, "caption annotations"), 1):
        where = f"{refs}: annotation {i}"
        image_id = _field(ann, "image_id", (int, str), where, "an integer or a string")
        references.setdefault(image_id, []).append(_field(ann, "caption", str, where, "a string"))
    captions: dict = {}
    for i, row in enumerate(results, 1):
        where = f"{path}: record {i}"
        image_id = _field(row, "image_id", (int, str), where, "an integer or a string")
        caption = _field(row, "caption", str, where, "a string")
        if image_id not in references:
            raise DataError(f"{where}: image_id {image_id!r} has no references in {refs}")
        if image_id in captions:
            raise DataError(f"{where}: image_id {image_id!r} has more than one caption; COCO scores one")
        captions[image_id] = caption
    order = _coco_order(annotations, captions, refs)
    return ScoreInputs({k: captions[k] for k in order}, {k: references[k] for k in order},
                       unscored=len(references) - len(order))


def _coco_order(annotations: dict, captions: dict, refs: Path) -> list:
    """COCOEvalCap scores images in the order of the annotation file's image list (when it has one)."""
    images = annotations.get("images")
    if not isinstance(images, list) or not images:
        return list(captions)
    ids = [img.get("id") if isinstance(img, dict) else None for img in images]
    listed = {i for i in ids if isinstance(i, (int, str))}
    unlisted = [k for k in captions if k not in listed][:5]
    if unlisted:
        raise DataError(f"{refs}: image_id {unlisted} not in its 'images' list (COCOEvalCap refuses such results)")
    return [i for i in ids if isinstance(i, (int, str)) and i in captions]


@dataclass
class _AnswerKey:
    answers: dict
    """question_id -> the human answers, in the references file's order."""
    types: dict[str, dict] = field(default_factory=dict)
    by_image_question: dict = field(default_factory=dict)
    """TextVQA: (image_id, lowercased question) -> question_id, how LLaVA's eval_textvqa.py finds the question of an
    answer: LLaVA's TextVQA answers name the image in their question_id."""


def _answer_references(data, refs: Path) -> _AnswerKey:
    if isinstance(data, dict) and "annotations" in data:
        return _vqa_annotations(data["annotations"], refs)
    if isinstance(data, dict) and "questions" in data:
        raise DataError(f"{refs}: a VQAv2 questions file holds no answers; pass the annotations file "
                        "(e.g. v2_mscoco_val2014_annotations.json) as --refs")
    if isinstance(data, dict) and "data" in data:
        return _textvqa(data["data"], refs)
    if isinstance(data, list):
        return _answer_records(data, refs)
    raise DataError(f"{refs}: unrecognised references format; expected {REFERENCE_FORMATS}")


def _vqa_annotations(annotations, refs: Path) -> _AnswerKey:
    rows = _objects(annotations, refs, "a non-empty 'annotations' list")
    if "caption" in rows[0]:
        raise DataError(f"{refs}: COCO caption annotations score COCO caption results (image_id, caption), "
                        "not answers")
    key = _AnswerKey({}, {"answer_type": {}, "question_type": {}})
    for i, ann in enumerate(rows, 1):
        where = f"{refs}: annotation {i}"
        qid = _question_id(ann, where)
        where += f" (question_id {qid!r})"
        records = _field(ann, "answers", list, where, "a list of {answer, answer_id} objects")
        answers = [_answer_text(record, f"{where}: answer {j}") for j, record in enumerate(records, 1)]
        _add(key.answers, qid, _strings(answers, where), where)
        _check_distinct_annotators(records, where)
        for name in key.types:  # vqaEval.py reads both for every question
            key.types[name][qid] = _field(ann, name, str, where, "a string")
    return key


def _answer_text(record, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an {{answer, answer_id}} object, found {json.dumps(record)[:40]}")
    return _field(record, "answer", str, where, "a string")


def _check_distinct_annotators(records: list[dict], where: str) -> None:
    """vqaEval.py leaves an annotator out by removing every answer record equal to theirs, so records that could
    become equal (the same but for the answer text, e.g. no answer_id) would leave out several annotators at once."""
    seen: dict[str, int] = {}
    for j, record in enumerate(records, 1):
        rest = json.dumps({k: v for k, v in record.items() if k != "answer"}, sort_keys=True)
        if rest in seen:
            raise DataError(f"{where}: answers {seen[rest]} and {j} differ only in their text; vqaEval.py tells "
                            "annotators apart by their whole answer record: give each answer its own answer_id")
        seen[rest] = j


def _textvqa(data, refs: Path) -> _AnswerKey:
    key = _AnswerKey({})
    for i, row in enumerate(_objects(data, refs, "a non-empty 'data' list"), 1):
        where = f"{refs}: data record {i}"
        qid = _question_id(row, where)
        where += f" (question_id {qid!r})"
        answers = row.get("answers")
        if not isinstance(answers, list) or not answers:
            found = "none" if answers is None else json.dumps(answers)[:40]
            raise DataError(f"{where}: expected 'answers' (the human answers, as strings), found {found} "
                            "(TextVQA's test split has none)")
        _add(key.answers, qid, _strings(answers, where), where)
        if isinstance(row.get("image_id"), str) and isinstance(row.get("question"), str):
            key.by_image_question[(row["image_id"], row["question"].lower())] = qid  # the last one, as LLaVA's dict
    return key


def _llava_textvqa_question(prompt) -> str | None:
    """The lowercased question in the prompt of one of LLaVA's TextVQA answers, found as eval_textvqa.py's
    prompt_processor finds it (None where that asserts)."""
    if not isinstance(prompt, str):
        return None
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        return match.group(1).lower() if match else None
    if "Reference OCR token: " in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    return lines[0].lower() if len(lines) == 2 else None


def _answer_records(data: list, refs: Path) -> _AnswerKey:
    """JSON/JSONL records with question_id and `answers` (strings or {answer} objects) or `answer`."""
    key = _AnswerKey({})
    for i, row in enumerate(_objects(data, refs, "records with question_id and answers"), 1):
        where = f"{refs}: record {i}"
        qid = _question_id(row, where)
        where += f" (question_id {qid!r})"
        if "answers" in row:
            values = row["answers"] if isinstance(row["answers"], list) else None
            answers = [v.get("answer") if isinstance(v, dict) else v for v in values or []]
            _add(key.answers, qid, _strings(answers, f"{where}: 'answers'"), where)
        elif "answer" in row:
            _add(key.answers, qid, [_field(row, "answer", str, where, "a string")], where)
        else:
            raise DataError(f"{where}: no 'answer' or 'answers' to score against (a questions file without "
                            "answers?)")
    return key


def _add(answers: dict, qid, value: list[str], where: str) -> None:
    if qid in answers:
        raise DataError(f"{where}: question_id {qid!r} appears twice")
    answers[qid] = value


def _answers(rows: list[dict], text_key: str, key: _AnswerKey, path: Path, refs: Path) -> ScoreInputs:
    predictions: dict = {}
    for i, row in enumerate(rows, 1):
        where = f"{path}: record {i}"
        qid = _question_id(row, where)
        if qid not in key.answers and key.by_image_question:  # LLaVA's TextVQA answers: image id and prompt
            qid = key.by_image_question.get((qid, _llava_textvqa_question(row.get("prompt"))), qid)
        text = _field(row, text_key, str, where, "a string")
        if qid in predictions:
            raise DataError(f"{where}: question_id {qid!r} has more than one answer")
        if qid not in key.answers:
            hint = _id_type_hint(qid, key.answers) or _image_question_hint(qid, row.get("prompt"), key)
            raise DataError(f"{where}: question_id {qid!r} has no answers in {refs}{hint}")
        predictions[qid] = text
    # vqaEval.py takes the questions in the annotation file's order; a results file may cover a subset of them.
    order = [qid for qid in key.answers if qid in predictions]
    return ScoreInputs(predictions, {qid: key.answers[qid] for qid in order},
                       {name: {qid: types[qid] for qid in order} for name, types in key.types.items()},
                       unscored=len(key.answers) - len(order))


def _id_type_hint(qid, known: dict) -> str:
    other = str(qid) if isinstance(qid, int) else int(qid) if qid.isascii() and qid.isdigit() else None
    return f" (it has {other!r}: ids must have the same JSON type)" if other is not None and other in known else ""


def _image_question_hint(qid, prompt, key: _AnswerKey) -> str:
    """Why an answer that names an image, as LLaVA's TextVQA answers do, found no question of that image."""
    if not any(image == qid for image, _ in key.by_image_question):
        return ""
    question = _llava_textvqa_question(prompt)
    found = (f"its prompt's question {question!r} is none of that image's" if question is not None else
             "its prompt holds no question where eval_textvqa.py looks for one")
    return f" (it names an image, as LLaVA's TextVQA answers do, but {found})"


def score_file(path: str | Path, refs: str | Path | None, names: Sequence[str],
               out: str | Path | None = None) -> EvalResult:
    """Score a predictions file; the result lists each scored item, in the order it was scored."""
    inputs = load_predictions(path, refs)
    try:
        result = score(inputs.predictions, inputs.references, names, types=inputs.types)
    except DataError as e:  # the references do not suit a metric
        raise DataError(f"{refs or path}: {e}") from None
    if inputs.cut:
        result.notes.append(f"{inputs.cut} of the {len(inputs.predictions)} predictions were cut at max_new_tokens "
                            "(finish_reason \"length\"): generate again with a higher limit for whole replies")
    if inputs.unscored:
        result.notes.append(f"{inputs.unscored} of the {inputs.unscored + len(inputs.references)} items of {refs} "
                            "have no prediction: they are not scored ('records' counts the scored ones)")
    result.predictions = [inputs.rows.get(k) or {"id": k, "prediction": inputs.predictions[k], "references": v}
                          for k, v in inputs.references.items()]
    if out:
        kept = evaluation_kept(Path(out), path, result)
        write_eval_folder(Path(out), result, {**kept, "predictions": str(path), "references": str(refs or path)})
    return result


def evaluation_kept(out: Path, path: str | Path, result: EvalResult) -> dict:
    """Rescoring an evaluation in its own folder (`verbo score eval/x/predictions.jsonl --out eval/x`) replaced its
    report with one that lost what only its model could give: what the references' loss and perplexity were (put
    back into `result`), and which model and data it was (returned, to describe the new report)."""
    report = read_json(out / "report.json")
    if report is None or Path(path).resolve() != (out / "predictions.jsonl").resolve():
        return {}
    result.values.update({k: v for k, v in report.get("metrics", {}).items() if k in ("val_loss", "perplexity")})
    return {k: report[k] for k in ("model", "data") if k in report}
