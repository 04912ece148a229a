"""The evaluation folder: `predictions.jsonl`, `report.json`, `report.md` and `metrics.png`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from ..files import write_atomic, write_figure, write_json
from .metrics import EvalResult


def write_eval_folder(out: Path, result: EvalResult, about: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if result.predictions:
        write_atomic(out / "predictions.jsonl",
                     "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.predictions))
    truncation = {} if result.truncation is None else {"truncation": asdict(result.truncation)}
    write_json(out / "report.json", {**about, "metrics": result.values, "ci95": result.intervals,
                                     "records": len(result.predictions), **truncation, "skipped": result.skipped,
                                     "details": result.details, "notes": result.notes})
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
    lines += [f"- note: {note}" for note in result.notes]
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
        write_figure(path, fig)


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
        ax.set_xticks([])
        if math.isnan(value):  # undefined (POPE's precision where nothing is answered "yes"): a panel without a bar
            ax.set_title(f"{name}\nundefined", fontsize=9)
            continue
        low, high = result.intervals.get(name, (value, value))
        # A percentile interval can sit just off the point estimate (few items, skewed scores): clamp the bars at 0.
        error = [[max(0.0, value - low)], [max(0.0, high - value)]]
        ax.bar([0], [value], yerr=error, capsize=4, color="#4c78a8", width=0.6)
        top = max(value, high)
        ax.set_ylim(min(0.0, value) * 1.15, 1.0 if 0 <= top <= 1 else top * 1.15 or 1.0)
        ax.set_title(f"{name}\n{value:.4g}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.remove()
    fig.tight_layout()
    return fig
