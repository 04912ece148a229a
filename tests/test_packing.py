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
from verbovision.model.store import load_model
from verbovision.train.run import train_recipe

from .helpers import needs_model_type, stage, tiny_recipe, token_losses
from .tiny_families import make_tiny_llava, make_tiny_qwen2_vl
from .tiny_families_misc import make_tiny_glm5_next, make_tiny_glmga, make_tiny_hy_v4_vl, make_tiny_minicpmv4_6
from .tiny_families_qwen_like import make_tiny_deepseek_vl, make_tiny_llava_onevision1_5, make_tiny_qwen3_vl
from .tiny_families_qwen_tower import (
    make_tiny_ernie4_5_vl_moe,
    make_tiny_hunyuan_vl,
    make_tiny_lfm3_vl,
    make_tiny_paddleocr_vl,
)

PACKED_FAMILIES = {"llava": make_tiny_llava, "deepseek_vl": make_tiny_deepseek_vl,
                   "llava_onevision1_5": make_tiny_llava_onevision1_5}  # 1-D positions: BOS per sample, CLS per image


@pytest.mark.parametrize("family", PACKED_FAMILIES)
def test_packed_losses_equal_unpacked(family, tmp_path, shapes_data, tiny_tokenizer_texts):
    needs_model_type(family)
    base = PACKED_FAMILIES[family](tmp_path / family, tiny_tokenizer_texts)
    model, processor = load_model(base, device="cpu")
    encoder = Encoder(processor, "chat", family=family_of(model.config))
    records = read_records(shapes_data / "train/vqa_en.json")[:3] + read_records(
        shapes_data / "train/caption_detailed_en.json")[:2]
    examples = [encoder.encode(r) for r in records]
    collator = Collator(encoder)
    alone = [float(token_losses(model, collator([e]).batch).sum()) for e in examples]

    packed = pack_examples(examples, budget=10_000)
    assert len(packed) == 1 and packed[0].segments == [len(e.input_ids) for e in examples]
    batch = collator(packed).batch
    assert "attention_mask" not in batch and batch["position_ids"][0, len(examples[0].input_ids)] == 0
    # [T-1]: position t predicts token t+1; summed in float64, so that sums in two orders agree to their last digits
    losses = token_losses(model, batch)[0].double()
    bounds = torch.tensor([0] + [len(e.input_ids) for e in examples]).cumsum(0)
    together = [float(losses[start : end - 1].sum()) for start, end in zip(bounds[:-1], bounds[1:])]
    assert together == pytest.approx(alone, abs=1e-4)
    assert sum(together) == pytest.approx(float(losses.sum()), abs=1e-4)  # nothing learnt across a boundary


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


REFUSED_PACKING = {"qwen2_vl": make_tiny_qwen2_vl, "qwen3_vl": make_tiny_qwen3_vl,  # M-RoPE from the whole row
                   "glmga": make_tiny_glmga, "hy_v4_vl": make_tiny_hy_v4_vl,  # M-RoPE too
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
