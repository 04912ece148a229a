"""The tiny checkpoints of tests/tiny_families_qwen_like.py in plain transformers: they load with the Auto classes,
their processor renders the family's prompt and expands its image token, `generate` runs and labels give a loss."""

from __future__ import annotations


import pytest


from .helpers import TEXTS, check_in_plain_transformers, needs_model_type
from .tiny_families_qwen_like import BUILDERS, QWEN2_VL_PROMPT, QWEN_KEYS

DEEPSEEK_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                   "that the user provides, and assist the user with a variety of tasks using natural language.\n\n"
                   "User: <image_placeholder>Describe.\n\nAssistant:")
FAMILIES = {
    # family: (model class, processor class, prompt, processor output keys, image tokens for a 48x40 picture)
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", QWEN2_VL_PROMPT,
                   QWEN_KEYS | {"mm_token_type_ids"}, 6),  # 48x40 -> 48x32 pixels -> 3x2 merged tokens
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor",
                 "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
                 "<|im_start|>assistant\n", QWEN_KEYS | {"mm_token_type_ids"}, 6),
    "llava_onevision1_5": ("LlavaOnevision15ForConditionalGeneration", "Exaone4_5_Processor", QWEN2_VL_PROMPT,
                           QWEN_KEYS, 6),
    "deepseek_vl": ("DeepseekVLForConditionalGeneration", "DeepseekVLProcessor", DEEPSEEK_PROMPT,
                    {"input_ids", "attention_mask", "pixel_values"}, 16),
    "deepseek_vl_hybrid": ("DeepseekVLHybridForConditionalGeneration", "DeepseekVLHybridProcessor", DEEPSEEK_PROMPT,
                           {"input_ids", "attention_mask", "pixel_values", "high_res_pixel_values"}, 16),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(tmp_path, family):
    needs_model_type(family)
    inputs, processor = check_in_plain_transformers(BUILDERS[family](tmp_path / family, TEXTS), family,
                                                    *FAMILIES[family])
    if family.startswith("deepseek"):  # its Llama tokenizer starts every text with BOS; the template does not
        assert inputs["input_ids"][0, 0].item() == processor.tokenizer.bos_token_id


