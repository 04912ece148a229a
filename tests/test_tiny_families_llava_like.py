"""The LLaVA-like tiny checkpoints (tests/tiny_families_llava_like.py) in plain transformers: loaded with the Auto
classes, prompted through the family's chat template with one image, then `generate` and a forward with labels.
Nothing of VerboVision is used here but the tokenizer trainer the builders share."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from transformers.utils import is_torchvision_available

from .tiny_families_llava_like import BUILDERS

FAMILIES = {
    # model_type: (image tokens of one 64x64 image in the prompt, image processor outputs the forward does not name;
    # the processor's own outputs are all named)
    "llava_next": (36, set()),
    "llava_onevision": (36, set()),
    "aya_vision": (20, {"num_patches"}),
    "internvl": (20, {"num_patches"}),
}


def _images_only_processor(path: Path):
    """The saved processor without its video processor, which needs torchvision: the class named in
    processor_config.json, built from the saved image processor, tokenizer, settings and chat template."""
    import transformers

    config = json.loads((path / "processor_config.json").read_text(encoding="utf-8"))
    settings = {k: v for k, v in config.items() if k not in ("image_processor", "video_processor", "processor_class")}

    class ImagesOnly(getattr(transformers, config["processor_class"])):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(path),
                      tokenizer=AutoTokenizer.from_pretrained(path), video_processor=None,
                      chat_template=(path / "chat_template.jinja").read_text(encoding="utf-8"), **settings)


def _processor(path: Path):
    config = json.loads((path / "processor_config.json").read_text(encoding="utf-8"))
    if "video_processor" in config and not is_torchvision_available():
        return _images_only_processor(path)
    return AutoProcessor.from_pretrained(path)


def _image() -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill="red")
    return image


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(family, tmp_path, tiny_tokenizer_texts):
    image_tokens, image_processor_only = FAMILIES[family]
    path = BUILDERS[family](tmp_path / family, tiny_tokenizer_texts)
    assert sum(f.stat().st_size for f in path.iterdir() if f.is_file()) < 5_000_000
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model.config.model_type == family
    processor = _processor(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image briefly."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[_image()], return_tensors="pt")

    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == image_tokens
    named = set(inspect.signature(type(model).forward).parameters)
    assert set(inputs) <= named
    assert set(processor.image_processor([_image()], return_tensors="pt")) - named == image_processor_only
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        loss = model(**inputs, labels=inputs["input_ids"]).loss
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 5
    assert torch.isfinite(loss)
