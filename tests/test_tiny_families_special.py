"""The tiny checkpoints of tests/tiny_families_special.py in plain transformers: they load with the Auto classes,
their processor renders the family's prompt and expands its image tokens, `generate` runs and labels give a loss."""

from __future__ import annotations

import math

import pytest
from transformers import AutoModelForImageTextToText

from verbovision.families import forward_parameters

from .helpers import CHAT, TEXTS, needs_model_type, picture
from .tiny_families_llava_like import plain_processor
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


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(tmp_path, family):
    needs_model_type(family)
    model_class, processor_class, prompt, keys, image_tokens = FAMILIES[family]
    out = BUILDERS[family](tmp_path / family, TEXTS)
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 5_000_000
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = plain_processor(out)
    assert model.config.model_type == family and type(model).__name__ == model_class
    assert processor_class in [cls.__name__ for cls in type(processor).__mro__]

    if prompt is not None:
        assert processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == prompt
    else:
        assert processor.chat_template is None
        prompt = PROMPTS_WITHOUT_TEMPLATE[family]
    # BOS once: where the prompt has it, the tokenizer adds none. Cosmos3-Edge's processor returns the
    # mm_token_type_ids its model requires only when asked.
    bos = processor.tokenizer.bos_token
    ask = dict(add_special_tokens=not (bos and prompt.startswith(bos)),
               return_mm_token_type_ids="mm_token_type_ids" in keys, return_tensors="pt")
    inputs = processor(text=[prompt], images=[picture(48, 40)], **ask)
    assert set(inputs) == keys
    assert keys <= forward_parameters(type(model))  # the forward names every output of the processor
    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == image_tokens

    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    n_prompt = inputs["input_ids"].shape[1]
    assert generated[0, :n_prompt].tolist() == inputs["input_ids"][0].tolist() and generated.shape[1] > n_prompt

    full = processor(text=[prompt + "a red square" + processor.tokenizer.eos_token], images=[picture(48, 40)], **ask)
    labels = full["input_ids"].clone()
    labels[:, :n_prompt] = -100
    loss = model(**full, labels=labels).loss
    assert math.isfinite(loss.item())
