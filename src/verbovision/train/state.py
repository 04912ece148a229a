"""What a training stage works with and where it is: its set-up (model, data, optimizer, the run's processes), its
state (saved with each checkpoint for --resume), and the optimizer step every kind of stage ends its step with."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config.schema import Stage
from ..data.batching import Collator
from ..data.records import SkipLog
from ..files import read_json, replace_dir, write_json
from . import runinfo
from .distributed import Processes


@dataclass
class StageSetup:
    """Everything a stage's loop needs, built once before the first step."""

    procs: Processes
    """The run's training processes."""
    model: object
    """The model; once the loop starts, whatever wraps it for several processes (`procs.prepare`)."""
    device: torch.device
    processor: object
    uses_lora: bool
    collator: Collator
    train_sources: list
    val_examples: list
    val_records: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    steps_per_epoch: int
    total_steps: int
    skips: SkipLog
    summary: dict
    """What the stage is about to do (runinfo.stage_summary), printed and kept in run.json before its first step."""
    autocast: torch.dtype | None = None
    """What the forward passes compute in under autocast (setup.autocast_dtype); None: in the weights' dtype."""
    benchmarks: list = field(default_factory=list)
    """(benchmark, its sampled items) of each of the stage's eval_benchmarks (setup.benchmark_items)."""


def compute_precision(setup: StageSetup):
    """The stage's forward passes' context: autocast in `setup.autocast`, where there is one."""
    return torch.autocast(setup.device.type, dtype=setup.autocast or torch.bfloat16, enabled=setup.autocast is not None)


class DeviceSum:
    """A sum of scalar tensors left where they were computed and read only when the step is logged: reading a GPU
    value waits for every kernel queued before it, and a step that read its loss after each micro-batch would leave
    the GPU idle while the next one is prepared. `float()` reads it, summing the parts as Python floats in order."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def add(self, part: torch.Tensor) -> None:
        self.parts.append(part.detach())

    def __float__(self) -> float:
        return sum(float(part) for part in self.parts)


class Shown:
    """A step's value as the progress bar shows it: read when the bar is drawn (`progress`), not at every step."""

    def __init__(self, value, spec: str = ".4f") -> None:
        self.value, self.spec = value, spec

    def __str__(self) -> str:
        return format(float(self.value), self.spec)


def logged_values(values: dict) -> dict[str, float]:
    """A step's values as the numbers logged: tensors and device sums read here, once per logged step."""
    return {key: float(value) for key, value in values.items()}


def optimizer_step(setup: StageSetup, stage: Stage) -> float | torch.Tensor:
    """Clip the accumulated gradients, step, advance the schedule, clear the gradients; returns the gradient norm
    (before clipping), as a tensor on the device where one is computed (read when the step is logged)."""
    norm = setup.procs.step(setup.model, setup.optimizer, stage.max_grad_norm or float("inf"))  # clips, then steps
    setup.scheduler.step()
    setup.optimizer.zero_grad(set_to_none=True)
    return norm


def trainable_state(procs: Processes, model) -> dict[str, torch.Tensor]:
    """The trainable parameters as whole CPU tensors (sharded: every process calls it, the main process gets them)."""
    return procs.full_state(model, trainable_only=True)


def save_trainable(procs: Processes, model, path: Path) -> None:
    state = trainable_state(procs, model)
    if not procs.is_main_process:
        return
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def load_trainable(procs: Processes, model, path: Path) -> None:
    procs.load_state(model, load_file(str(path)))


@dataclass
class TrainState:
    """Where a stage is; saved with each checkpoint so --resume continues at the same data position."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    trained_in_epoch: int = 0
    """Steps of the current epoch that learned from something: an epoch that ends with none is an error, resumed or
    not (steps whose every record was skipped are counted in step_in_epoch too)."""
    best: float | None = None
    bad_evals: int = 0
    stopped: bool = False
    elapsed: float | None = None
    """Seconds since the run started (metrics.jsonl's `time`) when the checkpoint was written; None before."""
    skipped: dict = field(default_factory=dict)
    """Records skipped while batching (unreadable images), as SkipLog.as_dict(); restored with the checkpoint."""
    skipped_entries: list = field(default_factory=list)
    """The entries counted in `skipped`: a record skipped again in a later epoch is the same record, counted once."""

    def record_skip(self, reason: str, record_id: str) -> None:
        if record_id in self.skipped_entries:
            return
        self.skipped_entries.append(record_id)
        log = SkipLog.from_dict(self.skipped)
        log.add(reason, record_id)
        self.skipped = log.as_dict()

    def save(self, procs: Processes, folder: Path, model, optimizer, scheduler, keep: int = 2) -> None:
        """Write checkpoints/step-N via a temporary name (a kill mid-write leaves the previous ones intact).
        Sharded parameters: every process calls it; the main process writes."""
        trainable, optimizer_state = trainable_state(procs, model), procs.optimizer_state(model, optimizer)
        if not procs.is_main_process:
            return
        final = folder / f"step-{self.step:08d}"
        tmp = folder / f".{final.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all()}, tmp / "optimizer.pt")
        write_json(tmp / "state.json", self.__dict__)
        replace_dir(tmp, final)
        for old in sorted(folder.glob("step-*"))[:-keep]:
            shutil.rmtree(old)

    def load(self, procs: Processes, folder: Path, model, optimizer, scheduler) -> bool:
        """Restore the latest complete checkpoint, if any."""
        checkpoints = sorted(folder.glob("step-*"))
        if not checkpoints:
            return False
        latest = checkpoints[-1]
        saved = read_json(latest / "state.json")
        # A checkpoint written before trained_in_epoch was kept: its epoch's steps are taken to have learned, as then.
        saved.setdefault("trained_in_epoch", saved["step_in_epoch"])
        self.__dict__.update(saved)
        load_trainable(procs, model, latest / "trainable.safetensors")
        extra = torch.load(latest / "optimizer.pt", weights_only=False)
        procs.load_optimizer_state(model, optimizer, extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["rng"])
        if extra.get("cuda_rng"):  # dropout on a GPU draws from its own generator
            torch.cuda.set_rng_state_all(extra["cuda_rng"])
        return True


@dataclass
class StageResult:
    name: str
    model_dir: str
    adapter_dir: str | None
    steps: int
    best: float | None
    """Best validation value of the stage's best_metric."""
    history: list[dict] = field(default_factory=list)


@dataclass
class StageLoop:
    """What a stage's loop works with, from its first step to its saved model."""

    stage: Stage
    setup: StageSetup
    state: TrainState
    core: torch.nn.Module
    """The model itself (`setup.model` is whatever wraps it for several processes): validated, saved."""
    seed: int
    """The recipe's: each epoch's order derives from it."""
    stage_dir: Path
    logger: runinfo.MetricsLogger
    bar: object
    """The progress bar."""
