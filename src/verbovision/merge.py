"""Merge a LoRA adapter into its base model, and prove the merge: merged logits must equal base + adapter.

The base model is read from the metadata saved beside the adapter, never from folder names. The check runs a probe
batch (a seeded random image and a prompt, through the model's own processor) through base + adapter, then through
the merged model, then through the merged model reloaded from disk, and reports the largest logit difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.batching import Collator
from .data.encoding import Encoder
from .data.records import DATA_IMAGE_TOKEN, Record, Turn
from .errors import VerboError
from .families import check_consumed, family_of, without_peft
from .files import read_json, write_json
from .model.quantize import is_quantized
from .model.store import (MODEL_METADATA, adapter_base, check_model_out, inputs_for, is_adapter, load_model,
                          model_metadata, weights_dtype)
from .model.trainable import evaluating

DEFAULT_TOLERANCE = 1e-4
"""Largest logit difference a merge into float32 weights may make."""
HALF_PRECISION_ULPS = 8
"""A merge into 16-bit weights rounds each merged weight to that precision, which the logits carry: it may differ by
this many units of the dtype's precision at the largest logit (`merge_tolerance`)."""


@dataclass
class MergeReport:
    base_model: str
    adapter: str
    output: str
    max_abs_diff: float
    """Largest |logit| difference between base + adapter and the merged model in memory."""
    max_abs_diff_reloaded: float
    """The same, for the merged model reloaded from disk."""
    tolerance: float

    def summary(self) -> str:
        return (
            f"merged {self.adapter} into {self.base_model} -> {self.output}; "
            f"max |logit difference| vs base+adapter: {self.max_abs_diff:.3g} in memory, "
            f"{self.max_abs_diff_reloaded:.3g} after reload (tolerance {self.tolerance:g})"
        )


def probe_batch(model, processor, device, seed: int = 0) -> dict:
    """A deterministic image + prompt + reply as the model's forward arguments, encoded as training encodes them."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    turns = [Turn("user", f"{DATA_IMAGE_TOKEN}\nDescribe the image."), Turn("assistant", "A probe reply.")]
    family = family_of(model.config)
    encoder = Encoder(processor, "plain", max_length=1 << 30, family=family)
    batch = Collator(encoder)([encoder.encode(Record("probe", [image], turns, "merge probe"))]).batch
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    inputs = family.model_inputs(inputs_for(model, tensors, device))
    check_consumed(model, inputs)
    return inputs


@torch.no_grad()
def logits_of(model, batch: dict) -> torch.Tensor:
    return model(**batch).logits.float()


def refuse_quantized(model) -> None:
    """Merging into quantized weights would round the adapter's update away (and save a checkpoint whose weights are
    neither the base's nor base + adapter): merge onto the full-precision base, then quantize the merged model."""
    base = without_peft(model)
    if is_quantized(base) or getattr(base.config, "quantization_config", None):
        raise VerboError("refusing to merge onto a quantized base: the adapter's update would be rounded into "
                         "quantized weights; load the base in full precision, merge, then quantize the merged model")


def resolve_adapter(path: str | Path) -> Path:
    """An adapter directory, or the last adapter of a training run."""
    path = Path(path)
    if is_adapter(path):
        return path
    run = read_json(path / "run.json")
    if run and run.get("adapters"):
        return path / run["adapters"][-1]
    raise VerboError(f"{path}: neither a LoRA adapter (no adapter_config.json) nor a run with an adapter")


def merge_tolerance(dtype: torch.dtype, logits: torch.Tensor) -> float:
    """The largest logit difference a merge into weights of `dtype` may make, base + adapter giving `logits`."""
    if dtype == torch.float32:
        return DEFAULT_TOLERANCE
    return max(DEFAULT_TOLERANCE, HALF_PRECISION_ULPS * torch.finfo(dtype).eps * logits.abs().max().item())


def merge_verified(peft_model, processor, out: str | Path, base_model: str, adapter: str, metadata: dict,
                   tolerance: float | None = None):
    """Merge an in-memory PEFT model, save it, and check logits before, after and after reload; `tolerance`: the
    largest difference accepted (default: `merge_tolerance` of the merged weights' dtype)."""
    from .model.build import save_model

    refuse_quantized(peft_model)
    device = next(peft_model.parameters()).device
    batch = probe_batch(peft_model, processor, device)
    with evaluating(peft_model):  # the merged model is the PEFT model's base: it gets the mode back too
        before = logits_of(peft_model, batch)
        merged = peft_model.merge_and_unload()
        diff = (logits_of(merged, batch) - before).abs().max().item()
        save_model(merged, processor, out, metadata)
        reloaded, _ = load_model(out, device=device, dtype=weights_dtype(merged))
        diff_reloaded = (logits_of(reloaded, batch) - before).abs().max().item()
        del reloaded
    tolerance = tolerance if tolerance is not None else merge_tolerance(weights_dtype(merged), before)
    report = MergeReport(base_model=base_model, adapter=adapter, output=str(out), max_abs_diff=diff,
                         max_abs_diff_reloaded=diff_reloaded, tolerance=tolerance)
    write_json(Path(out) / MODEL_METADATA, {**metadata, "merge": report.__dict__})
    if max(diff, diff_reloaded) > tolerance:
        raise VerboError(f"merge check failed: {report.summary()}")
    return merged, report


def merge_adapter(adapter_or_run: str | Path, out: str | Path, tolerance: float | None = None,
                  dtype: str | torch.dtype | None = None) -> MergeReport:
    """`verbo merge`: load base (from metadata) + adapter, merge, verify, save a standard checkpoint in `dtype`
    (a `--dtype` name; default auto, see `model.store.resolve_dtype`)."""
    adapter = resolve_adapter(adapter_or_run)
    base = adapter_base(adapter)
    check_model_out(out, {"adapter": adapter, "adapter's base model": base})
    peft_model, processor = load_model(adapter, dtype=dtype)
    metadata = {**model_metadata(adapter), "base_model": base, "adapter": str(adapter)}
    _, report = merge_verified(peft_model, processor, out, base, str(adapter), metadata, tolerance)
    return report
