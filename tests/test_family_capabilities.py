"""What callers ask of a family (families.py, the only place that names model types): the capabilities of `Family`,
which modules are heads and cross-attention, and what `verbo build` needs to know of the models it composes."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import (
    AutoConfig,
    CLIPVisionConfig,
    GPT2Config,
    Qwen2Config,
    SiglipVisionConfig,
    VisionEncoderDecoderConfig,
    ViTConfig,
)

from verbovision.families import (
    component_kind,
    family_of,
    is_cross_attention,
    is_output_head,
    is_vision_encoder_decoder,
    starts_with_cls,
    ties_in_vlm,
    without_peft,
)


def vision_encoder_decoder_config():
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), GPT2Config())
    config.decoder_start_token_id = 0
    return config


@pytest.mark.parametrize("config, images_in_text, caches_features", [
    (AutoConfig.for_model("llava"), True, True),
    (AutoConfig.for_model("qwen2_vl"), True, False),
    (AutoConfig.for_model("git"), False, False),
    (vision_encoder_decoder_config(), False, False),
], ids=["llava", "qwen2_vl", "git", "vision-encoder-decoder"])
def test_capabilities_follow_how_a_family_takes_images(config, images_in_text, caches_features):
    family = family_of(config)
    assert family.images_in_text is images_in_text
    assert family.takes_logits_to_keep is images_in_text  # GIT's and the encoder-decoders' forwards do not take it
    assert family.caches_features is caches_features
    assert (family.prefix_lm, family.own_layout, family.caption_prompt) == (False, None, None)


def test_paligemma_has_its_own_layout_prompt_and_prefix_lm_mask():
    family = family_of(AutoConfig.for_model("paligemma"))
    assert (family.prefix_lm, family.own_layout, family.caption_prompt) == (True, "prefix", "caption en")


def test_output_heads_and_cross_attention_are_told_by_module_name():
    assert is_output_head("lm_head") and is_output_head("output")  # GIT's head is its top-level `output`
    assert not is_output_head("git.encoder.layer.0.output")  # a BERT layer's output block is no head
    assert is_cross_attention("decoder.transformer.h.0.crossattention")
    assert not is_cross_attention("decoder.transformer.h.0.attn")


def test_what_verbo_build_asks_of_the_models_it_composes():
    assert is_vision_encoder_decoder(vision_encoder_decoder_config())
    assert not is_vision_encoder_decoder(AutoConfig.for_model("llava"))
    assert starts_with_cls(CLIPVisionConfig()) and starts_with_cls(ViTConfig())
    assert not starts_with_cls(SiglipVisionConfig())
    assert not ties_in_vlm(GPT2Config()) and ties_in_vlm(Qwen2Config())
    assert [component_kind(t) for t in ("gpt2", "qwen2", "vit", "siglip_vision_model", "llava", "wav2vec2")] == [
        "language", "language", "vision", "vision", None, None]


def test_without_peft_is_the_model_under_the_adapter():
    from peft import LoraConfig, get_peft_model

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    assert without_peft(model) is model
    wrapped = get_peft_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), LoraConfig(target_modules=["0"]))
    assert without_peft(wrapped) is wrapped.base_model.model
