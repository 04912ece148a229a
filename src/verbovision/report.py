"""report.md for a run: the stages and their losses, the figures, skipped records by reason, sample captions."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from .data import SkipLog, source_records
from .evaluate import CUT_MARK, marked_prediction
from .recipe import Recipe
from .runinfo import read_metrics, summary_lines
from .store import read_json, write_atomic

if TYPE_CHECKING:  # infer loads transformers: imported inside the functions that use it
    from .infer import DecodeOptions


def sample_captions(model_dir: Path, recipe: Recipe, n: int = 6, options: DecodeOptions | None = None) -> list[dict]:
    """Generate replies for the first few validation (else training) records of the last stage; each sample says
    whether its reply was cut at max_new_tokens (`finish_reason` "length")."""
    from .infer import VLM, DecodeOptions, prompt_record

    options = options or DecodeOptions()
    stage = recipe.stages[-1]
    sources = stage.data.val or stage.data.train
    records = list(islice((r for r in source_records(sources[0], Path(recipe.data_root), SkipLog()) if r.images), n))
    if not records:
        return []
    vlm = VLM(model_dir)
    generations = vlm.generate_details([prompt_record(r.images[0], r.prompt_turns[-1].text) for r in records], options)
    return [{"image": str(r.images[0]), "prompt": r.prompt_turns[-1].text, "prediction": g.text,
             "reference": r.references[0] if r.references else "", "finish_reason": g.finish_reason,
             "max_new_tokens": options.max_new_tokens} for r, g in zip(records, generations)]


def plot_samples(run_dir: Path, samples: list[dict]) -> Path:
    """samples.png: each sample image with the model's caption under it (and the reference)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import load_image

    fig, axes = plt.subplots(1, len(samples), figsize=(3 * len(samples), 3.8), squeeze=False)
    for ax, sample in zip(axes[0], samples):
        ax.imshow(load_image(Path(sample["image"])))
        ax.axis("off")
        # Long replies (step-by-step answers, or an untrained model's run to the token limit) are shortened here,
        # where they would push the image out of the figure; report.md's table has them whole.
        caption = textwrap.fill(sample["prediction"] or "(empty)", 32, max_lines=6, placeholder=" ...")
        caption += f"\n{CUT_MARK}" if sample["finish_reason"] == "length" else ""
        reference = textwrap.fill(f"reference: {sample['reference']}", 32, max_lines=4, placeholder=" ...")
        # parse_math: a "$" in a model's caption is text, not the start of a formula
        ax.set_title(caption, fontsize=8, loc="left", parse_math=False)
        ax.text(0, -0.04, reference, transform=ax.transAxes, fontsize=7, va="top", color="grey", parse_math=False)
    fig.tight_layout()
    path = run_dir / "samples.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _sample_truncation(samples: list[dict]) -> str:
    from .infer import Truncation

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


def write_report(run_dir: Path, samples: list[dict], evaluation: dict | None = None) -> Path:
    run = read_json(run_dir / "run.json") or {}
    rows = read_metrics(run_dir)
    lines = [f"# Run report: {run.get('recipe', run_dir.name)}", ""]
    if evaluation:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in evaluation.items()]
        lines.append("")
    lines += run_summary(run)
    lines += ["## Stages", "", "| stage | steps | last train loss | best validation value | output |",
              "|---|---|---|---|---|"]
    for name, info in run.get("stages", {}).items():
        losses = [r["loss"] for r in rows if r["stage"] == name and "loss" in r]
        last = f"{losses[-1]:.4f}" if losses else "-"
        best = f"{info['best']:.4f}" if info.get("best") is not None else "-"
        lines.append(f"| {name} | {info.get('steps', '-')} | {last} | {best} | `{Path(info['model_dir']).name}` |")
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
        lines += [f"| `{Path(s['image']).name}` | {marked_prediction(s)} | {s['reference']} |" for s in samples]
    lines += ["", "## Environment", "", f"- packages: {run.get('packages', {})}", f"- git: {run.get('git_commit')}"]
    path = run_dir / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
