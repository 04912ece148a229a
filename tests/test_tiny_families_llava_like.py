"""The LLaVA-like tiny checkpoints (tests/tiny_families_llava_like.py) in plain transformers: loaded with the Auto
classes, prompted through the family's chat template with one image, then `generate` and a forward with labels.
Nothing of VerboVision is used here but the tokenizer trainer the builders share."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import AutoModelForImageTextToText

from .helpers import red_circle
from .tiny_families_llava_like import BUILDERS, plain_processor

FAMILIES = {
    # model_type: (image tokens of one 64x64 image in the prompt, image processor outputs the forward does not name;
    # the processor's own outputs are all named)
    "llava_next": (36, set()),
    "llava_onevision": (36, set()),
    "aya_vision": (20, {"num_patches"}),
    "internvl": (20, {"num_patches"}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(family, tmp_path, tiny_tokenizer_texts):
    image_tokens, image_processor_only = FAMILIES[family]
    path = BUILDERS[family](tmp_path / family, tiny_tokenizer_texts)
    assert sum(f.stat().st_size for f in path.iterdir() if f.is_file()) < 5_000_000
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model.config.model_type == family
    processor = plain_processor(path)
    question = {"type": "text", "text": "Describe the image briefly."}
    messages = [{"role": "user", "content": [{"type": "image"}, question]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[red_circle()], return_tensors="pt")

    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == image_tokens
    named = set(inspect.signature(type(model).forward).parameters)
    assert set(inputs) <= named
    assert set(processor.image_processor([red_circle()], return_tensors="pt")) - named == image_processor_only
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        loss = model(**inputs, labels=inputs["input_ids"]).loss
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 5
    assert torch.isfinite(loss)
