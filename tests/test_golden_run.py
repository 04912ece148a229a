"""The golden run: a three-stage run on the CPU in float32 — full fine-tuning, LoRA with its merge, SCST — of a tiny
model built from scratch, seed 0, as a user runs it (`verbo train`, `verbo caption`, `verbo eval`, each its own
process). Every number it logs (loss, grad_norm, lr, val_loss, rewards...), the final model's captions of eight
images and its eval values are committed in tests/golden/three_stage_run.json and compared within 1e-6 (relative).

A change meant to keep behaviour (a refactor, a speed-up on another device) keeps them. A change meant to alter them
rewrites the file (`VERBO_WRITE_GOLDEN=1 pytest tests/test_golden_run.py`) and says why in its commit."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from .helpers import kill_at_step

GOLDEN = Path(__file__).parent / "golden" / "three_stage_run.json"
TOLERANCE = 1e-6
"""Relative to the number's size (absolute below 1): float32 keeps about 7 significant digits, and the same packages
on another x86 CPU (other vector units, other kernels) move the last of them: a perplexity of 180.14277 became
180.14271, a grad_norm of 4.8446698 became 4.8446684."""

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
DATA = {"train": ["train/caption_short_en.json"], "val": ["val/caption_short_en.json"]}
RECIPE = {
    "name": "golden",
    "seed": 0,
    "model": {
        "vision": {"arch": "siglip", "hidden_size": 32, "layers": 1, "heads": 2, "image_size": 32, "patch_size": 8},
        "language": {"arch": "qwen2", "hidden_size": 32, "layers": 2, "heads": 2, "vocab_size": 300},
        "connector": {"type": "mlp", "act": "gelu"},
    },
    "stages": [
        {"name": "full", "template": "plain", "data": DATA, "max_steps": 6, "batch_size": 4, "lr": 3e-3,
         "log_every": 1, "train": {"vision": "full", "connector": "full", "language": "full"}},
        {"name": "lora", "template": "plain", "data": DATA, "max_steps": 4, "batch_size": 4, "lr": 1e-2,
         "log_every": 1, "schedule": "linear", "train": {"vision": "frozen", "connector": "full", "language": "lora"},
         "lora": LORA, "merge": True},
        {"name": "scst", "type": "scst", "template": "plain", "data": DATA, "max_steps": 3, "batch_size": 2,
         "lr": 1e-3, "log_every": 1, "scst_samples": 3, "scst_baseline": "mean",
         "scst_reward": {"cider": 1.0, "bleu": 0.5}, "best_metric": "cider", "best_metric_records": 4,
         "train": {"vision": "frozen", "connector": "full", "language": "lora"}, "lora": LORA, "merge": True},
    ],
}
"""The run: each stage logs every step and validates at its end."""

GOLDEN_PACKAGES = ("torch", "transformers", "tokenizers", "peft", "accelerate", "pillow", "numpy")

TIMINGS = ("seconds", "time", "per_s", "per_second", "elapsed", "throughput", "eta", "memory")
"""Logged fields that measure the machine, not the run: left out of the comparison."""


BEFORE_THE_PACKAGE_MOVE = "a8c8833337f6589f561c8ae48d9f3975e5c48014"
"""The last commit before the code moved into packages (issue 18): a run it started must resume with today's code."""

CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
"""The CPU, on one thread: how many threads sum a reduction changes its last digits, so the numbers would otherwise
depend on the machine's cores and on how many test workers share them."""


def verbo(*args: str) -> str:
    """Run a verbo command in its own process on one CPU thread (as on a machine without a GPU); its stdout."""
    done = subprocess.run([sys.executable, "-m", "verbovision", *args], env=CPU_ONLY, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def logged_numbers(metrics: Path) -> list[dict]:
    """The numbers of every logged row, machine timings left out."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMINGS)} for row in rows]


@pytest.fixture(scope="module")
def golden_run(shapes_data, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("golden")
    recipe = folder / "golden.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "data_root": str(shapes_data)}))
    run = folder / "run"
    verbo("train", str(recipe), "--out", str(run))
    images = sorted((shapes_data / "images").glob("*.png"))[:8]
    lines = verbo("caption", str(run / "final"), *map(str, images), "--max-new-tokens", "12").splitlines()
    captions = [line.replace(str(shapes_data), "DATA") for line in lines]  # image<TAB>caption
    verbo("eval", str(run / "final"), "--data", str(shapes_data / "test/caption_short_en.json"), "--metrics",
          "bleu,cider,exact_match", "--max-new-tokens", "12", "--out", str(folder / "eval"))
    report = json.loads((folder / "eval/report.json").read_text())
    return {"logged": logged_numbers(run / "metrics.jsonl"), "captions": captions, "eval": report["metrics"]}


def differences(expected, actual, where: str = "") -> list[str]:
    """Where two JSON values differ: numbers by more than TOLERANCE (relative), anything else at all."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return [f"{where}: keys {sorted(expected)} != {sorted(actual)}"]
        return [d for k in expected for d in differences(expected[k], actual[k], f"{where}.{k}")]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items != {len(actual)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool):
        close = abs(expected - actual) <= TOLERANCE * max(1.0, abs(expected))
        return [] if close else [f"{where}: {expected} != {actual}"]
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def environment() -> str:
    """The packages whose versions shape the run's numbers: the random initialisation (transformers), the tokenizer
    trained from the data (tokenizers), the rendered images (pillow), the kernels (torch)."""
    return ", ".join(f"{name} {version(name)}" for name in GOLDEN_PACKAGES)


def test_the_golden_run_is_unchanged(golden_run):
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("VERBO_WRITE_GOLDEN") == "1":
        recorded[environment()] = golden_run
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    if environment() not in recorded:
        pytest.skip(f"no golden run recorded with {environment()}: record one with VERBO_WRITE_GOLDEN=1 on the "
                    "commit before the change under test")
    assert differences(recorded[environment()], golden_run) == []


def test_the_golden_run_logs_every_stage(golden_run):
    """What the comparison covers: each stage's steps with loss, grad_norm and lr, a validation, captions, eval."""
    steps = [row for row in golden_run["logged"] if "loss" in row]
    assert [row["stage"] for row in steps] == ["full"] * 6 + ["lora"] * 4 + ["scst"] * 3
    assert all({"grad_norm", "lr"} <= row.keys() for row in steps)
    assert {row["stage"] for row in golden_run["logged"] if "val_loss" in row} >= {"full", "lora"}
    assert len(golden_run["captions"]) == 8 and {"Bleu_4", "CIDEr"} <= golden_run["eval"].keys()


def test_differences_finds_a_change_beyond_the_tolerance():
    run = {"logged": [{"loss": 1.0}], "captions": ["a red circle"]}
    assert differences(run, {"logged": [{"loss": 1.0 + TOLERANCE / 2}], "captions": ["a red circle"]}) == []
    assert differences(run, {"logged": [{"loss": 1.0 + 3 * TOLERANCE}], "captions": ["a red circle"]}) == [
        ".logged[0].loss: 1.0 != 1.000003"]
    assert differences(run, {"logged": [{"loss": 1.0}], "captions": ["a red square"]}) == [
        ".captions[0]: 'a red circle' != 'a red square'"]
    big = {"perplexity": 180.0}
    assert differences(big, {"perplexity": 180.0 + 100 * TOLERANCE}) == []  # within its 7 float32 digits
    assert differences(big, {"perplexity": 180.0 + 300 * TOLERANCE}) == [".perplexity: 180.0 != 180.0003"]


def source_at(commit: str, into: Path) -> Path:
    """The project's src/ folder as it was at `commit`, from the git history of the checkout the tests run in."""
    repo = Path(__file__).parents[1]
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "src"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"needs the project's git history with commit {commit[:8]} (a clone, not a copy of the files)")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def test_a_run_started_before_the_package_move_resumes_after_it(golden_run, shapes_data, tmp_path):
    """Killed in its second stage by the code of before the move, resumed by today's: the same numbers as the golden
    run (uninterrupted, today's code) — run folders, checkpoints and run.json read the same across the move."""
    old_source = source_at(BEFORE_THE_PACKAGE_MOVE, tmp_path / "before")
    recipe = tmp_path / "golden.yaml"
    stages = [{**stage, "save_every": 1} for stage in RECIPE["stages"]]  # a checkpoint wherever the kill lands
    recipe.write_text(yaml.safe_dump({**RECIPE, "stages": stages, "data_root": str(shapes_data)}))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "verbovision", "train", str(recipe), "--out", str(run)]
    kill_at_step(command, run, 2, stage="lora", env={**CPU_ONLY, "PYTHONPATH": str(old_source)})
    verbo("train", str(recipe), "--out", str(run), "--resume")
    assert differences(golden_run["logged"], logged_numbers(run / "metrics.jsonl")) == []
