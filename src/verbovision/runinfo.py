"""What a run folder records beside the model: metadata, metrics.jsonl, TensorBoard logs and loss curves."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

from .recipe import Recipe, Stage
from .store import write_atomic

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
    data_files = {
        source.path for stage in recipe.stages for source in stage.data.train + stage.data.val
    }
    root = Path(recipe.data_root)
    return {
        "recipe": recipe.name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "data_fingerprints": {p: fingerprint(root / p if not Path(p).is_absolute() else Path(p))
                              for p in sorted(data_files) if (root / p).exists() or Path(p).exists()},
    }


def stage_summary(stage: Stage, sources: dict[str, list[dict]], model, steps_per_epoch: int, total_steps: int,
                  processes: int, quantize: str = "none") -> dict:
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
        "precision": {"weights": "/".join(sorted(weights)), "autocast": "bfloat16" if stage.bf16 else None,
                      "quantize": None if quantize == "none" else quantize},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
    }


def component_parameters(model) -> dict[str, dict[str, int]]:
    """Parameters per component (vision, connector, language; `other` for any outside them): trainable and in all.
    A LoRA adapter's parameters count in the component they wrap."""
    from .families import Components

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

    def log(self, stage: str, step: int, **values) -> None:
        if not self.write:
            return
        row = {"stage": stage, "step": step, "time": round(time.time() - self.start, 2), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in values.items():
            if isinstance(value, float):
                self.writer.add_scalar(f"{stage}/{key}", value, step)

    def forget_after(self, stage: str, step: int) -> None:
        """Drop the stage's rows after `step`: a resumed run redoes those steps and logs them again."""
        if not self.write:
            return
        rows = [r for r in read_metrics(self.path.parent) if r["stage"] != stage or r["step"] <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(run_dir: Path) -> Path | None:
    """loss.png: training and validation loss per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    if not stages:
        return None
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for key, style in (("loss", "-"), ("val_loss", "o-")):
            points = [(r["step"], r[key]) for r in rows if r["stage"] == stage and key in r]
            if points:
                ax.plot(*zip(*points), style, label=key, markersize=3)
        ax.set_title(stage)
        ax.set_xlabel("optimizer step")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    path = run_dir / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
