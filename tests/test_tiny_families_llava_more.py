"""The tiny checkpoints of tests/tiny_families_llava_more.py in plain transformers: loaded with the Auto classes,
prompted through the family's chat template with one image, then `generate` and a forward with labels. Nothing of
VerboVision is used here but the tokenizer trainer the builders share."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import AutoModelForImageTextToText

from .helpers import needs_model_type, red_circle
from .tiny_families_llava_like import plain_processor
from .tiny_families_llava_more import BUILDERS

FAMILIES = {
    # model_type: image tokens of one 64x64 image in the prompt
    "vipllava": 16,
    "llava_next_video": 36,
    "video_llava": 16,
    "granite4_vision": 10,
    "idefics2": 8,
    "granite_docling": 4,
}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(family, tmp_path, tiny_tokenizer_texts):
    needs_model_type(family)
    path = BUILDERS[family](tmp_path / family, tiny_tokenizer_texts)
    assert sum(f.stat().st_size for f in path.iterdir() if f.is_file()) < 5_000_000
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model.config.model_type == family
    processor = plain_processor(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[red_circle()], return_tensors="pt")

    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == FAMILIES[family]
    assert set(inputs) <= set(inspect.signature(type(model).forward).parameters)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        loss = model(**inputs, labels=inputs["input_ids"]).loss
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 5
    assert torch.isfinite(loss)
