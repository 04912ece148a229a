"""VerboVision on the LLaVA-like families of tests/tiny_families_llava_like.py."""

from __future__ import annotations

import pytest
from PIL import Image

from verbovision.data import ImageTokens
from verbovision.store import load_processor

from .tiny_families_llava_like import make_tiny_llava_next


@pytest.mark.parametrize("size", [(64, 64), (64, 40), (40, 64), (40, 30)])
def test_image_tokens_follow_the_aspect_ratio(size, tmp_path, tiny_tokenizer_texts):
    """LLaVA-NeXT's anyres token count follows the image's aspect ratio: each image gets its own size's expansion."""
    processor = load_processor(make_tiny_llava_next(tmp_path / "llava_next", tiny_tokenizer_texts))
    image = Image.new("RGB", size)
    expansion = processor(text=[processor.image_token], images=[[image]], add_special_tokens=False)["input_ids"][0]
    tokens = ImageTokens(processor)
    assert tokens.fixed is None
    assert tokens.ids(image) == list(expansion)
