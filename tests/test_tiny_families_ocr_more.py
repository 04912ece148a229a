"""The tiny checkpoints of tests/tiny_families_ocr_more.py in plain transformers: loaded with the Auto classes,
prompted with one image (through the family's chat template, or its processor's own layout where the Hub checkpoint
has no template), then `generate` and a forward with labels. Nothing of VerboVision is used but the tokenizer trainer
the builders share."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import AutoModelForImageTextToText

from .helpers import CHAT, needs_model_type, picture
from .tiny_families_llava_like import plain_processor
from .tiny_families_ocr_more import BUILDERS, GOT_IMAGE_TOKENS

OWN_LAYOUT = None
"""The processor lays out the family's prompt itself (`text=None`)."""

FAMILIES = {
    # model_type: (the prompt: "chat", OWN_LAYOUT or the text itself; image tokens of one 48x40 picture)
    "got_ocr2": (OWN_LAYOUT, GOT_IMAGE_TOKENS),
    "pp_chart2table": ("<img>" + "<imgpad>" * GOT_IMAGE_TOKENS + "</img>Describe.", GOT_IMAGE_TOKENS),
    "ovis2": ("chat", 16),  # one tile: 16 <IMG_ATOM>
    "janus": ("chat", 16),
    "aria": ("chat", 16),
    "deepseek_ocr2": ("<image>\nFree OCR.", 257),  # smaller than a tile: the global view alone, and the separator
    "lighton_ocr": ("chat", 9),  # 48x40 -> 48x48 pixels -> 3x3 merged patches
    "ovis2_5": ("chat", 6),  # 48x40 -> 48x32 pixels -> 3x2 merged patches
    "qianfan_ocr": ("chat", 4),  # 48x40 is closest to a 1x1 grid of tiles: one tile, no thumbnail
}


def _prompt(processor, prompt: str | None) -> str | None:
    if prompt == "chat":
        return processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    return prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(family, tmp_path, tiny_tokenizer_texts):
    needs_model_type(family)
    prompt, image_tokens = FAMILIES[family]
    path = BUILDERS[family](tmp_path / family, tiny_tokenizer_texts)
    assert sum(f.stat().st_size for f in path.iterdir() if f.is_file()) < 5_000_000
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model.config.model_type == family
    processor = plain_processor(path)  # without torchvision, one holding a video processor loads images-only
    inputs = processor(text=_prompt(processor, prompt), images=[picture(48, 40)], return_tensors="pt")

    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == image_tokens
    assert set(inputs) <= set(inspect.signature(type(model).forward).parameters)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    n_prompt = inputs["input_ids"].shape[1]
    assert out[0, :n_prompt].tolist() == inputs["input_ids"][0].tolist() and n_prompt < out.shape[1] <= n_prompt + 5

    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    loss = model(**inputs, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    tower = next(p for n, p in model.named_parameters() if "vision" in n or "visual" in n)
    assert tower.grad.abs().sum() > 0  # the loss reached the image through the vision tower
