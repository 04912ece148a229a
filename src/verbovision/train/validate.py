"""Validation during a stage: the loss on the validation records, a generation metric, the best step kept and early
stopping."""

from __future__ import annotations

from functools import partial

from ..config.schema import BEST_METRICS, Stage
from ..data.encoding import Encoder
from ..model.loss import validation_loss
from ..model.trainable import evaluating
from .state import StageLoop, compute_precision, save_trainable


def validate(loop: StageLoop) -> None:
    """Validation loss (and the generation metric picking the best checkpoint) where the model runs (sharded: on
    every process, the main one logging); keep the best; early stopping. Every process then goes on with the main
    one's best value and verdict."""
    state, procs = loop.state, loop.setup.procs
    if procs.is_main_process or procs.sharded:
        values = validation_values(loop)
        loop.logger.log(stage=loop.stage.name, step=state.step, epoch=state.epoch, **values)
        track_best(loop, values)
    state.best, state.bad_evals, state.stopped = procs.broadcast_object((state.best, state.bad_evals, state.stopped))


def validation_values(loop: StageLoop) -> dict[str, float]:
    setup, stage = loop.setup, loop.stage
    values = {"val_loss": validation_loss(loop.core, setup.collator, setup.val_examples, stage.batch_size,
                                          setup.device, precision=partial(compute_precision, setup))}
    if stage.best_metric != "val_loss":
        with compute_precision(setup):  # as the training forward computes
            values[f"val_{stage.best_metric}"] = generation_metric(loop.core, setup.collator.encoder,
                                                                   setup.val_records, stage)
    if setup.benchmarks:
        with compute_precision(setup):
            values.update(benchmark_values(loop.core, setup.collator.encoder, setup.benchmarks, stage))
    return values


def track_best(loop: StageLoop, values: dict[str, float]) -> None:
    """Keep the best weights so far (keep_best); count the validations without progress (early_stopping)."""
    stage, state = loop.stage, loop.state
    value = values["val_loss"] if stage.best_metric == "val_loss" else values[f"val_{stage.best_metric}"]
    lower_is_better = stage.best_metric == "val_loss"
    if state.best is None or (value < state.best if lower_is_better else value > state.best):
        state.best, state.bad_evals = value, 0
        if stage.keep_best:
            save_trainable(loop.setup.procs, loop.core, loop.stage_dir / "best.safetensors")
    else:
        state.bad_evals += 1
        state.stopped = bool(stage.early_stopping and state.bad_evals >= stage.early_stopping)


def benchmark_values(model, encoder: Encoder, benchmarks: list[tuple], stage: Stage) -> dict[str, float]:
    """Each benchmark's values on its sampled items, greedy with its own token limit, as `<benchmark>/<metric>`."""
    from ..evaluate.benchmarks.run import replies_for
    from ..infer.options import DecodeOptions
    from ..infer.vlm import VLM

    values = {}
    with evaluating(model):
        vlm = VLM.from_loaded(model, encoder.processor, stage.template)
        for benchmark, items in benchmarks:
            generations = replies_for(items, vlm, DecodeOptions(benchmark.max_new_tokens), stage.batch_size)
            result = benchmark.score(items, {item.id: g.text for item, g in zip(items, generations)})
            values.update({f"{benchmark.name}/{metric}": value for metric, value in result.values.items()})
    return values


def generation_metric(model, encoder: Encoder, records, stage: Stage) -> float:
    """Greedy replies to the validation records, scored by the stage's best_metric."""
    from ..evaluate.metrics import score
    from ..infer.vlm import VLM

    with evaluating(model):
        vlm = VLM.from_loaded(model, encoder.processor, stage.template)
        replies = vlm.generate_records(records, batch_size=stage.batch_size)
    result = score({r.id: reply for r, reply in zip(records, replies)}, {r.id: r.references for r in records},
                   [stage.best_metric], ci=False)
    return result.values[BEST_METRICS[stage.best_metric]]
