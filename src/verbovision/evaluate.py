"""`verbo eval` and `verbo score`: the metrics papers report, on a model's generations or on any predictions file.

`verbo eval` generates a reply per record, scores it against the record's references, and writes
`predictions.jsonl`, `report.json`, `report.md` and `metrics.png`, each metric with a bootstrap confidence interval
over items, the loss and perplexity of the references, and how many replies hit the token limit. `verbo score` does
the scoring alone on our predictions JSONL, on LLaVA answers JSONL or VQAv2 results (+ VQAv2 annotations, TextVQA
data or records with answers), or on COCO caption results (+ COCO annotations).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import metrics as m
from .data import read_records
from .errors import DataError
from .store import write_atomic, write_json

if TYPE_CHECKING:  # infer loads transformers: imported inside the functions that use it
    from .infer import Truncation

CAPTION_METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")
ANSWER_METRICS = {"exact_match": "exact", "vqa": "vqa", "textvqa": "textvqa", "numeric": "numeric",
                  "choice": "choice"}
# Accuracies that compare a prediction with the other annotators' answers: one answer would score every prediction 0.
HUMAN_ANSWER_METRICS = ("vqa", "textvqa")
ERROR_RATES = {"wer": m.wer, "cer": m.cer}
ALL_METRICS = (*CAPTION_METRICS, *ANSWER_METRICS, *ERROR_RATES)
DEFAULT_METRICS = ("bleu", "meteor", "rouge_l", "cider", "exact_match")


@dataclass
class EvalResult:
    values: dict[str, float]
    """Corpus-level metric values."""
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    """95% bootstrap confidence interval of each metric's per-item mean."""
    predictions: list[dict] = field(default_factory=list)
    """One row per record: id, image, prompt, prediction, finish_reason ("length": cut at max_new_tokens),
    references."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Metrics that could not be computed, with the reason."""
    details: dict[str, float] = field(default_factory=dict)
    """Breakdowns of the values (per answer and question type) and the renderings official scripts publish
    (vqaEval.py's percentages, rounded as it rounds them)."""
    truncation: Truncation | None = None
    """How many generated replies were cut at max_new_tokens (None when scoring a file: nothing was generated)."""

    def summary(self) -> dict:
        truncated = {} if self.truncation is None else {"truncated replies": self.truncation.truncated}
        return {**self.values, "records": len(self.predictions), **truncated,
                **{f"{k} (skipped)": v for k, v in self.skipped.items()}}


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x.strip())
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise DataError(f"unknown metric(s) {unknown}; choose from {', '.join(ALL_METRICS)}")
    return names


def score(predictions: Mapping[str, str], references: Mapping[str, list[str]], names: Sequence[str],
          ci: bool = True, types: Mapping[str, Mapping] | None = None) -> EvalResult:
    """Every requested metric, corpus-level, with bootstrap intervals over items.

    `types` (type name -> id -> type, e.g. VQAv2's answer_type and question_type) break the answer metrics down.
    """
    result = EvalResult({})
    per_item: dict[str, dict] = {}
    captions = [n for n in names if n in CAPTION_METRICS]
    if captions:
        scores = m.score_captions(predictions, references, metrics=captions)
        result.values.update(scores.corpus)
        result.skipped.update(scores.skipped)
        for metric in scores.corpus:
            per_item[metric] = {k: v[metric] for k, v in scores.per_image.items()}
    for name in names:
        if name in ANSWER_METRICS:
            if name in HUMAN_ANSWER_METRICS:
                _check_human_answers(references, name)
            answers = m.score_vqa(predictions, references, kind=ANSWER_METRICS[name], types=types)
            result.values[name], per_item[name] = answers.mean, answers.per_item
            result.details.update(_answer_details(name, answers))
        elif name in ERROR_RATES:
            rate = ERROR_RATES[name](predictions, references)
            result.values[name], per_item[name] = rate.corpus, rate.per_item
    if ci:
        # Bootstrap the per-item mean; metrics whose corpus value is not that mean (BLEU, METEOR, corpus WER)
        # get no interval rather than one that need not contain the reported value.
        result.intervals = {k: m.bootstrap_ci(v) for k, v in per_item.items() if v and _is_item_mean(v, result.values[k])}
    return result


def _check_human_answers(references: Mapping, name: str) -> None:
    for key, answers in references.items():
        count = 1 if isinstance(answers, str) else len(answers)
        if count < 2:
            raise DataError(f"{name}: item {key!r} has {count} reference answer(s); VQA accuracy credits a prediction "
                            "by the other annotators' answers (10 per question in VQAv2), so with one every "
                            "prediction scores 0; use exact_match for single-answer data")


def _answer_details(name: str, scores: m.VqaScores) -> dict[str, float]:
    """Per type means, and for vqa, vqaEval.py's rounded percentages, e.g. `vqa[answer_type=number]`,
    `vqa (vqaEval.py %)`."""
    official = scores.official
    details = {f"{name} (vqaEval.py %)": official["overall"]} if official else {}
    for type_name, means in scores.by_type.items():
        for kind, value in means.items():
            label = f"{name}[{type_name}={kind}]"
            details[label] = value
            if official:
                details[f"{label} (vqaEval.py %)"] = official[type_name][kind]
    return details


def _is_item_mean(per_item: dict, corpus: float) -> bool:
    return math.isclose(math.fsum(per_item.values()) / len(per_item), corpus, rel_tol=1e-9, abs_tol=1e-12)


# ------------------------------------------------------------------------------------------------ verbo eval


def evaluate(model: str | Path, data: str | Path, out: str | Path, metrics: Sequence[str] = DEFAULT_METRICS,
             options=None, batch_size: int = 16, data_format: str | None = None, with_loss: bool = True,
             device: str | None = None, quantize: str = "none", compiled: bool = False, read=None,
             template: str | None = None) -> EvalResult:
    """Generate on every record of `data` (read with `read`, readers.ReadOptions), score, and write the evaluation
    folder."""
    from .infer import VLM, DecodeOptions, Truncation

    out = Path(out)
    options = options or DecodeOptions()
    records = [r for r in read_records(data, format=data_format, options=read) if r.references]
    if not records:
        raise DataError(f"{data}: no records with references to evaluate against")
    vlm = VLM(model, device=device, quantize=quantize, compiled=compiled, template=template)
    generations = vlm.generate_details(records, options, batch_size)
    rows = [{"id": r.id, "image": str(r.images[0]) if r.images else None, "prompt": r.prompt_turns[-1].text,
             "prediction": g.text, "finish_reason": g.finish_reason, "references": r.references}
            for r, g in zip(records, generations)]
    result = score({row["id"]: row["prediction"] for row in rows}, {row["id"]: row["references"] for row in rows},
                   metrics)
    result.predictions = rows
    result.truncation = Truncation(options.max_new_tokens).add(g.finish_reason for g in generations)
    if with_loss:
        loss = reference_loss(vlm, records, batch_size)
        result.values.update({"val_loss": loss, "perplexity": math.exp(min(loss, 50))})
    write_eval_folder(out, result, {"model": str(model), "data": str(data)})
    return result


def reference_loss(vlm, records, batch_size: int) -> float:
    """Token-averaged loss of the reference replies under teacher forcing."""
    from .data import Collator
    from .loss import validation_loss

    encoded = [vlm.encoder.encode(r) for r in records]
    return validation_loss(vlm.model, Collator(vlm.encoder), encoded, batch_size, vlm.device)


def write_eval_folder(out: Path, result: EvalResult, about: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if result.predictions:
        write_atomic(out / "predictions.jsonl",
                     "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.predictions))
    truncation = {} if result.truncation is None else {"truncation": asdict(result.truncation)}
    write_json(out / "report.json", {**about, "metrics": result.values, "ci95": result.intervals,
                                     "records": len(result.predictions), **truncation, "skipped": result.skipped,
                                     "details": result.details})
    plot_metrics(result, out / "metrics.png")
    write_atomic(out / "report.md", markdown(result, about))


CUT_MARK = "[cut at max_new_tokens]"
"""Shown after a reply in a report's tables when it was cut at the token limit."""


def marked_prediction(row: dict) -> str:
    """A row's prediction for a report table, marked when generation cut it at the token limit."""
    cut = row.get("finish_reason") == "length"
    return f"{row['prediction']} {CUT_MARK}" if cut else row["prediction"]


def table_cell(text: object) -> str:
    """Text as one Markdown table cell: line breaks as <br>, pipes and backslashes escaped (a pipe would end the cell,
    a trailing backslash eat the next one), and < as &lt; (a `<image>` in a reply would vanish as an HTML tag)."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return "<br>".join(text.splitlines())


def markdown(result: EvalResult, about: dict) -> str:
    lines = ["# Evaluation", ""] + [f"- {k}: `{v}`" for k, v in about.items()]
    lines += ["", "| metric | value | 95% CI (bootstrap over items; - where the metric is corpus-level) |",
              "|---|---|---|"]
    for name, value in result.values.items():
        low, high = result.intervals.get(name, (None, None))
        interval = f"[{low:.4f}, {high:.4f}]" if low is not None else "-"
        lines.append(f"| {table_cell(name)} | {float(value)!r} | {interval} |")
    lines += [f"| {table_cell(name)} | {float(value)!r} | - |" for name, value in result.details.items()]
    lines += [f"- {k} skipped: {v}" for k, v in result.skipped.items()]
    if result.truncation is not None:
        lines += ["", f"{result.truncation}: their finish_reason is \"length\" in predictions.jsonl, and they end "
                      f"with {CUT_MARK} below"]
    lines += ["", "![metrics](metrics.png)", ""]
    if result.predictions:
        lines += ["## Examples", "", "| id | prediction | reference |", "|---|---|---|"]
        lines += [f"| {table_cell(r['id'])} | {table_cell(marked_prediction(r))} | "
                  f"{table_cell(r['references'][0] if r['references'] else '')} |" for r in result.predictions[:10]]
    return "\n".join(lines) + "\n"


def plot_metrics(result: EvalResult, path: Path) -> None:
    """metrics.png (see metrics_figure), when there is a metric to show."""
    fig = metrics_figure(result)
    if fig is not None:
        fig.savefig(path, dpi=100)


def metrics_figure(result: EvalResult):
    """A small panel per metric, each on an axis that suits its range (CIDEr ~10, BLEU 0..1, WER above 1 at times),
    its bootstrap interval as an error bar where it has one; None without metrics."""
    from matplotlib.figure import Figure

    names = [n for n in result.values if n not in ("val_loss", "perplexity")]
    if not names:
        return None
    columns = min(len(names), 5)
    rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(1.9 * columns, 2.4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, name in zip(axes.flat, names):
        value = float(result.values[name])
        low, high = result.intervals.get(name, (value, value))
        # A percentile interval can sit just off the point estimate (few items, skewed scores): clamp the bars at 0.
        error = [[max(0.0, value - low)], [max(0.0, high - value)]]
        ax.bar([0], [value], yerr=error, capsize=4, color="#4c78a8", width=0.6)
        top = max(value, high)
        ax.set_ylim(min(0.0, value) * 1.15, 1.0 if 0 <= top <= 1 else top * 1.15 or 1.0)
        ax.set_title(f"{name}\n{value:.4g}", fontsize=9)
        ax.set_xticks([])
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.remove()
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ verbo score

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


def _read_json_or_jsonl(path: Path) -> list | dict:
    if not path.is_file():
        raise DataError(f"{path}: {'not a file' if path.exists() else 'file not found'}")
    try:
        text = path.read_text(encoding="utf-8")
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


def load_predictions(path: str | Path, refs: str | Path | None = None) -> ScoreInputs:
    """Predictions and their references from one of PREDICTION_FORMATS (+ one of REFERENCE_FORMATS)."""
    path = Path(path)
    rows = _objects(_read_json_or_jsonl(path), path, "a list of predictions")
    kind = _prediction_format(rows[0], path)
    if kind == "ours":
        if refs is not None:
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
    predictions, references = {}, {}
    for i, row in enumerate(rows, 1):
        where = f"{path}: record {i}"
        key = _field(row, "id", (int, str), where, "an integer or a string")
        if key in predictions:
            raise DataError(f"{where}: id {key!r} appears twice")
        predictions[key] = _field(row, "prediction", str, where, "a string")
        references[key] = _strings(_field(row, "references", list, where, "a list of strings"), where)
    return ScoreInputs(predictions, references)


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
    return ScoreInputs({k: captions[k] for k in order}, {k: references[k] for k in order})


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
    return key


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
        text = _field(row, text_key, str, where, "a string")
        if qid in predictions:
            raise DataError(f"{where}: question_id {qid!r} has more than one answer")
        if qid not in key.answers:
            hint = _id_type_hint(qid, key.answers)
            raise DataError(f"{where}: question_id {qid!r} has no answers in {refs}{hint}")
        predictions[qid] = text
    # vqaEval.py takes the questions in the annotation file's order; a results file may cover a subset of them.
    order = [qid for qid in key.answers if qid in predictions]
    return ScoreInputs(predictions, {qid: key.answers[qid] for qid in order},
                       {name: {qid: types[qid] for qid in order} for name, types in key.types.items()})


def _id_type_hint(qid, known: dict) -> str:
    other = str(qid) if isinstance(qid, int) else int(qid) if qid.isascii() and qid.isdigit() else None
    return f" (it has {other!r}: ids must have the same JSON type)" if other is not None and other in known else ""


def score_file(path: str | Path, refs: str | Path | None, names: Sequence[str],
               out: str | Path | None = None) -> EvalResult:
    """Score a predictions file; the result lists each scored item, in the order it was scored."""
    inputs = load_predictions(path, refs)
    try:
        result = score(inputs.predictions, inputs.references, names, types=inputs.types)
    except DataError as e:  # the references do not suit a metric
        raise DataError(f"{refs or path}: {e}") from None
    result.predictions = [{"id": k, "prediction": inputs.predictions[k], "references": v}
                          for k, v in inputs.references.items()]
    if out:
        write_eval_folder(Path(out), result, {"predictions": str(path), "references": str(refs or path)})
    return result
