"""What a run folder records beside the model: metadata, metrics.jsonl, TensorBoard logs and loss curves."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

from .recipe import Recipe
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
