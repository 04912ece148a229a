"""VerboVision on the LLaVA-like families of tests/tiny_families_llava_like.py."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from verbovision.data.image_tokens import ImageTokens
from verbovision.infer.messages import prompt_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.model.store import load_processor

from .tiny_families_llava_like import BUILDERS, make_tiny_aya_vision, make_tiny_llava_next, plain_processor


@pytest.mark.parametrize("size", [(64, 64), (64, 40), (40, 64), (40, 30)])
def test_image_tokens_follow_the_aspect_ratio(size, tmp_path, tiny_tokenizer_texts):
    """LLaVA-NeXT's anyres token count follows the image's aspect ratio: each image gets its own size's expansion."""
    processor = load_processor(make_tiny_llava_next(tmp_path / "llava_next", tiny_tokenizer_texts))
    image = Image.new("RGB", size)
    expansion = processor(text=[processor.image_token], images=[[image]], add_special_tokens=False)["input_ids"][0]
    tokens = ImageTokens(processor)
    assert tokens.fixed is None
    assert tokens.ids(image) == list(expansion)


def test_an_image_placeholder_that_is_no_token(tmp_path, tiny_tokenizer_texts):
    """Aya Vision's `<image>` is a string its processor replaces, not a token: the text is tokenized around it and
    the image gets the processor's expansion (<|START_OF_IMG|> ... <|IMG_PATCH|> ... <|END_OF_IMG|>)."""
    vlm = VLM(make_tiny_aya_vision(tmp_path / "aya", tiny_tokenizer_texts), device="cpu")
    processor = vlm.processor
    assert "<image>" not in processor.tokenizer.get_vocab()
    image = Image.new("RGB", (64, 64), "red")
    ids = vlm.encoder.encode(prompt_record(image, "Describe the image briefly."), for_generation=True).input_ids
    expansion = processor(text=["<image>"], images=[[image]], add_special_tokens=False)["input_ids"][0]
    starts = [i for i in range(len(ids)) if ids[i:i + len(expansion)] == expansion]
    assert len(starts) == 1 and ids.count(vlm.model.config.image_token_id) == expansion.count(processor.image_token_id)
    assert isinstance(vlm.caption([image], options=DecodeOptions(max_new_tokens=3))[0], str)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision", "aya_vision", "internvl"])
def test_prompts_are_those_of_plain_transformers(family, tmp_path, tiny_tokenizer_texts):
    """A caption request encodes to the ids the processor's own chat template gives for [image, text]: the newline
    that joins an image to its text in records is no second separator after the template's own."""
    path = BUILDERS[family](tmp_path / family, tiny_tokenizer_texts)
    vlm = VLM(path, device="cpu")
    image = Image.new("RGB", (64, 64), "red")
    ids = vlm.encoder.encode(prompt_record(image, "Describe the image briefly."), for_generation=True).input_ids
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "Describe the image briefly."}]}]
    plain = plain_processor(path).apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)
    assert ids == plain["input_ids"][0]


@pytest.mark.parametrize("family", BUILDERS)
def test_pixels_match_the_image_tokens(family, tmp_path, tiny_tokenizer_texts):
    """The pixels of a batch are what the processor gives the image tokens of its texts: InternVL tiles images only
    where its processor asks it (`crop_to_patches`, off in its image processor's own settings)."""
    vlm = VLM(BUILDERS[family](tmp_path / family, tiny_tokenizer_texts), device="cpu")
    images = [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 40), "blue")]
    records = [prompt_record(image, "Describe the image briefly.") for image in images]
    batch = vlm.collator.pad([vlm.encoder.encode(record, for_generation=True) for record in records])
    pixels = vlm.encoder.pixel_inputs(images)
    texts = [vlm.processor.image_token] * len(images)
    expected = vlm.processor(text=texts, images=[[image] for image in images], padding=True,
                                return_tensors="pt")
    assert set(pixels) <= set(expected) and all(pixels[k].equal(expected[k]) for k in pixels)
    batch.pop("labels")
    with torch.no_grad():  # the model checks that its image features fill exactly its image tokens
        assert vlm.model(**vlm.family.model_inputs({**batch, **pixels})).logits.shape[:2] == batch["input_ids"].shape
