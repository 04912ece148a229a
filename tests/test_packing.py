"""Multimodal packing: several samples per row, positions restarting per sample, attention never crossing samples,
so every sample's loss equals its loss alone; and length-grouped batching."""

from __future__ import annotations

import json

import pytest
import torch

from verbovision.config.parse import parse_recipe
from verbovision.data.batching import Collator, length_grouped, pack_examples
from verbovision.data.encoding import Encoder
from verbovision.data.sources import read_records
from verbovision.errors import ConfigError
from verbovision.families import family_of
from verbovision.files import read_json
from verbovision.model import packing
from verbovision.model.loss import token_loss
from verbovision.model.store import load_model
from verbovision.train.run import train_recipe

from .helpers import needs_model_type, stage, tiny_recipe
from .tiny_families import make_tiny_llava, make_tiny_qwen2_vl
from .tiny_families_misc import make_tiny_glm5_next, make_tiny_glmga, make_tiny_hy_v4_vl, make_tiny_minicpmv4_6
from .tiny_families_qwen_like import (
    make_tiny_deepseek_vl,
    make_tiny_llava_onevision1_5,
    make_tiny_qwen2_5_vl,
    make_tiny_qwen3_vl,
)
from .tiny_families_qwen_more import make_tiny_qwen3_vl_moe
from .tiny_families_qwen_tower import (
    make_tiny_ernie4_5_vl_moe,
    make_tiny_hunyuan_vl,
    make_tiny_lfm3_vl,
    make_tiny_paddleocr_vl,
)

PACKED_FAMILIES = {"llava": make_tiny_llava, "deepseek_vl": make_tiny_deepseek_vl,
                   "llava_onevision1_5": make_tiny_llava_onevision1_5,  # 1-D positions: BOS per sample, CLS per image
                   "qwen2_vl": make_tiny_qwen2_vl, "qwen2_5_vl": make_tiny_qwen2_5_vl,  # M-RoPE per sample, 4 rows
                   "qwen3_vl": make_tiny_qwen3_vl, "qwen3_vl_moe": make_tiny_qwen3_vl_moe}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", PACKED_FAMILIES)
def test_packed_losses_equal_unpacked(family, attention, tmp_path, shapes_data, tiny_tokenizer_texts):
    """Every token's loss in two packed rows (the second padded: a sample of its own) is its loss alone, in float32
    with sdpa's and eager's block-diagonal masks; the production loss path, from the collator's packed batch on."""
    needs_model_type(family)
    model, encoder, examples = packing_case(family, attention, tmp_path, shapes_data, tiny_tokenizer_texts)
    collator = Collator(encoder)
    # [T-1] each: position t predicts token t+1
    alone = [per_token_losses(model, encoder.family, collator([e]).batch) for e in examples]

    lengths = [len(e.input_ids) for e in examples]
    packed = pack_examples(examples, budget=max(sum(lengths[:3]), sum(lengths[3:])))
    assert [row.segments for row in packed] == [lengths[:3], lengths[3:]]
    batch = collator(packed).batch
    # What the collator hands over: positions restarting per sample, no [B, T] mask for transformers to widen into
    # [B, 1, T, T]: the implementations that can (FlashAttention) run varlen on the bounds the positions give.
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    assert batch["position_ids"][0, lengths[0]] == 0
    losses = row_losses(per_token_losses(model, encoder.family, batch), batch)
    for (row, start), expected in zip(sample_places(packed, batch["input_ids"].shape[1]), alone):
        assert losses[row, start : start + len(expected)] == pytest.approx(expected, abs=1e-5)
    labelled = sum(float(e.sum()) for e in alone)
    assert float(losses.double().sum()) == pytest.approx(labelled, abs=1e-4)  # nothing learnt across a boundary


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_packed_rows_joined_into_one_for_flash_attention(family, tmp_path, shapes_data, tiny_tokenizer_texts,
                                                         monkeypatch):
    """Where the attention is a FlashAttention kernel, which reads samples' bounds from the position ids only in a
    batch of one row, packed rows go as one: the same losses (here under sdpa's mask, FlashAttention being CUDA's)."""
    model, encoder, examples = packing_case(family, "sdpa", tmp_path, shapes_data, tiny_tokenizer_texts)
    collator = Collator(encoder)
    lengths = [len(e.input_ids) for e in examples]
    batch = collator(pack_examples(examples, budget=max(sum(lengths[:3]), sum(lengths[3:])))).batch
    assert batch["input_ids"].shape[0] == 2
    rows = row_losses(per_token_losses(model, encoder.family, batch), batch)

    monkeypatch.setattr(packing, "takes_bounds_from_positions", lambda config: True)
    joined = packing.packed_inputs(model, batch, encoder.family)
    positions = joined["position_ids"]  # [1, B*T]; Qwen-VL's [4, 1, B*T]
    assert positions.shape == (*{"llava": (), "qwen2_vl": (4,)}[family], 1, batch["input_ids"].numel())
    assert joined["input_ids"].shape == joined["labels"].shape == (1, batch["input_ids"].numel())
    one = per_token_losses(model, encoder.family, batch)  # [B*T - 1]
    assert torch.cat([one, one.new_zeros(1)]) == pytest.approx(rows.flatten(), abs=1e-5)


@pytest.mark.parametrize(("implementation", "varlen"), [("flash_attention_2", True), ("sdpa", False),
                                                         ("eager", False)])
def test_which_attention_takes_bounds_from_positions(implementation, varlen):
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig()
    config._attn_implementation = implementation
    assert packing.takes_bounds_from_positions(config) == varlen


def packing_case(family: str, attention: str, tmp_path, shapes_data, texts) -> tuple:
    """A tiny model of `family` in float32 with `attention`, its encoder, and five examples with images."""
    base = PACKED_FAMILIES[family](tmp_path / family, texts)
    model, processor = load_model(base, device="cpu", dtype="float32", attention=attention)
    encoder = Encoder(processor, "chat", family=family_of(model.config))
    records = read_records(shapes_data / "train/vqa_en.json")[:3] + read_records(
        shapes_data / "train/caption_detailed_en.json")[:2]
    return model, encoder, [encoder.encode(r) for r in records]


def per_token_losses(model, family, batch: dict) -> torch.Tensor:
    """The training loss's per-token values [B*(T-1)] (0 where unlabelled), the packed batch made ready as in a
    training step: position t predicts token t+1."""
    with torch.no_grad():
        return token_loss(model, batch, "cpu", family, reduction="none", chunks=False)


def row_losses(losses: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per-token losses [B*(T-1)] laid out as [B, T], the last position of each row (predicting
    nothing) 0: position t predicts token t+1."""
    rows = losses.view(batch["input_ids"].shape[0], -1)
    return torch.cat([rows, rows.new_zeros(rows.shape[0], 1)], dim=1)


def sample_places(rows, width: int) -> list[tuple[int, int]]:
    """(row, first column) of each packed sample, in order."""
    return [(r, start) for r, row in enumerate(rows)
            for start in torch.tensor([0, *row.segments[:-1]]).cumsum(0).tolist()]


def test_pack_budget_and_length_groups(shapes_data):
    from verbovision.data.encoding import Encoded

    examples = [Encoded(str(i), [1] * n, [2] * n, []) for i, n in enumerate([5, 4, 3, 9, 2, 2, 20])]
    rows = pack_examples(examples, budget=9)
    assert [r.segments for r in rows] == [[5, 4], [3], [9], [2, 2], [20]]
    assert all(r.labels[0] == -100 for r in rows) and rows[0].labels[5] == -100
    grouped = length_grouped(examples, batch_size=2, seed=0)
    batches = [grouped[i : i + 2] for i in range(0, len(grouped), 2)]
    assert sorted(e.record_id for e in grouped) == sorted(e.record_id for e in examples)
    assert sorted(len(b[0].input_ids) for b in batches if len(b) == 2) == [3, 5, 20]  # neighbours by length


def test_training_with_packing_and_with_length_groups(tmp_path, shapes_data):
    for name, options in (("packed", {"packing": 400}), ("grouped", {"group_by_length": True})):
        recipe = parse_recipe(tiny_recipe(shapes_data, [stage(name, epochs=1, max_steps=None, batch_size=2,
                                                              **options)]))
        train_recipe(recipe, tmp_path / name)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
        steps = read_json(tmp_path / name / "run.json")["stages"][name]["steps"]
        if name == "packed":
            packed_steps = steps
        else:
            assert packed_steps < steps  # several samples per row: fewer steps for the same epoch


REFUSED_PACKING = {"glmga": make_tiny_glmga, "hy_v4_vl": make_tiny_hy_v4_vl,  # M-RoPE from the whole row
                   "paddleocr_vl": make_tiny_paddleocr_vl, "hunyuan_vl": make_tiny_hunyuan_vl,
                   "ernie4_5_vl_moe": make_tiny_ernie4_5_vl_moe,
                   "minicpmv4_6": make_tiny_minicpmv4_6,  # linear-attention layers: state across the whole row
                   "glm5_next": make_tiny_glm5_next,
                   "lfm3_vl": make_tiny_lfm3_vl}  # short convolutions along the whole row, reading no positions


@pytest.mark.parametrize("family", REFUSED_PACKING)
def test_packing_is_refused_where_the_model_cannot_take_it(family, tmp_path, shapes_data, tiny_tokenizer_texts):
    needs_model_type(family)
    build = REFUSED_PACKING[family]
    base = build(tmp_path / family, tiny_tokenizer_texts)
    recipe = {"name": "q", "seed": 0, "data_root": str(shapes_data), "model": {"from": str(base)},
              "stages": [stage("s", packing=400)]}
    with pytest.raises(ConfigError, match=f"packing: not supported for {family}"):
        train_recipe(parse_recipe(recipe), tmp_path / "run")


def test_a_qwen_vl_stage_trains_packed(tmp_path, shapes_data, tiny_tokenizer_texts):
    """A packed Qwen2-VL stage runs through the training step (its 4-row positions taken by the forward) and
    validates unpacked."""
    base = make_tiny_qwen2_vl(tmp_path / "qwen2_vl", tiny_tokenizer_texts)
    recipe = {"name": "q", "seed": 0, "data_root": str(shapes_data), "model": {"from": str(base)},
              "stages": [stage("s", packing=400, max_steps=2, batch_size=2, log_every=1)]}
    train_recipe(parse_recipe(recipe), tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged if "loss" in r)
    assert any("val_loss" in r for r in logged)
