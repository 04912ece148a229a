"""Setting a stage up before its first step: the model, what trains, the data encoded once (vision features cached),
the optimizer and schedule."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import get_scheduler

from ..config.schema import Recipe, Stage
from ..data.batching import Collator
from ..data.encoding import Encoder
from ..data.records import SkipLog, skip_entry
from ..data.sources import encode_sources, epoch_order, source_records
from ..data.streams import StreamMix, is_stream
from ..errors import ConfigError, DataError
from ..families import family_of
from ..model.features import FeatureCache
from ..model.quantize import is_quantized
from ..model.store import default_device, is_adapter, load_model, resolve_dtype
from ..model.trainable import configure_trainable, enable_checkpointing, param_groups
from . import runinfo
from .distributed import Processes
from .epochs import epoch_batches
from .state import StageSetup


def prepare_stage(procs: Processes, recipe: Recipe, stage: Stage, base: str, run_dir: Path) -> StageSetup:
    """Load the base, set what trains, tokenize the data once (and cache vision features), build the optimizer."""
    model, processor, autocast = load_stage_model(recipe, stage, base)
    # First: it refuses the families whose texts VerboVision cannot write, before anything is set up for them.
    encoder = Encoder(processor, stage.template, stage.max_length, stage.truncation, family_of(model.config))
    if is_quantized(model):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(stage.gradient_checkpointing))
    model, uses_lora = configure_trainable(model, stage)
    if stage.gradient_checkpointing:
        enable_checkpointing(model, stage.gradient_checkpointing)
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
                                    total_steps, procs.world_size, recipe.model.quantize, autocast)
    optimizer = torch.optim.AdamW(param_groups(model, stage), betas=(0.9, 0.999), fused=True)
    warmup = int(stage.warmup * total_steps) if stage.warmup < 1 else int(stage.warmup)
    scheduler_name = "constant_with_warmup" if stage.schedule == "constant" else stage.schedule
    scheduler = get_scheduler(scheduler_name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    collator = Collator(encoder, features=features, cache_pixels=stage.cache_pixels)
    return StageSetup(procs, model, next(model.parameters()).device, processor, uses_lora, collator, train_sources,
                      epoch_order(val_sources, seed=0, shuffle=False), validation_records(recipe, stage), optimizer,
                      scheduler, steps_per_epoch, total_steps, skips, summary, autocast,
                      benchmark_items(recipe, stage))


def load_stage_model(recipe: Recipe, stage: Stage, base: str):
    """The stage's base in `model.dtype` on the best device, with its processor and the dtype its forward runs in
    under autocast (None: none)."""
    device = default_device()
    dtype = resolve_dtype(recipe.model.dtype, device)
    # A quantized base computes as bitsandbytes says; its other weights train in float32 (kbit preparation)
    autocast = autocast_dtype(torch.float32 if recipe.model.quantize != "none" else dtype, stage.bf16)
    if autocast == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"stage {stage.name}: bfloat16 (model.dtype or bf16): this GPU does not support it; use "
                          "model.dtype: float32 and bf16: false")
    model, processor = load_model(base, device=device, dtype=dtype, quantize=recipe.model.quantize,
                                  attention=recipe.model.attn_implementation)
    if is_adapter(base):  # `model.from:` an adapter: the stage trains the model it makes, merged
        model = model.merge_and_unload()
    return model, processor, autocast


def autocast_dtype(weights: torch.dtype, bf16: bool) -> torch.dtype | None:
    """What a stage's forward computes in under autocast: 16-bit weights' own dtype (what trains is float32 and
    meets them there), else bfloat16 where the stage's `bf16` asks it of float32 weights, else nothing."""
    if weights in (torch.bfloat16, torch.float16):
        return weights
    return torch.bfloat16 if bf16 else None


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


def benchmark_items(recipe: Recipe, stage: Stage) -> list[tuple]:
    """(benchmark, its sampled items) of each of the stage's eval_benchmarks, read and checked before the first step
    (a misspelt name, a missing file or image stops the stage now, not at its first validation)."""
    from ..evaluate.benchmarks.hub import is_hub_id
    from ..evaluate.benchmarks.run import benchmarks_named, load_items

    planned = []
    for spec in stage.eval_benchmarks:
        (benchmark,) = benchmarks_named(spec.name)
        local = spec.data_dir and not is_hub_id(spec.data_dir, recipe.data_root)
        data = Path(recipe.data_root) / spec.data_dir if local else spec.data_dir or None
        items, _ = load_items(benchmark, data, None, spec.limit)
        planned.append((benchmark, items))
    return planned


def validation_records(recipe: Recipe, stage: Stage) -> list:
    """The first `best_metric_records` validation records with references, for generation metrics."""
    if stage.best_metric == "val_loss":
        return []
    records = [r for source in stage.data.val
               for r in source_records(source, Path(recipe.data_root), SkipLog()) if r.references]
    records = records[: stage.best_metric_records]
    from ..evaluate.metrics import HUMAN_ANSWER_METRICS, check_human_answers

    if stage.best_metric in HUMAN_ANSWER_METRICS:  # scored at the first validation: say it before any step trains
        try:
            check_human_answers({r.id: r.references for r in records}, stage.best_metric)
        except DataError as e:
            raise ConfigError(f"stage {stage.name}: best_metric {e}") from None
    return records
