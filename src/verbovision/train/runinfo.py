"""What a run folder records beside the model: metadata, metrics.jsonl, TensorBoard logs and loss curves."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

from ..config.schema import Recipe, Stage
from ..files import write_atomic, write_figure

PACKAGES = ("verbovision", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "pillow")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def fingerprint(path: Path) -> str:
    """sha256 of a data file's bytes (images are covered by the records that name them); for a folder (webdataset
    shards, an imagefolder, a saved dataset), of its files' names and sizes: reading terabytes of shards to start a
    run would cost more than it tells."""
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\n".encode())
        return "files:" + digest.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_run(recipe: Recipe) -> dict:
    """run.json of a run starting: its recipe, environment() at its start and its data's fingerprints."""
    return {"recipe": recipe.name, **environment(), "data_fingerprints": data_fingerprints(recipe)}


def environment() -> dict:
    """When a run (or a resume of it) starts, and with which Python, packages and VerboVision commit."""
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "packages": package_versions(), "git_commit": git_commit()}


def resumed(run: dict) -> dict:
    """run.json `run` with this resume's environment() added to its `resumes`: the stages trained from here on may
    run on other versions than the first start's, which its own fields keep saying."""
    run.setdefault("resumes", []).append(environment())
    return run


def data_fingerprints(recipe: Recipe) -> dict[str, str]:
    """The fingerprint of each local data file or folder of the recipe, by its path as the recipe names it."""
    data_files = {source.path for stage in recipe.stages for source in stage.data.train + stage.data.val}
    root = Path(recipe.data_root)
    return {p: fingerprint(root / p if not Path(p).is_absolute() else Path(p))
            for p in sorted(data_files) if (root / p).exists() or Path(p).exists()}


def stage_summary(stage: Stage, sources: dict[str, list[dict]], model, steps_per_epoch: int, total_steps: int,
                  processes: int, quantize: str = "none", autocast=None) -> dict:
    """What a stage is about to do, before its first step: the records of each source it can use and skips, the
    parameters that train per component, its length, its effective batch, precision and device."""
    import torch

    device = next(model.parameters()).device
    weights = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()}
    return {
        "name": stage.name,
        "type": stage.type,
        "template": stage.template,
        "sources": sources,
        "parameters": component_parameters(model),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "epochs": None if stage.max_steps else stage.epochs,
        "batch": {"batch_size": stage.batch_size, "grad_accum": stage.grad_accum, "processes": processes,
                  "effective": stage.batch_size * stage.grad_accum * processes},
        "precision": {"weights": "/".join(sorted(weights)), "autocast": str(autocast).removeprefix("torch.") if autocast else None,
                      "quantize": None if quantize == "none" else quantize},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
    }


def component_parameters(model) -> dict[str, dict[str, int]]:
    """Parameters per component (vision, connector, language; `other` for any outside them): trainable and in all.
    A LoRA adapter's parameters count in the component they wrap."""
    from ..families import Components

    components = Components(model)
    counts: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        count = counts.setdefault(components.of(name) or "other", {"trainable": 0, "total": 0})
        count["total"] += param.numel()
        count["trainable"] += param.numel() if param.requires_grad else 0
    return counts


def summary_lines(index: int, summary: dict) -> list[str]:
    """The stage summary as lines to read: printed when the stage starts and listed in report.md."""
    lines = []
    for role, rows in summary["sources"].items():
        for row in rows:
            counts = ("streamed: counted as it trains" if row.get("streamed")
                      else f"{row['usable']} usable, {row['skipped']} skipped")
            lines.append(f"{role} data {row['source']}: {counts}")
    parameters = summary["parameters"]
    trainable = sum(c["trainable"] for c in parameters.values())
    total = sum(c["total"] for c in parameters.values())
    per_component = ", ".join(f"{name} {_count(c['trainable'])} of {_count(c['total'])}"
                              for name, c in parameters.items())
    lines.append(f"trainable parameters: {per_component}; {_count(trainable)} of {_count(total)} in all "
                 f"({100 * trainable / max(1, total):.2f}%)")
    length = f"{summary['epochs']:g} epochs" if summary["epochs"] is not None else "max_steps"
    batch = summary["batch"]
    lines.append(f"steps: {summary['steps_per_epoch']} per epoch, {summary['total_steps']} in all ({length}); "
                 f"effective batch {batch['effective']} = batch_size {batch['batch_size']} x grad_accum "
                 f"{batch['grad_accum']} x {batch['processes']} process{'es' if batch['processes'] > 1 else ''}")
    precision = summary["precision"]
    described = f"{precision['weights']} weights" + (f" ({precision['quantize']} base)" if precision["quantize"] else "")
    described += f", {precision['autocast']} autocast" if precision["autocast"] else ""
    lines.append(f"precision: {described}; device: {summary['device']}")
    header = f"stage {index} {summary['name']} ({summary['type']}, template {summary['template']}):"
    return [header] + [f"  {line}" for line in lines]


def _count(n: int) -> str:
    """A parameter count to read at a glance: 1.18M, 92.9k, 0."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return str(n)


class MetricsLogger:
    """Appends one JSON line per event to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, write: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.jsonl"
        self.write = write
        """False on all but the main training process: one process logs."""
        self.writer = SummaryWriter(str(run_dir / "tensorboard")) if write else None
        self.start = time.time()
        """When the run started, as the clock of `time` reads it: moved back by a resumed run (forget_after)."""

    def elapsed(self) -> float:
        """Seconds of the run so far: each row's `time`."""
        return round(time.time() - self.start, 2)

    def log(self, stage: str, step: int, **values) -> None:
        if not self.write:
            return
        row = {"stage": stage, "step": step, "time": self.elapsed(), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in values.items():
            if isinstance(value, float):
                self.writer.add_scalar(f"{stage}/{key}", value, step)

    def forget_after(self, stage: str, step: int, elapsed: float | None = None) -> None:
        """Drop the stage's rows after `step`: a resumed run redoes those steps and logs them again. Its clock goes on
        from `elapsed` (the run's seconds when the checkpoint of `step` was written, where it says) or the last row
        kept, so that `time` grows across a resume as it would have without one."""
        if not self.write:
            return
        rows = [r for r in read_metrics(self.path.parent) if r["stage"] != stage or r["step"] <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        elapsed = max([elapsed or 0.0] + [r.get("time", 0.0) for r in rows])
        self.start = min(self.start, time.time() - elapsed)  # a later stage of the same process: its clock runs on

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # a torn last row: logged again
    return [json.loads(line) for line in lines if line.strip()]


@dataclass(frozen=True)
class Panel:
    """One plot of a stage's curves in loss.png."""

    title: str
    keys: tuple[str, ...]
    """metrics.jsonl values drawn in it, one line each."""
    log: bool = False
    """A log axis, where every value drawn is positive (cross-entropy falls over decades; a policy loss crosses 0)."""


def stage_panels(rows: list[dict]) -> list[Panel]:
    """The panels of one stage's metrics.jsonl rows: its losses, an SCST stage's rewards and caption lengths, and its
    validation metric (best_metric), each on an axis of its own range; panels with nothing logged are left out."""
    keys = {key for row in rows for key in row}
    if "sample_reward" in keys:  # an SCST stage: the loss is a policy gradient's, of either sign
        panels = [Panel("policy-gradient loss", ("loss",)),
                  Panel("reward of training captions", ("sample_reward", "greedy_reward")),
                  Panel("sampled caption length (tokens)", ("caption_length",)),
                  Panel("validation loss (references)", ("val_loss",), log=True)]
    else:
        panels = [Panel("loss", ("loss", "val_loss"), log=True)]
    metrics = tuple(sorted(k for k in keys if k.startswith("val_") and k != "val_loss"))
    panels.append(Panel("validation metric", metrics))
    return [panel for panel in panels if keys & set(panel.keys)]


def plot_losses(run_dir: Path) -> Path | None:
    """loss.png (see loss_figure); None when nothing was logged."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    path = run_dir / "loss.png"
    write_figure(path, loss_figure(rows))
    return path


def loss_figure(rows: list[dict]):
    """A row of panels per stage of metrics.jsonl `rows`, a panel per kind of curve (stage_panels)."""
    from matplotlib.figure import Figure

    stages = {stage: [r for r in rows if r["stage"] == stage] for stage in dict.fromkeys(r["stage"] for r in rows)}
    panels = {stage: stage_panels(stage_rows) for stage, stage_rows in stages.items()}
    columns = max(map(len, panels.values()))
    fig = Figure(figsize=(4.5 * columns, 3.2 * len(stages)))
    axes = fig.subplots(len(stages), columns, squeeze=False)
    for ax_row, (stage, stage_rows) in zip(axes, stages.items()):
        for ax, panel in zip(ax_row, panels[stage]):
            _plot_panel(ax, panel, stage_rows)
            ax.set_title(f"{stage}: {panel.title}", fontsize=10)
        for ax in ax_row[len(panels[stage]):]:
            ax.remove()
    fig.tight_layout()
    return fig


def _plain_log_formatter():
    """Labels the ticks a log axis labels by default, as plain numbers: 0.6, not 6 x 10^-1."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(labelOnlyBase=False)


def _plot_panel(ax, panel: Panel, rows: list[dict]) -> None:
    from matplotlib.ticker import MaxNLocator

    values = []
    for key in panel.keys:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            # markers where points are few: a curve logged once is a dot, not an invisible line
            ax.plot(*zip(*points), marker="o" if len(points) <= 30 else None, markersize=3, label=key)
            values += [value for _, value in points]
    if panel.log and values and min(values) > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain_log_formatter())
        ax.yaxis.set_minor_formatter(_plain_log_formatter())
    elif min(values, default=0) < 0 < max(values, default=0):
        ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xlim(left=0)  # from the stage's start, which also keeps a stage logged once on whole steps
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.legend(fontsize=8)
