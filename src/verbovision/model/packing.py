"""A packed batch (several samples per row, positions restarting per sample, no attention mask: `Collator.pad`) as
the model's forward takes it, which needs the model: the Qwen-VL families' M-RoPE positions of each sample, and one
row for the FlashAttention kernels.

How transformers keeps attention within each sample: sdpa and eager build a block-diagonal causal mask [B, 1, T, T]
from the restarts of the position ids (masking_utils.find_packed_sequence_indices); FlashAttention builds no mask and
runs its variable-length kernel on the samples' bounds (cu_seqlens) read from the position ids, but only in a batch of
one row (modeling_flash_attention_utils._is_packed_sequence), so its packed rows go as one."""

from __future__ import annotations

import torch
from torch import nn

from ..data.batching import is_packed
from ..data.image_tokens import TOKEN_TYPE_INPUTS
from ..families import Family, without_peft

PER_TOKEN = ("input_ids", "labels", *TOKEN_TYPE_INPUTS)
"""The batch's [B, T] tensors besides the position ids: one value per token."""


def packed_inputs(model: nn.Module, batch: dict, family: Family) -> dict:
    """`batch` as `model` (under any PEFT wrapping, outside any wrapper for several processes) takes it where its rows
    are packed; an unpacked batch as it is."""
    if not is_packed(batch):
        return batch
    base = without_peft(model)
    if family.packs_rope_index:
        batch = {**batch, "position_ids": sample_rope_positions(base, batch)}
    if takes_bounds_from_positions(base.config):
        batch = one_row(batch)
    return batch


def sample_rope_positions(model: nn.Module, batch: dict) -> torch.Tensor:
    """Position ids [4, B, T] of packed rows for a Qwen-VL model: the text positions restarting per sample, then the
    model's own M-RoPE rows (`get_rope_index`) of each sample alone, as if it were a row of its own."""
    text = batch["position_ids"]  # [B, T]
    # Each sample (the padding at a row's end is one too) becomes a row of its own: its tokens' places in it are
    # their text positions; its images are the next ones in order, as get_rope_index takes them row after row.
    sample = (text == 0).flatten().cumsum(0) - 1  # [B*T]
    column = text.flatten()  # [B*T]
    shape = (int(sample[-1]) + 1, int(column.max()) + 1)

    def by_sample(values: torch.Tensor) -> torch.Tensor:
        rows = values.new_zeros(shape)  # [n_samples, longest]
        rows[sample, column] = values.flatten()
        return rows

    rope, _ = model.model.get_rope_index(
        by_sample(batch["input_ids"]), mm_token_type_ids=by_sample(batch["mm_token_type_ids"]),
        image_grid_thw=batch.get("image_grid_thw"), attention_mask=by_sample(torch.ones_like(text)))
    return torch.cat([text[None], rope[:, sample, column].view(3, *text.shape)])  # [4, B, T]


def takes_bounds_from_positions(config) -> bool:
    """Whether the model's attention is a FlashAttention kernel, which finds packed samples' bounds in the position
    ids (transformers' `is_flash_attention_requested`, 5.17 on)."""
    from transformers.utils.generic import is_flash_attention_requested

    return is_flash_attention_requested(config.get_text_config())


def one_row(batch: dict) -> dict:
    """Packed rows [B, T] joined into one row [1, B*T]. Every sample's first label is masked (`pack_examples`), so
    the loss is the same: no row's last token learns to predict the next row's first."""
    flat = {k: v.reshape(1, -1) if k in PER_TOKEN else v for k, v in batch.items()}
    positions = batch["position_ids"]  # [B, T] or [4, B, T]
    flat["position_ids"] = positions.reshape(*positions.shape[:-2], 1, -1)  # [1, B*T] or [4, 1, B*T]
    return flat
