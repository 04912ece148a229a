"""The tiny checkpoints of tests/tiny_families_special.py in plain transformers: they load with the Auto classes,
their processor renders the family's prompt and expands its image tokens, `generate` runs and labels give a loss."""

from __future__ import annotations


import pytest


from .helpers import TEXTS, check_in_plain_transformers, needs_model_type
from .tiny_families_special import BUILDERS

QWEN_KEYS = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
FAMILIES = {
    # family: (model class, processor class, chat prompt (None: no chat template), processor output keys, image
    # tokens for a 48x40 picture)
    "cohere_compass": ("CohereCompassForConditionalGeneration", "CohereCompassProcessor",
                       "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|><|VISION_START|><|IMAGE_PAD|><|VISION_END|>"
                       "Describe.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
                       QWEN_KEYS, 6),  # 48x40 -> 48x32 pixels -> 3x2 merged tokens
    "cosmos3_edge": ("Cosmos3EdgeForConditionalGeneration", "Cosmos3EdgeProcessor",
                     "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
                     "<|im_start|>assistant\n", QWEN_KEYS, 6),
    "chameleon": ("ChameleonForConditionalGeneration", "ChameleonProcessor", None,
                  {"input_ids", "attention_mask", "pixel_values"}, 16),
    "emu3": ("Emu3ForConditionalGeneration", "Emu3Processor", "USER: <image>\nDescribe. ASSISTANT:",
             {"input_ids", "attention_mask", "pixel_values", "image_sizes"}, 35),  # 40x48 pixels: 5 rows of 6 + 1
    "gemma4": ("Gemma4ForConditionalGeneration", "Gemma4Processor",
               "<bos><|turn>user\n<|image|>Describe.<turn|>\n<|turn>model\n",
               {"input_ids", "attention_mask", "pixel_values", "image_position_ids", "mm_token_type_ids"}, 63),
}
PROMPTS_WITHOUT_TEMPLATE = {"chameleon": "<image>Describe."}
"""What a family without a chat template is prompted with (chameleon-7b's model card: the image token in the text)."""
VQ_FAMILIES = ("chameleon", "emu3")
"""Families whose images become discrete VQ-VAE codes: no gradient reaches the image encoder."""


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(tmp_path, family):
    needs_model_type(family)
    check_in_plain_transformers(BUILDERS[family](tmp_path / family, TEXTS), family, *FAMILIES[family],
                                plain_prompt=PROMPTS_WITHOUT_TEMPLATE.get(family),
                                vision_grad=family not in VQ_FAMILIES)
