"""The attention implementation a model loads with (verbovision.model.attention): `auto` takes PyTorch's fused
kernels where the model supports them, a recipe's `model.attn_implementation` forces one, and the kernels agree."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from verbovision.config.parse import parse_recipe
from verbovision.data.batching import Collator
from verbovision.data.encoding import Encoder
from verbovision.data.sources import read_records
from verbovision.errors import ConfigError
from verbovision.families import family_of
from verbovision.model.attention import attention_for
from verbovision.model.loss import token_loss
from verbovision.model.store import load_model

from .helpers import stage, tiny_recipe
from .tiny_families import make_tiny_llava


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory, tiny_tokenizer_texts):
    return make_tiny_llava(tmp_path_factory.mktemp("llava") / "base", tiny_tokenizer_texts)


def test_auto_takes_sdpa_for_a_llava_model(tiny_llava):
    model, _ = load_model(tiny_llava, device="cpu")
    assert model.config._attn_implementation == "sdpa"
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    forced, _ = load_model(tiny_llava, device="cpu", attention="eager")
    assert forced.config.get_text_config()._attn_implementation == "eager"


def test_auto_takes_flash_attention_only_on_cuda_in_half_precision(tiny_llava, monkeypatch):
    from verbovision.model import attention

    config = AutoConfig.from_pretrained(tiny_llava)
    monkeypatch.setattr(attention, "_has_flash_attn", lambda: True)
    assert attention_for(config, torch.bfloat16, "cuda") == "flash_attention_2"
    assert attention_for(config, torch.float32, "cuda") == "sdpa"  # FlashAttention runs in half precision only
    assert attention_for(config, torch.bfloat16, "cpu") == "sdpa"
    monkeypatch.setattr(attention, "_has_flash_attn", lambda: False)
    assert attention_for(config, torch.bfloat16, "cuda") == "sdpa"
    with pytest.raises(ConfigError, match="flash_attn package"):
        attention_for(config, torch.bfloat16, "cuda", "flash_attention_2")


def test_sdpa_and_eager_give_the_same_loss(tiny_llava, shapes_data):
    """A padded batch of records of different lengths, so that the padding mask reaches both kernels."""
    losses = []
    for kernels in ("sdpa", "eager"):
        model, processor = load_model(tiny_llava, device="cpu", attention=kernels)
        encoder = Encoder(processor, "chat", family=family_of(model.config))
        records = read_records(shapes_data / "train/vqa_en.json")[:2] + read_records(
            shapes_data / "train/caption_detailed_en.json")[:1]
        batch = Collator(encoder)([encoder.encode(r) for r in records]).batch
        assert batch["attention_mask"].min() == 0
        with torch.no_grad():
            losses.append(token_loss(model, batch, "cpu", family_of(model.config)).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_recipe_key(shapes_data):
    raw = tiny_recipe(shapes_data, [stage("s")])
    assert parse_recipe(raw).model.attn_implementation == "auto"
    assert parse_recipe({**raw, "model": {**raw["model"], "attn_implementation": "eager"}}).model.attn_implementation \
        == "eager"
    with pytest.raises(ConfigError, match="model.attn_implementation: 'fast' unknown.*; use auto, sdpa"):
        parse_recipe({**raw, "model": {**raw["model"], "attn_implementation": "fast"}})
