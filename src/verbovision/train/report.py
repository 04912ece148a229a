"""report.md for a run: the stages and their losses, the figures, skipped records by reason, sample captions."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ..config.schema import Recipe
from ..data.images import image_name, load_image
from ..data.records import Record, SkipLog
from ..data.sources import source_records
from ..errors import DataError
from ..evaluate.report import CUT_MARK, marked_prediction, table_cell
from ..files import read_json, write_atomic, write_figure
from .runinfo import read_metrics, summary_lines

if TYPE_CHECKING:  # infer loads transformers: imported inside the functions that use it
    from ..infer.options import DecodeOptions


def sample_captions(model_dir: Path, recipe: Recipe, n: int = 6, options: DecodeOptions | None = None) -> list[dict]:
    """Generate replies for the first few validation (else training) records of the last stage whose image opens
    (training skipped the others); each sample says whether its reply was cut at max_new_tokens (`finish_reason`
    "length"), and holds the image it was asked about (`picture`: a shard member or an embedded image has no path)."""
    from ..infer.messages import prompt_record
    from ..infer.options import DecodeOptions
    from ..infer.vlm import VLM

    options = options or DecodeOptions()
    stage = recipe.stages[-1]
    sources = stage.data.val or stage.data.train
    chosen = _with_pictures(source_records(sources[0], Path(recipe.data_root), SkipLog()), n)
    if not chosen:
        return []
    vlm = VLM(model_dir)
    generations = vlm.generate_details([prompt_record(picture, r.prompt_turns[-1].text) for r, picture in chosen],
                                       options)
    return [{"image": image_name(r.images[0]), "picture": picture, "prompt": r.prompt_turns[-1].text,
             "prediction": g.text, "reference": next((t for t in r.references if t.strip()), ""),
             "finish_reason": g.finish_reason, "max_new_tokens": options.max_new_tokens}
            for (r, picture), g in zip(chosen, generations)]


def _with_pictures(records: Iterable[Record], n: int) -> list[tuple[Record, Image.Image]]:
    """The first `n` records with an image that opens, each with its first image opened."""
    chosen = []
    for record in records:
        if len(chosen) == n:
            break
        if not record.images:
            continue
        try:
            picture = load_image(record.images[0])
        except DataError:
            continue
        chosen.append((record, picture))
    return chosen


SAMPLE_TEXT_WIDTH = 72
"""Characters per line of the texts beside each image in samples.png."""


def wrapped(text: str, width: int = SAMPLE_TEXT_WIDTH) -> str:
    """Text wrapped at `width`, its own line breaks kept (step-by-step answers), nothing cut."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) if line.strip() else "" for line in text.splitlines()) or "(empty)"


def plot_samples(run_dir: Path, samples: list[dict]) -> Path:
    """samples.png (see samples_figure)."""
    path = run_dir / "samples.png"
    write_figure(path, samples_figure(samples))
    return path


def samples_figure(samples: list[dict]):
    """A row per sample: its image beside the prompt, the model's reply and the reference, each wrapped whole
    (however long: report.md's table has them too), so the row grows with its text."""
    from matplotlib.figure import Figure

    texts = [(wrapped(f"prompt: {s['prompt']}"),
              wrapped(s["prediction"]) + (f"\n{CUT_MARK}" if s["finish_reason"] == "length" else ""),
              wrapped(f"reference: {s['reference']}")) for s in samples]
    line_inch, image_inch = 9 * 1.3 / 72, 1.8  # 9 pt text at matplotlib's line spacing; every image the same size
    heights = [max(image_inch + 0.2, 0.4 + line_inch * sum(t.count("\n") + 1 for t in parts)) for parts in texts]
    fig = Figure(figsize=(9, sum(heights)))
    grid = fig.add_gridspec(len(samples), 2, width_ratios=[1, 2.4], height_ratios=heights)
    for row, (sample, (prompt, reply, reference)) in enumerate(zip(samples, texts)):
        image_cell = grid[row, 0].subgridspec(2, 1, height_ratios=[image_inch, heights[row] - image_inch])
        image_ax, text_ax = fig.add_subplot(image_cell[0]), fig.add_subplot(grid[row, 1])
        image_ax.imshow(sample["picture"] if "picture" in sample else load_image(Path(sample["image"])))
        image_ax.set_anchor("N")
        image_ax.set_xticks([])  # no ticks, but the frame: a white background still shows where the image ends
        image_ax.set_yticks([])
        text_ax.axis("off")
        # each text starts below the one before it (xycoords: the previous text's box); parse_math: a "$" in a
        # caption is text, not the start of a formula
        above = text_ax.text(0, 1, prompt, va="top", fontsize=8, color="grey", parse_math=False,
                             transform=text_ax.transAxes, family="monospace")
        for text, style in ((reply, {"fontsize": 9}), (reference, {"fontsize": 8, "color": "dimgrey"})):
            above = text_ax.annotate(text, xy=(0, 0), xycoords=above, xytext=(0, -5), textcoords="offset points",
                                     va="top", parse_math=False, family="monospace", **style)
    fig.tight_layout()
    return fig


def _sample_truncation(samples: list[dict]) -> str:
    from ..infer.options import Truncation

    truncation = Truncation(samples[0]["max_new_tokens"]).add(s["finish_reason"] for s in samples)
    return f"{truncation}; a cut reply ends with {CUT_MARK}."


def run_summary(run: dict) -> list[str]:
    """What each stage was about to do when it started (run.json's `summary`), as report.md lines."""
    if not run.get("summary"):
        return []
    lines = ["## Run summary", ""]
    for index, summary in enumerate(run["summary"].values()):
        header, *details = summary_lines(index, summary)
        lines += [f"**{header}**", "", *(f"- {line.strip()}" for line in details), ""]
    return lines


def environment_changes(first: dict, later: dict) -> str:
    """What a resume (run.json's `resumes` entry `later`) ran with that the run's first start (`first`) did not."""
    old, new = _versions(first), _versions(later)
    changes = [f"{name} {old.get(name)} -> {value}" for name, value in new.items() if old.get(name) != value]
    return ", ".join(changes) or "the same versions"


def _versions(start: dict) -> dict:
    return {"python": start.get("python"), **start.get("packages", {}), "git": start.get("git_commit")}


def write_report(run_dir: Path, samples: list[dict], evaluation: dict | None = None) -> Path:
    run = read_json(run_dir / "run.json") or {}
    rows = read_metrics(run_dir)
    lines = [f"# Run report: {run.get('recipe', run_dir.name)}", ""]
    if evaluation:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {table_cell(k)} | {v:.4f} |" if isinstance(v, float) else f"| {table_cell(k)} | {table_cell(v)} |"
                  for k, v in evaluation.items()]
        lines.append("")
    lines += run_summary(run)
    lines += ["## Stages", "", "| stage | steps | last train loss | best validation value | output |",
              "|---|---|---|---|---|"]
    for name, info in run.get("stages", {}).items():
        losses = [r["loss"] for r in rows if r["stage"] == name and "loss" in r]
        last = f"{losses[-1]:.4f}" if losses else "-"
        best = f"{info['best']:.4f}" if info.get("best") is not None else "-"
        lines.append(f"| {table_cell(name)} | {info.get('steps', '-')} | {last} | {best} | "
                     f"`{table_cell(Path(info['model_dir']).name)}` |")
    lines += ["", "![loss curves](loss.png)", "", "## Skipped records", ""]
    skipped = {stage: kinds for stage, kinds in run.get("skipped", {}).items() if kinds}
    if not skipped:
        lines.append("None: every record was used.")
    for stage, kinds in skipped.items():
        for reason, info in kinds.items():
            lines.append(f"- {stage}: **{reason}**: {info['count']} (e.g. {'; '.join(info['examples'][:3])})")
    if samples:
        plot_samples(run_dir, samples)
        lines += ["", "## Sample outputs", "", "![sample captions](samples.png)", "", _sample_truncation(samples), "",
                  "| image | prediction | reference |", "|---|---|---|"]
        lines += [f"| `{table_cell(Path(s['image']).name)}` | {table_cell(marked_prediction(s))} | "
                  f"{table_cell(s['reference'])} |" for s in samples]
    lines += ["", "## Environment", "", f"- packages: {run.get('packages', {})}", f"- git: {run.get('git_commit')}"]
    lines += [f"- resumed {start['started']}: {environment_changes(run, start)}" for start in run.get("resumes", [])]
    path = run_dir / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
