"""A stage's loop: each step prepared and taken by the stage's step runner (SFT or SCST), then logged, validated and
checkpointed."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..config.schema import Recipe, Stage
from ..data.records import SkipLog
from ..errors import DataError
from ..files import write_json
from ..model.trainable import train_mode
from ..progress import progress
from . import runinfo
from .distributed import Processes
from .epochs import epoch_groups, prepared_groups
from .outputs import finish_stage
from .scst import ScstSteps
from .setup import prepare_stage
from .sft import SftSteps
from .state import Shown, StageLoop, StageResult, StageSetup, TrainState, load_trainable, logged_values
from .validate import validate


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_stage(procs: Processes, recipe: Recipe, index: int, stage: Stage, base: str, stage_dir: Path, logger,
              run: dict, resume: bool) -> StageResult:
    """Train one stage from `base` (with `resume`: from its latest checkpoint on) and save what it produced."""
    setup = start_stage(procs, recipe, index, stage, base, stage_dir, run)
    runner = step_runner(recipe, stage, setup)  # before resuming: SCST keeps the model it starts from
    state, core = TrainState(), setup.model  # core: the model itself, whatever wraps it for several processes
    if resume:  # from the latest checkpoint, else from the stage's start: the steps after it are about to be redone
        state.load(procs, stage_dir / "checkpoints", core, setup.optimizer, setup.scheduler)
        logger.forget_after(stage.name, state.step, state.elapsed)
    setup.model, setup.optimizer = procs.prepare(core, setup.optimizer)
    bar = progress(setup.total_steps, state.step, f"stage {index} {stage.name}", enabled=procs.is_main_process)
    loop = StageLoop(stage, setup, state, core, recipe.seed, stage_dir, logger, bar)
    train_mode(core)
    while state.step < setup.total_steps and not state.stopped:
        train_epoch(loop, runner)
    bar.close()
    return end_stage(loop, base, run)


def start_stage(procs: Processes, recipe: Recipe, index: int, stage: Stage, base: str, stage_dir: Path,
                run: dict) -> StageSetup:
    """Set the stage up (its seed from its index) and say what it is about to do: printed, and in run.json."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(recipe.seed + index)
    setup = prepare_stage(procs, recipe, stage, base, stage_dir.parents[1])
    if procs.is_main_process:
        print("\n".join(runinfo.summary_lines(index, setup.summary)), flush=True)
        run.setdefault("summary", {})[stage.name] = setup.summary
        write_json(stage_dir.parents[1] / "run.json", run)
    return setup


def train_epoch(loop: StageLoop, runner: StepRunner) -> None:
    """Step through the rest of the current epoch, until it or the stage ends; an epoch that ends moves the state on
    to the next one."""
    state, stage = loop.state, loop.stage
    epoch = partial(epoch_groups, runner.sources, stage, loop.seed, state.epoch, state.step_in_epoch,
                    loop.setup.procs.world_size)
    for prepared, stream_skips, end_of_epoch in prepared_groups(epoch, runner.prepare, stage.data_workers):
        for reason, record_id in stream_skips:
            state.record_skip(reason, record_id)
        values = runner.step(prepared, state)  # forward, loss, backward, optimizer step; {} if all were skipped
        state.trained_in_epoch += bool(values)
        # Before the step is counted, validated and checkpointed (--resume would take the checkpoint for the stage
        # done): an epoch, or a stage that ends in its first one, that learned from nothing.
        ends_stage = state.step + 1 >= loop.setup.total_steps
        if not state.trained_in_epoch and (end_of_epoch or ends_stage and state.epoch == 0):
            raise nothing_usable(stage, state)
        after_step(loop, values, end_of_epoch)
        if state.step >= loop.setup.total_steps or state.stopped:
            return
    if not state.trained_in_epoch:  # an epoch of no group at all
        raise nothing_usable(stage, state)
    state.epoch += 1
    state.step_in_epoch = state.trained_in_epoch = 0


def nothing_usable(stage: Stage, state: TrainState) -> DataError:
    return DataError(f"stage {stage.name}: an epoch of the training data gave no usable example "
                     f"({SkipLog.from_dict(state.skipped).describe()})")


def after_step(loop: StageLoop, values: dict, end_of_epoch: bool) -> None:
    """Count the step; log it, validate and checkpoint where they are due."""
    state, stage, setup = loop.state, loop.stage, loop.setup
    state.step += 1
    state.step_in_epoch += 1
    if values:
        loop.bar.set_postfix(loss=Shown(values["loss"]))
    loop.bar.update(1)
    last = state.step == setup.total_steps
    if values and (state.step % stage.log_every == 0 or last):  # else the step's values are read only where shown
        loop.logger.log(stage=stage.name, step=state.step, epoch=state.epoch, **logged_values(values),
                        **learning_rates(stage, setup.scheduler))
    eval_now = state.step % stage.eval_every == 0 if stage.eval_every else end_of_epoch
    if setup.val_examples and (eval_now or last):
        validate(loop)
    if checkpoint_due(stage, state, setup.steps_per_epoch, end_of_epoch) or last:
        # The stage's last step too: a run stopped while saving the stage's model resumes without redoing steps.
        checkpoint(loop)


def learning_rates(stage: Stage, scheduler) -> dict[str, float]:
    """The learning rates now, as logged: `lr` of the components that train at the stage's lr, and `lr_<component>`
    of each with a rate of its own (lr_vision...); not the first parameter group's alone, whatever its component."""
    rates = {}
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        component = group["name"].split(".")[0]  # vision, vision.no_decay, ...
        rates.setdefault(f"lr_{component}" if getattr(stage, f"lr_{component}") is not None else "lr", lr)
    return rates


def checkpoint_due(stage: Stage, state: TrainState, steps_per_epoch: int, end_of_epoch: bool) -> bool:
    """save_every N: every N optimizer steps; null: twice per epoch, halfway and at its end. Any step is a point to
    resume at (the state says the epoch and the step in it, and the epoch's order comes from its seed), so the end of
    an epoch needs no checkpoint of its own."""
    if stage.save_every:
        return state.step % stage.save_every == 0
    return end_of_epoch or state.step_in_epoch == max(1, steps_per_epoch // 2)


def checkpoint(loop: StageLoop) -> None:
    """Save the stage's state for --resume; sharded, every process sends its parts and the main one writes."""
    procs, setup = loop.setup.procs, loop.setup
    loop.state.elapsed = loop.logger.elapsed()
    if procs.is_main_process or procs.sharded:
        loop.state.save(procs, loop.stage_dir / "checkpoints", loop.core, setup.optimizer, setup.scheduler,
                        keep=loop.stage.keep)
    procs.barrier()


def end_stage(loop: StageLoop, base: str, run: dict) -> StageResult:
    """The stage's model saved (its best weights, where kept), its skipped records in `run`; on every process."""
    stage, setup, state, procs = loop.stage, loop.setup, loop.state, loop.setup.procs
    if stage.keep_best and (loop.stage_dir / "best.safetensors").exists():
        load_trainable(procs, loop.core, loop.stage_dir / "best.safetensors")
    setup.skips.merge(SkipLog.from_dict(state.skipped))
    run.setdefault("skipped", {})[stage.name] = setup.skips.as_dict()
    result = None
    if procs.is_main_process or procs.sharded:
        result = finish_stage(procs, loop.core, setup.processor, stage, base, loop.stage_dir, setup.uses_lora,
                              setup.collator.encoder)
    result = procs.broadcast_object(result)  # the others wait here until the stage's model is saved
    result.steps, result.best = state.step, state.best
    return result


class StepRunner(Protocol):
    """A kind of stage's training step: run_stage prepares each group of `grad_accum` global micro-batches of
    `sources` (possibly in a data worker), then steps on it."""

    sources: list
    """The stage's training examples, as (examples, weight) per source (or a StreamMix)."""

    def prepare(self, group: list[list]) -> object:
        """This process's part of the group, ready to step on."""

    def step(self, prepared, state: TrainState) -> dict:
        """One optimizer step; returns what to log (`loss` included), or nothing when every example was skipped."""


STEP_RUNNERS: dict[str, type[StepRunner]] = {"sft": SftSteps, "scst": ScstSteps}
"""The step runner of each stage type (config.schema.STAGE_TYPES)."""


def step_runner(recipe: Recipe, stage: Stage, setup: StageSetup) -> StepRunner:
    return STEP_RUNNERS[stage.type](recipe, stage, setup)
