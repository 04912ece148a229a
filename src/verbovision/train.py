"""`verbo train`: run a recipe's stages, each starting from the previous stage's model.

Run folder layout:
    config.yaml           the resolved recipe
    run.json              metadata: versions, git commit, data fingerprints, stage outputs, adapters and their bases
    init/                 the built model (when the recipe builds one)
    stages/<i>-<name>/    checkpoints/step-N/ (for --resume), best.safetensors, adapter/, model/
    final -> ...          the last stage's model (or adapter)
    metrics.jsonl, tensorboard/, loss.png, report.md
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import yaml
from PIL import Image
from transformers import get_scheduler

from . import runinfo
from .build import build_vlm, save_model, spec_record
from .data import (
    Collated,
    Collator,
    DataError,
    Encoded,
    Encoder,
    SkipLog,
    encode_sources,
    epoch_order,
    iter_batches,
    length_grouped,
    pack_examples,
    require_usable,
    skip_entry,
    source_path,
    source_records,
    with_trained_template,
)
from .distributed import Processes
from .errors import ConfigError
from .families import family_of
from .features import FeatureCache
from .loss import token_loss, validation_loss
from .merge import merge_adapter, merge_verified
from .preflight import check_data_files, check_stages
from .progress import progress
from .quantize import is_quantized
from .recipe import BEST_METRICS, Recipe, Stage, to_dict
from .scst import ScstSteps
from .store import (
    ADAPTER_METADATA,
    MODEL_METADATA,
    default_device,
    load_model,
    read_json,
    save_processor,
    write_atomic,
    write_json,
)
from .streams import StreamMix, is_stream
from .tokenizer import train_bpe_tokenizer
from .trainable import (
    configure_trainable,
    disable_checkpointing,
    enable_checkpointing,
    evaluating,
    param_groups,
    train_mode,
)
from .trainstate import StageSetup, TrainState, load_trainable, optimizer_step, save_trainable


@dataclass
class StageResult:
    name: str
    model_dir: str
    adapter_dir: str | None
    steps: int
    best: float | None
    """Best validation value of the stage's best_metric."""
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_recipe(recipe: Recipe, out: str | Path, resume: bool = False) -> dict:
    """Run the recipe's stages into the run folder `out`. A run that fails before its first step (a mistyped path, a
    stage that cannot start) takes back what it wrote into a new or empty `out`: there is nothing to resume, and the
    corrected command then runs as typed. An interrupted one (Ctrl-C) keeps it for --resume."""
    out = Path(out)
    check_data_files(recipe)
    absent = not out.exists()
    fresh = absent or not any(out.iterdir())
    procs = Processes()  # this run's processes: one, unless launched by --nproc or `accelerate launch`
    try:
        return run_recipe(procs, recipe, out, resume)
    except Exception:
        if fresh and procs.is_main_process and not took_a_step(out):
            remove_failed_start(out, absent)
        raise


def took_a_step(out: Path) -> bool:
    """Whether a run has logged, checkpointed or finished anything of a stage."""
    stages = out / "stages"
    return ((out / "metrics.jsonl").exists() or any(stages.glob("*/checkpoints/*"))
            or any(stages.glob("*/done.json")))


def remove_failed_start(out: Path, absent: bool) -> None:
    """Remove what a run that never took a step wrote: the folder, or (where it was there, empty) what is in it."""
    for path in [out] if absent else list(out.iterdir()):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_recipe(procs: Processes, recipe: Recipe, out: Path, resume: bool) -> dict:
    if procs.is_main_process and out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out}: run folder exists and is not empty; pass --resume to continue it or choose --out")
    procs.barrier()
    out.mkdir(parents=True, exist_ok=True)
    run = read_json(out / "run.json") or runinfo.describe_run(recipe)
    if procs.is_main_process:
        write_atomic(out / "config.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True))
        write_json(out / "run.json", run)
    seed_everything(recipe.seed)
    base = procs.main_process_first(lambda: initial_model(recipe, out, run))
    check_stages(recipe, base)
    logger = runinfo.MetricsLogger(out, write=procs.is_main_process)
    results = []
    for index, stage in enumerate(recipe.stages):
        stage_dir = out / "stages" / f"{index}-{stage.name}"
        done = read_json(stage_dir / "done.json")
        if done:
            result = StageResult(**done)
        else:
            result = run_stage(procs, recipe, index, stage, base, stage_dir, logger, run, resume)
            if procs.is_main_process:
                write_json(stage_dir / "done.json", result.__dict__)
            procs.barrier()
        results.append(result)
        base = result.model_dir
        run.setdefault("stages", {})[stage.name] = {k: v for k, v in result.__dict__.items() if k != "history"}
        if result.adapter_dir:
            run.setdefault("adapters", [])
            rel = str(Path(result.adapter_dir).relative_to(out))
            if rel not in run["adapters"]:
                run["adapters"].append(rel)
        if procs.is_main_process:
            write_json(out / "run.json", run)
    logger.close()
    if procs.is_main_process:
        final = out / "final"
        if final.is_symlink() or final.exists():
            final.unlink()
        final.symlink_to(Path(results[-1].model_dir).relative_to(out))
        runinfo.plot_losses(out)
    procs.barrier()
    return run


def initial_model(recipe: Recipe, out: Path, run: dict) -> str:
    """The model the first stage starts from: an existing VLM, or one built (and saved to init/) for this run."""
    if recipe.model.from_:
        return recipe.model.from_
    init = out / "init"
    if (init / "config.json").exists():
        return str(init)
    spec = recipe.model.spec()
    tokenizer = None
    if not spec.language.name:
        tokenizer = train_bpe_tokenizer(training_texts(recipe), spec.image_token, spec.language.vocab_size)
    model, processor = build_vlm(spec, tokenizer)
    metadata = {"model_spec": spec_record(spec), "template": recipe.stages[0].template}
    save_model(model, processor, init, metadata)
    run["init"] = {"parameters": sum(p.numel() for p in model.parameters()), "architecture": type(model).__name__}
    return str(init)


def training_texts(recipe: Recipe):
    """Every turn of every training source, plus the chat template's role names, for training a tokenizer. A source
    with no usable record is an error here already (as it is when its stage starts): a tokenizer trained without its
    text would be kept in init/ by --resume."""
    yield "user assistant system\n"
    root = Path(recipe.data_root)
    for stage in recipe.stages:
        for what, sources in (("training records", stage.data.train), ("validation records", stage.data.val)):
            for source in sources:
                skips, usable = SkipLog(), 0
                for record in source_records(source, root, skips):
                    usable += 1
                    for turn in record.turns:
                        yield turn.text
                require_usable(usable, skips, f"{what} in {source_path(source, root)}", f"stage {stage.name}")


def prepare_stage(procs: Processes, recipe: Recipe, stage: Stage, base: str, run_dir: Path) -> StageSetup:
    """Load the base, set what trains, tokenize the data once (and cache vision features), build the optimizer."""
    model, processor = load_model(base, device=default_device(), quantize=recipe.model.quantize)
    # First: it refuses the families whose texts VerboVision cannot write, before anything is set up for them.
    encoder = Encoder(processor, stage.template, stage.max_length, stage.truncation, family_of(model.config))
    if is_quantized(model):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(stage.gradient_checkpointing))
    model, uses_lora = configure_trainable(model, stage)
    if stage.gradient_checkpointing:
        enable_checkpointing(model, stage.gradient_checkpointing)
    if stage.bf16 and model.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"stage {stage.name}: bf16: this GPU does not support bfloat16")
    if stage.compile:
        # In place: parameter names (checkpoints, adapters) stay as they are. Dynamic shapes: every batch has its
        # own padded length, which would otherwise recompile.
        model.compile(backend=stage.compile, dynamic=True)
    skips = SkipLog()
    val_tally, train_tally = [], []
    val_sources = encode_sources(stage.data.val, encoder, Path(recipe.data_root), skips, "validation records",
                                 f"stage {stage.name}", val_tally, report=procs.is_main_process)
    if any(is_stream(source) for source in stage.data.train):  # read as it trains: no cache, no epoch up front
        train_sources = StreamMix(stage.data.train, encoder, Path(recipe.data_root), stage.stream_buffer,
                                  stage.stream_shards, recipe.seed)
        features = None
        train_tally = [{"source": source.path, "streamed": True} for source in stage.data.train]
    else:
        train_sources = encode_sources(stage.data.train, encoder, Path(recipe.data_root), skips, "training records",
                                       f"stage {stage.name}", train_tally, report=procs.is_main_process)
        features = feature_cache(procs, model, processor, stage, run_dir, train_sources + val_sources, skips)
        recount(train_tally + val_tally, train_sources + val_sources)
    if stage.packing:
        encoder.family.check_packing()
    steps_per_epoch, total_steps = stage_length(train_sources, stage, recipe.seed, skips, procs.world_size)
    summary = runinfo.stage_summary(stage, {"train": train_tally, "validation": val_tally}, model, steps_per_epoch,
                                    total_steps, procs.world_size, recipe.model.quantize)
    optimizer = torch.optim.AdamW(param_groups(model, stage), betas=(0.9, 0.999), fused=True)
    warmup = int(stage.warmup * total_steps) if stage.warmup < 1 else int(stage.warmup)
    scheduler_name = "constant_with_warmup" if stage.schedule == "constant" else stage.schedule
    scheduler = get_scheduler(scheduler_name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    collator = Collator(encoder, features=features, cache_pixels=stage.cache_pixels)
    return StageSetup(procs, model, next(model.parameters()).device, processor, uses_lora, collator, train_sources,
                      epoch_order(val_sources, seed=0, shuffle=False), validation_records(recipe, stage), optimizer,
                      scheduler, steps_per_epoch, total_steps, skips, summary)


def recount(tally: list[dict], sources: list) -> None:
    """Each source's counts after the feature cache, which skips the examples whose images it could not encode."""
    for row, (examples, _) in zip(tally, sources):
        row["skipped"] += row["usable"] - len(examples)
        row["usable"] = len(examples)


def stage_length(sources, stage: Stage, seed: int, skips: SkipLog, world_size: int) -> tuple[int, int]:
    """Optimizer steps per epoch and in all, `world_size` processes training. A stream that does not say its length
    trains `max_steps`, and its "epoch" (for the default checkpoint interval) is then the whole stage."""
    batch_size = stage.batch_size * world_size
    if isinstance(sources, StreamMix):
        rows = sources.rows_per_epoch()
        if rows is None and not stage.max_steps:
            raise ConfigError(f"stage {stage.name}: the streamed training data does not say how many rows it has; "
                              "set max_steps")
        per_epoch = math.ceil(rows / batch_size) if rows is not None else stage.max_steps * stage.grad_accum
    else:
        per_epoch = len(epoch_batches(sources, stage, seed=seed * 1000, batch_size=batch_size))
    if per_epoch == 0:
        raise DataError(f"stage {stage.name}: no usable training records ({skips.describe()})")
    steps_per_epoch = math.ceil(per_epoch / stage.grad_accum)
    return steps_per_epoch, stage.max_steps or math.ceil(stage.epochs * steps_per_epoch)


def run_stage(procs: Processes, recipe: Recipe, index: int, stage: Stage, base: str, stage_dir: Path, logger,
              run: dict, resume: bool) -> StageResult:
    """Train one stage from `base` (with `resume`: from its latest checkpoint on) and save what it produced."""
    setup = start_stage(procs, recipe, index, stage, base, stage_dir, run)
    runner = step_runner(recipe, stage, setup)  # before resuming: SCST keeps the model it starts from
    state, core = TrainState(), setup.model  # core: the model itself, whatever wraps it for several processes
    if resume and state.load(procs, stage_dir / "checkpoints", core, setup.optimizer, setup.scheduler):
        logger.forget_after(stage.name, state.step)  # those steps are about to be redone
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
    if procs.distributed and stage.type == "scst":
        raise ConfigError(f"stage {stage.name}: scst stages run in one process (several are not supported yet)")
    setup = prepare_stage(procs, recipe, stage, base, stage_dir.parents[1])
    if procs.is_main_process:
        print("\n".join(runinfo.summary_lines(index, setup.summary)), flush=True)
        run.setdefault("summary", {})[stage.name] = setup.summary
        write_json(stage_dir.parents[1] / "run.json", run)
    return setup


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


def train_epoch(loop: StageLoop, runner: StepRunner) -> None:
    """Step through the rest of the current epoch, until it or the stage ends; an epoch that ends moves the state on
    to the next one."""
    state, stage = loop.state, loop.stage
    trained = state.step_in_epoch  # steps of this epoch that learned from something (resumed ones did)
    epoch = partial(epoch_groups, runner.sources, stage, loop.seed, state.epoch, state.step_in_epoch,
                    loop.setup.procs.world_size)
    for prepared, stream_skips, end_of_epoch in prepared_groups(epoch, runner.prepare, stage.data_workers):
        for reason, record_id in stream_skips:
            state.record_skip(reason, record_id)
        values = runner.step(prepared, state)  # forward, loss, backward, optimizer step; {} if all were skipped
        trained += bool(values)
        after_step(loop, values, end_of_epoch)
        if state.step >= loop.setup.total_steps or state.stopped:
            return
    if not trained:
        raise DataError(f"stage {stage.name}: an epoch of the training data gave no usable example "
                        f"({SkipLog.from_dict(state.skipped).describe()})")
    state.epoch += 1
    state.step_in_epoch = 0


def after_step(loop: StageLoop, values: dict, end_of_epoch: bool) -> None:
    """Count the step; log it, validate and checkpoint where they are due."""
    state, stage, setup = loop.state, loop.stage, loop.setup
    state.step += 1
    state.step_in_epoch += 1
    if values:
        loop.bar.set_postfix(loss=f"{values['loss']:.4f}")
    loop.bar.update(1)
    last = state.step == setup.total_steps
    if values and (state.step % stage.log_every == 0 or last):
        loop.logger.log(stage=stage.name, step=state.step, epoch=state.epoch, **values,
                        lr=setup.scheduler.get_last_lr()[0])
    eval_now = state.step % stage.eval_every == 0 if stage.eval_every else end_of_epoch
    if setup.val_examples and (eval_now or last):
        validate(loop)
    if state.step % (stage.save_every or max(1, setup.steps_per_epoch // 2)) == 0 or end_of_epoch:
        checkpoint(loop)


def checkpoint(loop: StageLoop) -> None:
    """Save the stage's state for --resume; sharded, every process sends its parts and the main one writes."""
    procs, setup = loop.setup.procs, loop.setup
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


def prepared_groups(epoch: Callable[[], Iterator], prepare: Callable, workers: int) -> Iterator:
    """`epoch()`'s groups with each group prepared (a process's micro-batches collated: images read and processed),
    in this process or, with `workers`, ahead of time in DataLoader worker processes."""
    if not workers:
        return ((prepare(group), skips, end) for group, skips, end in epoch())
    # A generator of its own: seeding the workers from the global one would shift the training's dropout masks.
    loader = torch.utils.data.DataLoader(PreparedGroups(epoch, prepare), batch_size=None, num_workers=workers,
                                         generator=torch.Generator())
    return iter(loader)


class PreparedGroups(torch.utils.data.IterableDataset):
    """An epoch's groups prepared by DataLoader workers: of W workers, worker w prepares groups w, w + W, ...; the
    DataLoader takes one from each worker in turn, so they arrive in the epoch's order, the same as without workers.
    Each worker walks the whole epoch (a stream is read by every worker), preparing only its share."""

    def __init__(self, epoch: Callable[[], Iterator], prepare: Callable):
        self.epoch, self.prepare = epoch, prepare

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        for index, (group, skips, end) in enumerate(self.epoch()):
            if index % worker.num_workers == worker.id:
                yield self.prepare(group), skips, end


def epoch_groups(sources, stage: Stage, seed: int, epoch: int, start: int,
                 world_size: int) -> Iterator[tuple[list, list, bool]]:
    """Epoch `epoch` from its group `start` on (a resumed run): (group of `grad_accum` global micro-batches, records
    a stream skipped while building it, whether it ends the epoch)."""
    batch_size = stage.batch_size * world_size
    if isinstance(sources, StreamMix):
        groups = stream_groups(sources.examples(epoch), batch_size, stage.grad_accum)
    else:
        micro_batches = epoch_batches(sources, stage, seed=seed * 1000 + epoch, batch_size=batch_size)
        groups = ((micro_batches[i : i + stage.grad_accum], []) for i in range(0, len(micro_batches),
                                                                                stage.grad_accum))
    groups = islice(groups, start, None)  # a stream replays what it had read (text only, no image decoded)
    current = next(groups, None)
    for following in groups:
        yield *current, False
        current = following
    if current is not None:
        yield *current, True


def stream_groups(items: Iterator, batch_size: int, grad_accum: int) -> Iterator[tuple[list, list]]:
    """Groups of `grad_accum` micro-batches of streamed examples, each with the skips met while filling it (the
    stream's last ones go with its last group)."""
    group, batch, skipped = [], [], []
    for example, skip in items:
        if skip:
            skipped.append(skip)
            continue
        batch.append(example)
        if len(batch) == batch_size:
            group, batch = group + [batch], []
        if len(group) == grad_accum:
            yield group, skipped
            group, skipped = [], []
    if batch or group:
        yield group + ([batch] if batch else []), skipped


def epoch_batches(sources: list, stage: Stage, seed: int, batch_size: int | None = None) -> list[list]:
    """One epoch's micro-batches of `batch_size` (default the stage's; all processes' together when several train):
    the sources mixed and shuffled, then packed or grouped by length as asked."""
    batch_size = batch_size or stage.batch_size
    order = epoch_order(sources, seed=seed)
    if stage.packing:
        order = pack_examples(order, stage.packing)
    elif stage.group_by_length:
        order = length_grouped(order, batch_size, seed)
    return list(iter_batches(order, batch_size))


class StepRunner(Protocol):
    """A kind of stage's training step: run_stage prepares each group of `grad_accum` global micro-batches of
    `sources` (possibly in a data worker), then steps on it."""

    sources: list
    """The stage's training examples, as (examples, weight) per source (or a StreamMix)."""

    def prepare(self, group: list[list]) -> object:
        """This process's part of the group, ready to step on."""

    def step(self, prepared, state: TrainState) -> dict:
        """One optimizer step; returns what to log (`loss` included), or nothing when every example was skipped."""


class SftSteps:
    """The optimizer step of a supervised stage: the next-token loss of the replies, over groups of `grad_accum`
    global micro-batches of encoded examples, each process taking its share of every micro-batch."""

    def __init__(self, recipe: Recipe, stage: Stage, setup: StageSetup):
        self.stage, self.setup = stage, setup
        self.family = setup.collator.encoder.family
        self.sources = setup.train_sources

    def prepare(self, group: list[list[Encoded]]) -> list[tuple[Collated, float]]:
        """This process's share of each micro-batch, collated (images read and processed), with its loss weight."""
        shards = [self.setup.procs.shard(micro_batch, self.stage.batch_size) for micro_batch in group]
        return [(self.setup.collator(examples), weight) for examples, weight in shards]

    def step(self, prepared: list[tuple[Collated, float]], state: TrainState) -> dict:
        """One optimizer step over the group's micro-batches; the loss is averaged over all their target tokens, in
        every process. Returns the loss and the gradient norm; nothing when the step has no target (every example
        skipped), in which case no process updates the weights (AdamW would still decay them)."""
        procs = self.setup.procs
        skipped = [item for collated, weight in prepared for item in collated.skipped if weight]
        for reason, record_id in procs.all_gather_object(skipped):
            state.record_skip(reason, record_id)
        batches = [(collated.batch, weight) for collated, weight in prepared]
        n_targets = procs.all_reduce_sum(sum(weight * int((b["labels"][:, 1:] != -100).sum()) for b, weight in batches))
        if not n_targets:  # as the Trainer does when it skips an optimizer step, the schedule waits too
            return {}
        total = 0.0
        for batch, weight in batches:
            if batch["input_ids"].shape[0]:
                total += self.backward(batch, weight, n_targets)
        grad_norm = optimizer_step(self.setup, self.stage)
        return {"loss": procs.all_reduce_sum(total), "grad_norm": grad_norm}

    def backward(self, batch: dict, weight: float, n_targets: float) -> float:
        """Accumulate the gradient of one micro-batch's part of the step's loss; returns that part."""
        setup, procs = self.setup, self.setup.procs
        core = procs.unwrap_model(setup.model)
        with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=self.stage.bf16):
            loss = weight * token_loss(setup.model, batch, setup.device, self.family, reduction="sum",
                                       core=core) / max(1, n_targets)
        if procs.distributed:
            loss = loss + vision_keepalive(core, setup.collator.encoder, batch, setup.device)
        procs.backward(loss)
        return loss.item()


STEP_RUNNERS: dict[str, type[StepRunner]] = {"sft": SftSteps, "scst": ScstSteps}
"""The step runner of each stage type (recipe.STAGE_TYPES)."""


def step_runner(recipe: Recipe, stage: Stage, setup: StageSetup) -> StepRunner:
    return STEP_RUNNERS[stage.type](recipe, stage, setup)


def feature_cache(procs: Processes, model, processor, stage: Stage, run_dir: Path, sources,
                  skips: SkipLog) -> FeatureCache | None:
    """Encode every image once when the vision tower is frozen; examples whose images fail are skipped."""
    # SCST generates, and generation runs the vision tower on pixels: cached features would go unused.
    if not stage.feature_cache or stage.type == "scst" or stage.train.get("vision", "frozen") != "frozen":
        return None
    if procs.distributed:  # one cache folder, written by one process: not yet; pixels every step instead
        print("feature cache: off when several processes train")
        return None
    family = family_of(model.config)
    if not family.caches_features:
        print(f"feature cache: not available for {family.name} models; vision features are computed every step")
        return None
    cache = FeatureCache(run_dir / "feature_cache", model, processor, stage.feature_cache_dtype)
    failed = cache.ensure([p for examples, _ in sources for e in examples for p in e.images])
    for examples, _ in sources:
        for example in [e for e in examples if any(p in failed for p in e.images)]:
            reason = next(failed[p] for p in example.images if p in failed)
            skips.add(*skip_entry(example.record_id, DataError(reason)))
            examples.remove(example)
    return cache


def vision_keepalive(model, encoder: Encoder, batch: dict, device) -> torch.Tensor:
    """0 x the vision tower's output on a blank image, for a text-only micro-batch: every process then runs the
    vision path each step, so no collective (DDP's gradient reduction, ZeRO-3's parameter gathering) waits forever
    on a process that skipped it."""
    if not encoder.family.images_in_text or "pixel_values" in batch or "image_features" in batch:
        return torch.zeros((), device=device)
    blank = encoder.pixel_inputs([Image.new("RGB", (64, 64))])
    out = model.get_image_features(**{k: v.to(device) for k, v in blank.items()})
    tensors = [t for value in (out.values() if isinstance(out, dict) else [out]) for t in _tensors(value)]
    return 0.0 * sum(t.float().sum() for t in tensors)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


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
                                          setup.device)}
    if stage.best_metric != "val_loss":
        values[f"val_{stage.best_metric}"] = generation_metric(loop.core, setup.collator.encoder, setup.val_records,
                                                               stage)
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


def generation_metric(model, encoder: Encoder, records, stage: Stage) -> float:
    """Greedy replies to the validation records, scored by the stage's best_metric."""
    from .evaluate.metrics import score
    from .infer import VLM

    with evaluating(model):
        vlm = VLM.from_loaded(model, encoder.processor, stage.template)
        replies = vlm.generate_records(records, batch_size=stage.batch_size)
    result = score({r.id: reply for r, reply in zip(records, replies)}, {r.id: r.references for r in records},
                   [stage.best_metric], ci=False)
    return result.values[BEST_METRICS[stage.best_metric]]


def validation_records(recipe: Recipe, stage: Stage) -> list:
    """The first `best_metric_records` validation records with references, for generation metrics."""
    if stage.best_metric == "val_loss":
        return []
    records = [r for source in stage.data.val
               for r in source_records(source, Path(recipe.data_root), SkipLog()) if r.references]
    return records[: stage.best_metric_records]


def finish_stage(procs: Processes, model, processor, stage: Stage, base: str, stage_dir: Path, uses_lora: bool,
                 encoder: Encoder) -> StageResult | None:
    """Save what the stage produced: a full model, or an adapter (and, with merge: true, the verified merge).
    `encoder`: the stage's, whose layout the model was trained in and whose trained prompt (the caption prompt the
    stage's images came with most often, in the data's language) `verbo caption` asks by default (the base's stays
    where the stage had none; a caption-template model has none).
    Sharded (FSDP, DeepSpeed): every process calls it and sends its parts to the main process, which saves a whole
    copy (the base, set up as the stage trains it, on the CPU); the others return None."""
    if procs.sharded:
        # DeepSpeed keeps frozen parameters only in its compute dtype (bf16 on GPUs): those come from the base.
        state = procs.full_state(model, trainable_only=procs.deepspeed)
        if not procs.is_main_process:
            return None
        model, _ = configure_trainable(load_model(base, device="cpu")[0], stage)
        if model.load_state_dict(state, strict=not procs.deepspeed).unexpected_keys:
            raise KeyError("the gathered state does not fit the stage's model")
    model.eval()
    if stage.gradient_checkpointing:
        disable_checkpointing(model)
    metadata = {**(read_json(Path(base) / MODEL_METADATA) or {}), "template": encoder.template, "stage": stage.name,
                "base_model": base}
    if encoder.template == "caption":
        metadata.pop("prompt", None)
    elif encoder.trained_prompt is not None:
        metadata["prompt"] = encoder.trained_prompt
    if not uses_lora:
        save_model(model, processor, stage_dir / "model", metadata)
        return StageResult(stage.name, str(stage_dir / "model"), None, 0, None)
    adapter_dir = stage_dir / "adapter"
    model.save_pretrained(adapter_dir)
    save_processor(with_trained_template(processor, family_of(model.config), metadata), adapter_dir)
    write_json(adapter_dir / ADAPTER_METADATA, {"base_model": str(Path(base).resolve()) if Path(base).exists() else base,
                                                "stage": stage.name})
    write_json(adapter_dir / MODEL_METADATA, metadata)
    if not stage.merge:  # the last stage (parse_recipe sees to it): its adapter is the run's final model
        return StageResult(stage.name, str(adapter_dir), str(adapter_dir), 0, None)
    merged_dir = stage_dir / "model"
    if is_quantized(model.get_base_model()):  # QLoRA: merge onto the full-precision base, read from disk
        report = merge_adapter(adapter_dir, merged_dir)
    else:
        _, report = merge_verified(model, processor, merged_dir, base, str(adapter_dir), metadata)
    print(report.summary())
    return StageResult(stage.name, str(merged_dir), str(adapter_dir), 0, None)


def train_and_report(recipe: Recipe, out: Path, resume: bool = False, evaluation: dict | None = None) -> Path:
    """Train, then write report.md with the loss curves, skipped records and sample outputs of the final model."""
    from .report import sample_captions, write_report

    train_recipe(recipe, out, resume)
    return write_report(out, sample_captions(out / "final", recipe), evaluation)
