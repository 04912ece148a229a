"""Fine-tuning an existing VLM through `model: {from: ...}`: a tiny random LLaVA-1.5 in llava-hf's layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from verbovision.infer import VLM
from verbovision.recipe import load_recipe
from verbovision.store import read_json
from verbovision.tokenizer import train_bpe_tokenizer
from verbovision.train import train_recipe

RECIPES = Path(__file__).resolve().parents[1] / "src" / "verbovision" / "recipes"

# llava-hf/llava-1.5-*-hf's chat template: it lives on the processor and expects typed content parts.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory, tiny_tokenizer_texts) -> Path:
    out = tmp_path_factory.mktemp("tiny-llava")
    tokenizer = train_bpe_tokenizer(tiny_tokenizer_texts + ["USER: ASSISTANT:"], "<image>", vocab_size=300)
    tokenizer.chat_template = None
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1, vocab_size=len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor = LlavaProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                               tokenizer, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    processor.save_pretrained(out)
    return out


def test_llava_vqa_lora_recipe_on_tiny_llava(tmp_path, tiny_llava, shapes_data):
    overrides = [f"model.from={tiny_llava}", f"data_root={shapes_data}", "stages.0.data.train=[train/vqa_en.json]",
                 "stages.0.data.val=[val/vqa_en.json]", "stages.0.max_steps=3", "stages.0.batch_size=2",
                 "stages.0.grad_accum=2", "stages.0.lora.r=4", "stages.0.lora.alpha=8"]
    run = tmp_path / "run"
    train_recipe(load_recipe(RECIPES / "llava-vqa-lora.yaml", overrides), run)
    merged = read_json(run / "final/verbovision.json")["merge"]
    assert merged["max_abs_diff"] < 1e-4 and merged["max_abs_diff_reloaded"] < 1e-4
    vlm = VLM(run / "final", device="cpu")
    from verbovision.infer import prompt_record

    text, _ = vlm.encoder.render(prompt_record(None, "<image>\nHow many shapes are there?").prompt_turns, True)
    assert text.startswith("USER: <image><image>") and text.endswith("ASSISTANT:")  # llava-hf's own template
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    assert isinstance(vlm.ask(image, "How many shapes are there?"), str)
