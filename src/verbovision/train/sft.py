"""The supervised step: the loss over a group's micro-batches, averaged over all their target tokens in every process,
then one optimizer step."""

from __future__ import annotations

import torch
from PIL import Image

from ..config.schema import Recipe, Stage
from ..data.batching import Collated
from ..data.encoding import Encoded, Encoder
from ..model.loss import token_loss
from .state import DeviceSum, StageSetup, TrainState, compute_precision, optimizer_step


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
        total = DeviceSum()
        for batch, weight in batches:
            if batch["input_ids"].shape[0]:
                total.add(self.backward(batch, weight, n_targets))
        grad_norm = optimizer_step(self.setup, self.stage)
        return {"loss": procs.all_reduce_sum(total), "grad_norm": grad_norm}

    def backward(self, batch: dict, weight: float, n_targets: float) -> torch.Tensor:
        """Accumulate the gradient of one micro-batch's part of the step's loss; returns that part (unread)."""
        setup, procs = self.setup, self.setup.procs
        core = procs.unwrap_model(setup.model)
        with compute_precision(setup):
            # Several processes: the plain loss, as the chunked one would call the output head outside the wrapper's
            # forward, where FSDP and ZeRO-3 have not gathered its sharded weights.
            loss = weight * token_loss(setup.model, batch, setup.device, self.family, reduction="sum", core=core,
                                       chunks=not procs.distributed) / max(1, n_targets)
        if procs.distributed:
            loss = loss + vision_keepalive(core, setup.collator.encoder, batch, setup.device)
        procs.backward(loss)
        return loss


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
