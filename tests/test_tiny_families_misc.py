"""The tiny checkpoints of tests/tiny_families_misc.py in plain transformers: they load with the Auto classes, their
processor renders the family's prompt and expands its image token, `generate` runs and labels give a loss."""

from __future__ import annotations

import pytest

from .helpers import TEXTS, check_in_plain_transformers, needs_model_type
from .tiny_families_misc import BUILDERS

CHATML_PROMPT = "<|im_start|>user\n<|image_pad|>Describe.<|im_end|>\n<|im_start|>assistant\n"
GLM_PROMPT = "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>Describe.<|assistant|>\n"
GRID_KEYS = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
MINICPMV_KEYS = {"input_ids", "attention_mask", "pixel_values", "target_sizes"}
FAMILIES = {
    # family: (model class, processor class, prompt, processor output keys, image tokens for a 48x40 picture)
    "minicpmv4_6": ("MiniCPMV4_6ForConditionalGeneration", "MiniCPMV4_6Processor", CHATML_PROMPT, MINICPMV_KEYS,
                    4),  # 48x40 -> 64x64 pixels, 8x8 patches, 16 per token
    "minicpmv4_7": ("MiniCPMV4_7ForConditionalGeneration", "MiniCPMV4_7Processor", CHATML_PROMPT,
                    MINICPMV_KEYS | {"mm_token_type_ids"}, 4),
    "glm5_next": ("Glm5NextForConditionalGeneration", "Glm5NextProcessor", GLM_PROMPT, GRID_KEYS,
                  9),  # 48x40 -> 48x48 pixels (at least 4 tokens, patch-multiple sides) -> 3x3 merged tokens
    "hy_v4_vl": ("HYV4VLForConditionalGeneration", "HYV4VLProcessor",
                 "<｜hy_begin▁of▁sentence｜><｜hy_place▁holder▁no▁100｜><｜hy_place▁holder▁no▁102｜>"
                 "<｜hy_place▁holder▁no▁101｜>Describe.<｜hy_User｜>", GRID_KEYS,
                 8),  # 48x40 -> 48x32 pixels -> 6x4 patches -> 2 merged rows of 3 + a newline
    "glmga": ("Glm46VForConditionalGeneration", "Glm46VProcessor", GLM_PROMPT, GRID_KEYS,
              6),  # 48x40 -> 48x32 pixels -> 3x2 merged tokens
}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(tmp_path, family):
    needs_model_type(family)
    check_in_plain_transformers(BUILDERS[family](tmp_path / family, TEXTS), family, *FAMILIES[family])
