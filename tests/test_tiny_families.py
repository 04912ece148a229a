"""The tiny random checkpoints of tests/tiny_families.py load with the Auto classes, train a step and generate."""

from __future__ import annotations


import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from transformers.utils import is_torchvision_available

from .helpers import CHAT, TEXTS, finite, picture
from tests.tiny_families import (
    make_tiny_git,
    make_tiny_idefics3,
    make_tiny_qwen2_vl,
    make_tiny_vision_encoder_decoder,
)

BUILDERS = {
    "idefics3": make_tiny_idefics3,
    "qwen2_vl": make_tiny_qwen2_vl,
    "git": make_tiny_git,
    "vision_encoder_decoder": make_tiny_vision_encoder_decoder,
}
MODEL_CLASSES = {
    "idefics3": "Idefics3ForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "git": "GitForCausalLM",
    "vision_encoder_decoder": "VisionEncoderDecoderModel",
}
PROCESSOR_CLASSES = {
    "idefics3": "Idefics3Processor",
    "qwen2_vl": "Qwen2VLProcessor",
    "git": "GitProcessor",
    "vision_encoder_decoder": "VisionTextDualEncoderProcessor",
}
NO_TORCHVISION = "Qwen2VLProcessor holds a video processor, and video processors need torchvision"
PROMPTS = {
    "idefics3": "<|im_start|>User:<image>Describe.<end_of_utterance>\nAssistant:",
    "qwen2_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                "<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n",
}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_tiny_family_loads_trains_and_generates(tmp_path, family):
    if family == "qwen2_vl" and not is_torchvision_available():
        pytest.skip(NO_TORCHVISION)
    out = BUILDERS[family](tmp_path / family, TEXTS)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == MODEL_CLASSES[family] and type(processor).__name__ == PROCESSOR_CLASSES[family]
    assert model.dtype == torch.float32
    tokenizer, image = processor.tokenizer, picture(48, 40)
    gen = model.generation_config

    if family in ("idefics3", "qwen2_vl"):
        assert gen.eos_token_id == tokenizer.eos_token_id
        assert tokenizer.eos_token == {"idefics3": "<end_of_utterance>", "qwen2_vl": "<|im_end|>"}[family]
        assert model.config.image_token_id == processor.image_token_id
        if family == "qwen2_vl":
            token = tokenizer.convert_tokens_to_ids
            assert model.config.video_token_id == token("<|video_pad|>") == processor.video_token_id
            assert model.config.vision_start_token_id == token("<|vision_start|>")
        prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
        assert prompt == PROMPTS[family]
        answer = "a red square" + tokenizer.eos_token
        batch = processor(text=[prompt + answer], images=[image], return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
        assert finite(model(**batch, labels=labels).loss)
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        new = generated[:, inputs["input_ids"].shape[1]:]
    elif family == "git":
        assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (
            tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
        batch = processor(images=image, text="A red square, above a blue circle!", return_tensors="pt")
        assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
        ids = batch["input_ids"][0].tolist()
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.unk_token_id not in ids  # every character is in the vocab
        # Labels are the input ids: the model shifts them and skips the image-patch positions of the logits.
        assert finite(model(**batch, labels=batch["input_ids"]).loss)
        generated = model.generate(pixel_values=batch["pixel_values"], max_new_tokens=3, do_sample=False)
        assert generated[0, 0].item() == tokenizer.cls_token_id  # captioning starts from [CLS] (bos)
        new = generated[:, 1:]
    else:
        assert hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")
        eos = tokenizer.eos_token_id
        assert tokenizer.bos_token_id == eos and model.config.decoder_start_token_id == eos
        assert model.config.pad_token_id == eos and gen.eos_token_id == eos
        pixel_values = processor.image_processor(image, return_tensors="pt")["pixel_values"]
        assert pixel_values.shape == (1, 3, 32, 32)
        labels = torch.tensor([tokenizer("a red square").input_ids + [eos]])
        derived = model(pixel_values=pixel_values, labels=labels)  # decoder_input_ids = labels shifted right
        decoder_input_ids = torch.cat([torch.tensor([[eos]]), labels[:, :-1]], dim=1)
        explicit = model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids, labels=labels)
        assert finite(derived.loss) and torch.allclose(derived.loss, explicit.loss)
        generated = model.generate(pixel_values=pixel_values, max_new_tokens=3, do_sample=False)
        assert generated[0, 0].item() == eos  # decoder_start_token_id
        new = generated[:, 1:]
    assert 1 <= new.shape[1] <= 3
    assert isinstance(tokenizer.decode(new[0], skip_special_tokens=True), str)


def test_idefics3_image_tokens_follow_image_size(tmp_path):
    out = make_tiny_idefics3(tmp_path / "idefics3", TEXTS)
    processor = AutoProcessor.from_pretrained(out)
    prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    image_id = processor.image_token_id
    counts = {}
    for size in [(32, 32), (64, 40)]:
        batch = processor(text=[prompt], images=[picture(*size)], return_tensors="pt")
        counts[size] = (batch["input_ids"] == image_id).sum().item(), batch["pixel_values"].shape[1]
    # 4 tokens per 32x32 crop; longest edge -> 96: 3x3 crops + global for a square, 2x3 + global for 64x40
    assert counts == {(32, 32): (40, 10), (64, 40): (28, 7)}
    # A batch of both: crops padded to 10 per sample (all-zero padding crops are dropped by the model).
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    batch = processor(text=[prompt, prompt], images=[[picture(32, 32)], [picture(64, 40)]], padding=True,
                      return_tensors="pt")
    assert batch["pixel_values"].shape[:2] == (2, 10) and batch["pixel_attention_mask"].shape == (2, 10, 32, 32)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    assert finite(model(**batch, labels=labels).loss)


@pytest.mark.skipif(not is_torchvision_available(), reason=NO_TORCHVISION)
def test_qwen2_vl_image_tokens_follow_image_size(tmp_path):
    out = make_tiny_qwen2_vl(tmp_path / "qwen2_vl", TEXTS)
    processor = AutoProcessor.from_pretrained(out)
    prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    counts = {}
    for size in [(32, 32), (64, 40)]:
        batch = processor(text=[prompt], images=[picture(*size)], return_tensors="pt")
        assert (batch["mm_token_type_ids"] == (batch["input_ids"] == processor.image_token_id)).all()
        counts[size] = (batch["input_ids"] == processor.image_token_id).sum().item()
    assert counts == {(32, 32): 4, (64, 40): 8}


def test_qwen2_vl_checkpoint_without_the_processor_class(tmp_path):
    """What works with no torchvision: the model, the image processor, the tokenizer and the saved chat template,
    with the `<|image_pad|>` expansion the processor would do done by hand."""
    out = make_tiny_qwen2_vl(tmp_path / "qwen2_vl", TEXTS)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    image_processor = AutoImageProcessor.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    template = (out / "chat_template.jinja").read_text(encoding="utf-8")
    prompt = tokenizer.apply_chat_template(CHAT, chat_template=template, add_generation_prompt=True, tokenize=False)
    assert prompt == PROMPTS["qwen2_vl"]
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(
        "<|im_end|>")
    merge = image_processor.merge_size**2
    counts = {}
    for size in [(32, 32), (64, 40)]:
        pixels = image_processor(images=[picture(*size)], return_tensors="pt")
        count = int(pixels["image_grid_thw"].prod()) // merge
        counts[size] = count
        batch = tokenizer([prompt.replace("<|image_pad|>", "<|image_pad|>" * count)], return_tensors="pt")
        image_mask = batch["input_ids"] == model.config.image_token_id
        inputs = dict(batch, **pixels, mm_token_type_ids=image_mask.long())  # required with image_grid_thw
        assert finite(model(**inputs, labels=batch["input_ids"].masked_fill(image_mask, -100)).loss)
    assert counts == {(32, 32): 4, (64, 40): 8}
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert 1 <= generated.shape[1] - batch["input_ids"].shape[1] <= 3
