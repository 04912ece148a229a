"""The tiny checkpoints of tests/tiny_families_qwen_tower.py in plain transformers: they load with the Auto classes,
their processor renders the family's prompt and expands its image token, `generate` runs and labels give a loss."""

from __future__ import annotations

import pytest

from .helpers import TEXTS, check_in_plain_transformers, needs_model_type
from .tiny_families_qwen_like import QWEN2_VL_PROMPT, QWEN_KEYS
from .tiny_families_qwen_tower import BUILDERS

FAMILIES = {
    # family: (model class, processor class, prompt, processor output keys, image tokens for a 48x40 picture)
    "exaone4_5": ("Exaone4_5_ForConditionalGeneration", "Exaone4_5_Processor",
                  "[|user|]\n<|vision_start|><|image_pad|><|vision_end|>Describe.[|endofturn|]\n[|assistant|]\n",
                  QWEN_KEYS, 6),  # 48x40 -> 48x32 pixels -> 3x2 merged tokens
    "hyperclovax_vision_v2": ("HyperCLOVAXVisionV2ForConditionalGeneration", "HyperCLOVAXVisionV2Processor",
                              QWEN2_VL_PROMPT, QWEN_KEYS, 6),
    "lfm3_vl": ("Lfm3VlForConditionalGeneration", "Lfm3VlProcessor",
                "<|startoftext|><|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
                "<|im_start|>assistant\n", QWEN_KEYS, 6),
    "video_llama_3": ("VideoLlama3ForConditionalGeneration", "VideoLlama3Processor",
                      "<|im_start|>user\n<|image_pad|>\nDescribe.<|im_end|>\n<|im_start|>assistant\n",
                      QWEN_KEYS | {"image_merge_sizes"}, 30),  # 48x40 pixels: 6x5 patches, not merged
    "paddleocr_vl": ("PaddleOCRVLForConditionalGeneration", "PaddleOCRVLProcessor",
                     "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>Describe.\n"
                     "Assistant: ", QWEN_KEYS | {"mm_token_type_ids"}, 6),
    "hunyuan_vl": ("HunYuanVLForConditionalGeneration", "HunYuanVLProcessor",
                   "<|im_start|>user\n<|image_start|><|image|><|image_end|>Describe.<|im_end|>\n"
                   "<|im_start|>assistant\n", QWEN_KEYS | {"mm_token_type_ids"},
                   10),  # 2 rows of (3 + row end), begin, end
    "dots3_note": ("Dots3NoteForConditionalGeneration", "Dots3NoteProcessor",
                   "<|im_start|>user\n<|img|><|imgpad|><|endofimg|>Describe.<|im_end|>\n<|im_start|>assistant\n",
                   QWEN_KEYS, 6),
    "ernie4_5_vl_moe": ("Ernie4_5_VLMoeForConditionalGeneration", "Ernie4_5_VLMoeProcessor",
                        "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>Describe.\n"
                        "Assistant: ", QWEN_KEYS | {"mm_token_type_ids", "moe_mm_token_type_ids"}, 6),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(tmp_path, family):
    needs_model_type(family)
    check_in_plain_transformers(BUILDERS[family](tmp_path / family, TEXTS), family, *FAMILIES[family])
