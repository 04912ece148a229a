"""The supervised loss: next-token cross-entropy on the labelled positions (the assistant replies), for training
steps, validation and `verbo eval`'s reference loss.

Nothing here knows of the training processes: a caller whose model is wrapped for several of them (DDP, DeepSpeed)
passes the family and the model inside the wrapper, so that evaluating a model never starts a distributed runtime."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.batching import Collator, iter_batches
from ..errors import VerboError
from ..families import Family, Head, check_consumed
from .features import embeds_with_features
from .packing import packed_inputs
from .trainable import evaluating

CHUNKED_FROM = 2**24
"""The size of the whole sequence's logits (batch x positions x vocabulary) from which the loss takes the chunked path:
below it, the plain path's logits are small and its numbers stay those the golden run logged."""

CHUNK_LOGITS = 2**24
"""The logits one chunk computes at once (labelled positions x vocabulary): 64 MiB in float32."""


def token_loss(model, batch: dict, device, family: Family, reduction: str = "mean", core=None,
               chunks: bool = True) -> torch.Tensor:
    """Next-token cross-entropy on the labelled positions (assistant replies). `family`: the model's
    (`families.family_of(config)`); `core`: the model inside `model` where `model` wraps it for several processes,
    whose forward the inputs are checked against (the wrapper's takes anything).

    Where the whole sequence's logits would be large (`CHUNKED_FROM`), the family says how its forward makes logits
    (`Family.head`) and `chunks` allows it, the forward's output head sees no position and the loss applies the head
    itself, in chunks, to the labelled positions only: no [B, T, V] float32 tensor exists, in the forward or the
    backward."""
    core = model if core is None else core
    batch = packed_inputs(core, batch, family)
    inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "image_features")}
    if "image_features" in batch:
        features = batch["image_features"].to(device)  # [n_images, n_patches, D_vision]
        inputs["inputs_embeds"] = embeds_with_features(model, inputs.pop("input_ids"), features)
    labels = batch["labels"].to(device)
    inputs = family.model_inputs(inputs)
    check_consumed(core, inputs)
    head = core.get_output_embeddings() if family.head is not None and chunks else None
    if head is None or labels.numel() * head.weight.shape[0] < CHUNKED_FROM:
        logits = model(**inputs, use_cache=False).logits  # a cache would also hide packing
        return _plain_loss(family.text_logits(logits, labels.shape[1]), labels, reduction)
    with _head_inputs(head) as hidden:
        model(**inputs, use_cache=False)
    hidden = family.text_logits(hidden[0], labels.shape[1])  # [B, T, D]
    return _chunked_loss(head, family.head, hidden, batch["labels"], reduction)


def _plain_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Cross-entropy of the whole sequence's logits [B, T, V], upcast to float32."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction=reduction
    )


@contextmanager
def _head_inputs(head: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within it, the output head's input is kept (in the list it yields) and the head is given none of its
    positions, so that the forward computes no logits; its arithmetic after the head runs on an empty tensor."""
    kept: list[torch.Tensor] = []

    def keep(module, args):
        kept.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(keep)
    try:
        yield kept
    finally:
        handle.remove()
    if len(kept) != 1:
        raise VerboError(f"the output head ran {len(kept)} times in one forward; the chunked loss expects once")


def _chunked_loss(head: nn.Module, arithmetic: Head, hidden: torch.Tensor, labels: torch.Tensor,
                  reduction: str) -> torch.Tensor:
    """The cross-entropy of the labelled next tokens, from the output head's inputs `hidden` [B, T, D]: the head and
    its arithmetic run on `CHUNK_LOGITS` logits at a time, each upcast to float32. In training each chunk's logits
    are recomputed in the backward rather than kept (activation checkpointing), so only one chunk's exist at once."""
    # The labelled positions are found on the CPU copy of the labels: a boolean mask on the GPU would make the host
    # wait for the forward to finish (to learn how many rows it selects) before it could queue the loss.
    targets = labels.cpu()[:, 1:]
    labelled = (targets != -100).nonzero()  # [N, 2]: row, position
    index = labelled.to(hidden.device, non_blocking=True)
    rows = hidden[:, :-1][index[:, 0], index[:, 1]]  # [N, D]
    targets = targets[labelled[:, 0], labelled[:, 1]].to(hidden.device, non_blocking=True)  # [N]
    size = max(1, CHUNK_LOGITS // head.weight.shape[0])
    total = rows.sum() * 0  # 0 with the graph's gradient path, where nothing is labelled
    for start in range(0, rows.shape[0], size):
        chunk = (head, arithmetic, rows[start:start + size], targets[start:start + size])
        total = total + (checkpoint(_chunk_loss, *chunk, use_reentrant=False) if rows.requires_grad
                         else _chunk_loss(*chunk))
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / rows.shape[0]
    raise ValueError(f"reduction: {reduction!r} (sum or mean)")


def _chunk_loss(head: nn.Module, arithmetic: Head, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = arithmetic.logits(head(rows)).float()  # [n, V]
    return F.cross_entropy(logits, targets, reduction="sum")


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
