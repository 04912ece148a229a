"""`verbo eval` and `verbo score`: the metrics papers report, on a model's generations or on any predictions file.

`verbo eval` generates a reply per record, scores it against the record's references, and writes
`predictions.jsonl`, `report.json`, `report.md` and `metrics.png`, each metric with a bootstrap confidence interval
over items, plus the validation loss and perplexity of the references. `verbo score` does the scoring alone on our
predictions JSONL, LLaVA's answer JSONL (+ a questions/answers file) or COCO results (+ COCO annotations).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import metrics as m
from .data import read_records
from .errors import DataError
from .store import write_atomic, write_json

CAPTION_METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")
ANSWER_METRICS = {"exact_match": "exact", "vqa": "vqa", "numeric": "numeric", "choice": "choice"}
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
    """One row per record: id, image, prompt, prediction, references."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Metrics that could not be computed, with the reason."""

    def summary(self) -> dict:
        return {**self.values, "records": len(self.predictions),
                **{f"{k} (skipped)": v for k, v in self.skipped.items()}}


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x.strip())
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise DataError(f"unknown metric(s) {unknown}; choose from {', '.join(ALL_METRICS)}")
    return names


def score(predictions: Mapping[str, str], references: Mapping[str, list[str]], names: Sequence[str],
          ci: bool = True) -> EvalResult:
    """Every requested metric, corpus-level, with bootstrap intervals over items."""
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
            answers = m.score_vqa(predictions, references, kind=ANSWER_METRICS[name])
            result.values[name], per_item[name] = answers.mean, answers.per_item
        elif name in ERROR_RATES:
            rate = ERROR_RATES[name](predictions, references)
            result.values[name], per_item[name] = rate.corpus, rate.per_item
    if ci:
        # Bootstrap the per-item mean; metrics whose corpus value is not that mean (BLEU, METEOR, corpus WER)
        # get no interval rather than one that need not contain the reported value.
        result.intervals = {k: m.bootstrap_ci(v) for k, v in per_item.items() if v and _is_item_mean(v, result.values[k])}
    return result


def _is_item_mean(per_item: dict, corpus: float) -> bool:
    return math.isclose(math.fsum(per_item.values()) / len(per_item), corpus, rel_tol=1e-9, abs_tol=1e-12)


# ------------------------------------------------------------------------------------------------ verbo eval


def evaluate(model: str | Path, data: str | Path, out: str | Path, metrics: Sequence[str] = DEFAULT_METRICS,
             options=None, batch_size: int = 16, data_format: str | None = None, with_loss: bool = True,
             device: str | None = None, quantize: str = "none", compiled: bool = False, read=None) -> EvalResult:
    """Generate on every record of `data` (read with `read`, readers.ReadOptions), score, and write the evaluation
    folder."""
    from .infer import VLM

    out = Path(out)
    records = [r for r in read_records(data, format=data_format, options=read) if r.references]
    if not records:
        raise DataError(f"{data}: no records with references to evaluate against")
    vlm = VLM(model, device=device, quantize=quantize, compiled=compiled)
    replies = vlm.generate_records(records, options, batch_size)
    rows = [{"id": r.id, "image": str(r.images[0]) if r.images else None, "prompt": r.prompt_turns[-1].text,
             "prediction": reply, "references": r.references} for r, reply in zip(records, replies)]
    result = score({row["id"]: row["prediction"] for row in rows}, {row["id"]: row["references"] for row in rows},
                   metrics)
    result.predictions = rows
    if with_loss:
        loss = reference_loss(vlm, records, batch_size)
        result.values.update({"val_loss": loss, "perplexity": math.exp(min(loss, 50))})
    write_eval_folder(out, result, {"model": str(model), "data": str(data)})
    return result


def reference_loss(vlm, records, batch_size: int) -> float:
    """Token-averaged loss of the reference replies under teacher forcing."""
    from .data import Collator
    from .train import validation_loss

    encoded = [vlm.encoder.encode(r) for r in records]
    return validation_loss(vlm.model, Collator(vlm.encoder), encoded, batch_size, vlm.device)


def write_eval_folder(out: Path, result: EvalResult, about: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if result.predictions:
        write_atomic(out / "predictions.jsonl",
                     "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.predictions))
    write_json(out / "report.json", {**about, "metrics": result.values, "ci95": result.intervals,
                                     "records": len(result.predictions), "skipped": result.skipped})
    plot_metrics(result, out / "metrics.png")
    write_atomic(out / "report.md", markdown(result, about))


def markdown(result: EvalResult, about: dict) -> str:
    lines = ["# Evaluation", ""] + [f"- {k}: `{v}`" for k, v in about.items()]
    lines += ["", "| metric | value | 95% CI (bootstrap over items; - where the metric is corpus-level) |",
              "|---|---|---|"]
    for name, value in result.values.items():
        low, high = result.intervals.get(name, (None, None))
        interval = f"[{low:.4f}, {high:.4f}]" if low is not None else "-"
        lines.append(f"| {name} | {value:.4f} | {interval} |")
    lines += [f"- {k} skipped: {v}" for k, v in result.skipped.items()]
    lines += ["", "![metrics](metrics.png)", ""]
    if result.predictions:
        lines += ["## Examples", "", "| id | prediction | reference |", "|---|---|---|"]
        lines += [f"| {r['id']} | {r['prediction']} | {r['references'][0] if r['references'] else ''} |"
                  for r in result.predictions[:10]]
    return "\n".join(lines) + "\n"


def plot_metrics(result: EvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in result.values if n not in ("val_loss", "perplexity")]
    if not names:
        return
    values = [result.values[n] for n in names]
    # A percentile interval can sit just off the point estimate (few items, skewed scores): clamp the bars at 0.
    errors = [[max(0.0, v - result.intervals.get(n, (v, v))[0]) for n, v in zip(names, values)],
              [max(0.0, result.intervals.get(n, (v, v))[1] - v) for n, v in zip(names, values)]]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names)), 3.5))
    ax.bar(names, values, yerr=errors, capsize=3, color="#4c78a8")
    ax.set_ylabel("score")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ verbo score


def _read_json_or_jsonl(path: Path) -> list | dict:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
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


def load_predictions(path: str | Path, refs: str | Path | None = None) -> tuple[dict, dict]:
    """(predictions, references) by id from one of the supported predictions formats."""
    path = Path(path)
    data = _read_json_or_jsonl(path)
    if isinstance(data, dict):
        data = [data]
    first = data[0] if data else {}
    if "prediction" in first and refs is None:  # our predictions.jsonl carries its references
        return {r["id"]: r["prediction"] for r in data}, {r["id"]: list(r["references"]) for r in data}
    if refs is None:
        raise DataError(f"{path}: these predictions carry no references; pass --refs")
    ref_data = _read_json_or_jsonl(Path(refs))
    if "caption" in first and "image_id" in first:
        return _coco(data, ref_data, path, Path(refs))
    if "question_id" in first:
        return _llava_answers(data, ref_data, path, Path(refs))
    raise DataError(f"{path}: unrecognised predictions format (expected our JSONL with id/prediction/references, "
                    "LLaVA answers with question_id/text, or COCO results with image_id/caption)")


def _coco(results: list, annotations, path: Path, refs: Path) -> tuple[dict, dict]:
    if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise DataError(f"{refs}: expected COCO caption annotations with an 'annotations' list")
    references: dict = {}
    for ann in annotations["annotations"]:
        references.setdefault(ann["image_id"], []).append(ann["caption"])
    captions: dict = {}
    for row in results:
        if row["image_id"] not in references:
            raise DataError(f"{path}: image_id {row['image_id']} has no references in {refs}")
        if row["image_id"] in captions:
            raise DataError(f"{path}: image_id {row['image_id']} has more than one caption; COCO scores one")
        captions[row["image_id"]] = row["caption"]
    # COCOEvalCap scores images in the order of the annotation file's image list.
    order = [img["id"] for img in annotations.get("images", []) if img["id"] in captions] or list(captions)
    return {k: captions[k] for k in order}, {k: references[k] for k in order}


def _llava_answers(answers: list, questions: list, path: Path, refs: Path) -> tuple[dict, dict]:
    references = {}
    for q in questions:
        value = q.get("answers", q.get("answer", q.get("text")))
        references[q["question_id"]] = value if isinstance(value, list) else [value]
    missing = [a["question_id"] for a in answers if a["question_id"] not in references]
    if missing:
        raise DataError(f"{path}: question_id {missing[:5]} not in {refs}")
    predictions = {a["question_id"]: a["text"] for a in answers}
    return predictions, {k: references[k] for k in predictions}


def score_file(path: str | Path, refs: str | Path | None, names: Sequence[str],
               out: str | Path | None = None) -> EvalResult:
    predictions, references = load_predictions(path, refs)
    result = score(predictions, references, names)
    if out:
        write_eval_folder(Path(out), result, {"predictions": str(path), "references": str(refs or path)})
    return result
