"""The tiny checkpoints of tests/tiny_families_misc.py in plain transformers: they load with the Auto classes, their
processor renders the family's prompt and expands its image token, `generate` runs and labels give a loss."""

from __future__ import annotations

import math

import pytest
from transformers import AutoModelForImageTextToText

from verbovision.families import forward_parameters

from .conftest import needs_model_type
from .test_tiny_families import TEXTS, picture
from .test_tiny_families_qwen_like import CHAT, _processor
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
    model_class, processor_class, prompt, keys, image_tokens = FAMILIES[family]
    out = BUILDERS[family](tmp_path / family, TEXTS)
    assert sum(f.stat().st_size for f in out.iterdir() if f.is_file()) < 5_000_000
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = _processor(out)
    assert model.config.model_type == family and type(model).__name__ == model_class
    assert processor_class in [cls.__name__ for cls in type(processor).__mro__]

    assert processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == prompt
    inputs = processor(text=[prompt], images=[picture(48, 40)], return_tensors="pt")
    assert set(inputs) == keys
    assert keys <= forward_parameters(type(model))  # the forward names every output of the processor
    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == image_tokens

    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    n_prompt = inputs["input_ids"].shape[1]
    assert generated[0, :n_prompt].tolist() == inputs["input_ids"][0].tolist() and generated.shape[1] > n_prompt

    full = processor(text=[prompt + "a red square" + processor.tokenizer.eos_token], images=[picture(48, 40)],
                     return_tensors="pt")
    labels = full["input_ids"].clone()
    labels[:, :n_prompt] = -100
    loss = model(**full, labels=labels).loss
    assert math.isfinite(loss.item())
    loss.backward()
    patch_embedding = next(p for n, p in model.named_parameters() if "vision" in n or "visual" in n)
    assert patch_embedding.grad.abs().sum() > 0  # the loss reached the image through the vision tower
