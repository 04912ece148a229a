"""The tiny checkpoints of tests/tiny_families_qwen_more.py in plain transformers: they load with the Auto classes,
their processor renders the family's prompt and expands its image token, `generate` runs and labels give a loss."""

from __future__ import annotations

import pytest

from .helpers import TEXTS, check_in_plain_transformers, needs_model_type
from .tiny_families_qwen_more import BUILDERS

QWEN3_VL_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
                   "<|im_start|>assistant\n")
GLM_PROMPT = "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>Describe.<|assistant|>\n"
QWEN_KEYS = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
FAMILIES = {
    # family: (model class, processor class, prompt, processor output keys, image tokens for a 48x40 picture)
    "qwen3_vl_moe": ("Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor", QWEN3_VL_PROMPT, QWEN_KEYS, 6),
    "qwen3_5": ("Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor", QWEN3_VL_PROMPT, QWEN_KEYS, 6),
    "qwen3_5_moe": ("Qwen3_5MoeForConditionalGeneration", "Qwen3VLProcessor", QWEN3_VL_PROMPT, QWEN_KEYS, 6),
    "qwen4_exp": ("Qwen4ExpForConditionalGeneration", "Qwen3VLProcessor", QWEN3_VL_PROMPT, QWEN_KEYS, 6),
    "cosmos3_omni": ("Cosmos3OmniForConditionalGeneration", "Qwen3VLProcessor", QWEN3_VL_PROMPT, QWEN_KEYS, 6),
    # GLM: 48x40 -> 48x32 pixels -> 3x2 merged tokens
    "glm4v": ("Glm4vForConditionalGeneration", "Glm4vProcessor", GLM_PROMPT, QWEN_KEYS, 6),
    "glm4v_moe": ("Glm4vMoeForConditionalGeneration", "Glm4vProcessor", GLM_PROMPT, QWEN_KEYS, 6),
    "glm46v": ("Glm46VForConditionalGeneration", "Glm46VProcessor", GLM_PROMPT, QWEN_KEYS, 6),
    "glm_ocr": ("GlmOcrForConditionalGeneration", "Glm46VProcessor", GLM_PROMPT, QWEN_KEYS, 6),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(tmp_path, family):
    needs_model_type(family)
    check_in_plain_transformers(BUILDERS[family](tmp_path / family, TEXTS), family, *FAMILIES[family])
