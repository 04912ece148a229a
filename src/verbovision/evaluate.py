"""Evaluate a model on a data file: generate a reply per record, score it against the references, save both."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import metrics
from .data import read_records
from .infer import VLM, DecodeOptions
from .store import write_atomic, write_json


@dataclass
class EvalResult:
    values: dict[str, float]
    """Corpus-level metric values."""
    predictions: list[dict]
    """One row per record: id, image, prompt, prediction, references."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Metrics that could not be computed, with the reason."""

    def summary(self) -> dict:
        return {**self.values, "records": len(self.predictions), **{f"{k} (skipped)": v for k, v in self.skipped.items()}}


def score_predictions(rows: list[dict], metric_names) -> EvalResult:
    predictions = {row["id"]: row["prediction"] for row in rows}
    references = {row["id"]: row["references"] for row in rows}
    values, skipped = {}, {}
    caption_metrics = [m for m in metric_names if m in ("bleu", "meteor", "rouge_l", "cider")]
    if caption_metrics:
        scores = metrics.score_captions(predictions, references, metrics=tuple(caption_metrics))
        values.update(scores.corpus)
        skipped.update(scores.skipped)
    for name in metric_names:
        if name in ("exact_match", "vqa", "numeric", "choice"):
            kind = "exact" if name == "exact_match" else name
            values[name] = metrics.score_vqa(predictions, references, kind=kind).mean
    return EvalResult(values, rows, skipped)


def evaluate_file(model: str | Path, data_file: str | Path, out: str | Path, metrics=("exact_match", "bleu"),
                  options: DecodeOptions | None = None, batch_size: int = 32) -> EvalResult:
    """Generate on every record of `data_file`, score, and write predictions.jsonl + report.json to `out`."""
    out = Path(out)
    records = read_records(data_file)
    replies = VLM(model).generate_records(records, options, batch_size)
    rows = [{"id": r.id, "image": str(r.images[0]) if r.images else None, "prompt": r.prompt_turns[-1].text,
             "prediction": reply, "references": r.references} for r, reply in zip(records, replies)]
    result = score_predictions(rows, metrics)
    write_atomic(out / "predictions.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    write_json(out / "report.json", {"model": str(model), "data": str(data_file), **result.summary()})
    return result
