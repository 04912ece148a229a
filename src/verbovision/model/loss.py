"""The supervised loss: next-token cross-entropy on the labelled positions (the assistant replies), for training
steps, validation and `verbo eval`'s reference loss.

Nothing here knows of the training processes: a caller whose model is wrapped for several of them (DDP, DeepSpeed)
passes the family and the model inside the wrapper, so that evaluating a model never starts a distributed runtime."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from ..data.batching import Collator, iter_batches
from ..families import Family, check_consumed
from .features import embeds_with_features
from .trainable import evaluating


def token_loss(model, batch: dict, device, family: Family, reduction: str = "mean", core=None) -> torch.Tensor:
    """Next-token cross-entropy on the labelled positions (assistant replies). `family`: the model's
    (`families.family_of(config)`); `core`: the model inside `model` where `model` wraps it for several processes,
    whose forward the inputs are checked against (the wrapper's takes anything)."""
    inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "image_features")}
    if "image_features" in batch:
        features = batch["image_features"].to(device)  # [n_images, n_patches, D_vision]
        inputs["inputs_embeds"] = embeds_with_features(model, inputs.pop("input_ids"), features)
    labels = batch["labels"].to(device)
    inputs = family.model_inputs(inputs)
    check_consumed(model if core is None else core, inputs)
    logits = model(**inputs, use_cache=False).logits  # a cache would also hide packing
    logits = family.text_logits(logits, labels.shape[1])  # [B, T, V]
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction=reduction
    )


@torch.no_grad()
def validation_loss(model, collator: Collator, examples, batch_size: int, device,
                    precision: Callable[[], AbstractContextManager] = nullcontext) -> float:
    """The loss averaged over every target token of `examples`, in eval mode (the model's mode is restored after).
    `model`: the model itself, not a wrapper; its family is the collator's encoder's. `precision`: the context of
    each forward pass (a training stage's autocast); batches are collated outside it."""
    total, count = 0.0, 0
    with evaluating(model):
        for group in iter_batches(examples, batch_size):
            batch = collator(group).batch
            if batch["input_ids"].shape[0]:
                with precision():
                    total += token_loss(model, batch, device, collator.encoder.family, reduction="sum").item()
                count += int((batch["labels"][:, 1:] != -100).sum())
    return total / max(1, count)
