"""What a stage leaves: its model or adapter (merged and verified when asked) and its processor, saved atomically."""

from __future__ import annotations

from pathlib import Path

from ..config.schema import Stage
from ..data.encoding import Encoder, with_trained_template
from ..families import family_of
from ..files import follow_umask, read_json, write_json
from ..merge import merge_adapter, merge_verified
from ..model.build import save_model
from ..model.quantize import is_quantized
from ..model.store import ADAPTER_METADATA, BASE_IN_RUN, MODEL_METADATA, load_model, save_processor, weights_dtype
from ..model.trainable import configure_trainable, disable_checkpointing
from .distributed import Processes
from .state import StageResult


def finish_stage(procs: Processes, model, processor, stage: Stage, base: str, stage_dir: Path, uses_lora: bool,
                 encoder: Encoder) -> StageResult | None:
    """Save what the stage produced: a full model, or an adapter (and, with merge: true, the verified merge).
    `encoder`: the stage's, whose layout the model was trained in and whose trained prompt (the caption prompt the
    stage's images came with most often, in the data's language) `verbo caption` asks by default (the base's stays
    where the stage had none; a caption-template model has none).
    Sharded (FSDP, DeepSpeed): every process calls it and sends its parts to the main process, which saves a whole
    copy (the base, set up as the stage trains it, on the CPU); the others return None.
    The model is saved in the dtype its base loaded in (model.dtype), what trained cast to it; an adapter is saved
    as it trained, in float32, and merged after that cast."""
    dtype = weights_dtype(model)
    if procs.sharded:
        # DeepSpeed keeps frozen parameters only in its compute dtype (bf16 on GPUs): those come from the base.
        state = procs.full_state(model, trainable_only=procs.deepspeed)
        if not procs.is_main_process:
            return None
        model, _ = configure_trainable(load_model(base, device="cpu", dtype=dtype)[0], stage)
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
        save_model(model.to(dtype), processor, stage_dir / "model", metadata)
        return StageResult(stage.name, str(stage_dir / "model"), None, 0, None)
    adapter_dir = stage_dir / "adapter"
    model.save_pretrained(adapter_dir)
    follow_umask(adapter_dir)
    save_processor(with_trained_template(processor, family_of(model.config), metadata), adapter_dir)
    write_json(adapter_dir / ADAPTER_METADATA, adapter_record(base, stage.name, stage_dir.parents[1]))
    write_json(adapter_dir / MODEL_METADATA, metadata)
    if not stage.merge:  # the last stage (parse_recipe sees to it): its adapter is the run's final model
        return StageResult(stage.name, str(adapter_dir), str(adapter_dir), 0, None)
    merged_dir = stage_dir / "model"
    if is_quantized(model.get_base_model()):  # QLoRA: merge onto the full-precision base, read from disk
        report = merge_adapter(adapter_dir, merged_dir, dtype=dtype)
    else:
        _, report = merge_verified(model.to(dtype), processor, merged_dir, base, str(adapter_dir), metadata)
    print(report.summary())
    return StageResult(stage.name, str(merged_dir), str(adapter_dir), 0, None)


def adapter_record(base: str, stage: str, run_dir: Path) -> dict:
    """An adapter's metadata: its base (a local one as an absolute path) and stage; a base inside the run (its init/,
    an earlier stage's merged model) also by its path in the run, which still finds it once the run has moved."""
    if not Path(base).exists():
        return {"base_model": base, "stage": stage}
    record = {"base_model": str(Path(base).resolve()), "stage": stage}
    if Path(base).resolve().is_relative_to(run_dir.resolve()):
        record[BASE_IN_RUN] = str(Path(base).resolve().relative_to(run_dir.resolve()))
    return record
