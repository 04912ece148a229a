"""The tiny random checkpoints of tests/tiny_families_gemma_smol.py in plain transformers: they load with the Auto
classes, their processor prompts them the family's way, a forward with labels gives a loss, and `generate` runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

from verbovision.families import forward_parameters

from .helpers import CHAT, TEXTS, finite, picture
from .tiny_families_gemma_smol import BUILDERS

MODEL_CLASSES = {"gemma3": "Gemma3ForConditionalGeneration", "paligemma": "PaliGemmaForConditionalGeneration",
                 "smolvlm": "SmolVLMForConditionalGeneration"}
PROCESSOR_CLASSES = {"gemma3": "Gemma3Processor", "paligemma": "PaliGemmaProcessor", "smolvlm": "SmolVLMProcessor"}
PROCESSOR_KEYS = {
    # what the processor returns for a prompt with one image; every one of them a name of the model's forward
    "gemma3": {"input_ids", "attention_mask", "pixel_values", "token_type_ids"},  # num_crops dropped by the processor
    # labels always: the prefix's -100s, followed by the suffix's ids when it is given one
    "paligemma": {"input_ids", "attention_mask", "pixel_values", "token_type_ids", "labels"},
    "smolvlm": {"input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"},
}
PROMPTS = {
    "gemma3": "<bos><start_of_turn>user\n<start_of_image>Describe.<end_of_turn>\n<start_of_turn>model\n",
    "smolvlm": "<|im_start|>User:<image>Describe.<end_of_utterance>\nAssistant:",
}
IMAGE_TOKENS = {"gemma3": 4, "paligemma": 16, "smolvlm": 20}  # model.config.image_token_id in a 48x40 image's prompt


def _gemma3_batches(processor, image):
    """Gemma 3 prompted with its chat template; the template writes the BOS, so the tokenizer adds none."""
    prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt == PROMPTS["gemma3"]
    inputs = processor(text=[prompt], images=[image], add_special_tokens=False, return_tensors="pt")
    batch = processor(text=[prompt + "a red square<end_of_turn>\n"], images=[image], add_special_tokens=False,
                      return_tensors="pt")
    assert (batch["token_type_ids"] == (batch["input_ids"] == processor.tokenizer.image_token_id)).all()
    reply = batch["input_ids"].shape[1] - inputs["input_ids"].shape[1]
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, -reply:] = batch["input_ids"][:, -reply:]
    return inputs, batch, labels


def _paligemma_batches(processor, image):
    """PaliGemma prompted with a task prefix: the processor puts the image tokens and BOS before it, a newline after,
    and with a suffix returns the labels and token types (0 prefix, 1 suffix) itself."""
    inputs = processor(text=["caption en"], images=[image], return_tensors="pt")
    assert (inputs["labels"] == -100).all()
    batch = processor(text=["caption en"], images=[image], suffix=["a red square"], return_tensors="pt")
    tokenizer, n = processor.tokenizer, processor.image_seq_length
    ids, types = batch["input_ids"][0].tolist(), batch["token_type_ids"][0].tolist()
    prefix = len(inputs["input_ids"][0])
    assert ids[:prefix] == [processor.image_token_id] * n + [tokenizer.bos_token_id] + tokenizer.encode(
        "caption en\n", add_special_tokens=False)
    assert ids[prefix:] == tokenizer.encode("a red square", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert types == [0] * prefix + [1] * (len(ids) - prefix)
    assert batch["labels"][0].tolist() == [-100] * prefix + ids[prefix:]
    return inputs, batch, batch.pop("labels")


def _smolvlm_batches(out: Path, image):
    """SmolVLM without its processor class: image processor, tokenizer, saved template, and transformers' own
    expansion of `<image>` (what `SmolVLMProcessor` does with the image processor's rows and columns)."""
    image_processor, tokenizer = AutoImageProcessor.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    template = (out / "chat_template.jinja").read_text(encoding="utf-8")
    settings = json.loads((out / "processor_config.json").read_text(encoding="utf-8"))
    prompt = tokenizer.apply_chat_template(CHAT, chat_template=template, add_generation_prompt=True, tokenize=False)
    assert prompt == PROMPTS["smolvlm"]
    pixels = image_processor([[image]], return_row_col_info=True, return_tensors="pt")
    expansion = get_image_prompt_string(pixels.pop("rows")[0][0], pixels.pop("cols")[0][0], settings["image_seq_len"],
                                        "<fake_token_around_image>", "<image>", "<global-img>")

    def batch(text: str) -> dict:
        return dict(tokenizer([text.replace("<image>", expansion)], return_tensors="pt"), **pixels)

    inputs, full = batch(prompt), batch(prompt + "a red square<end_of_utterance>")
    reply = full["input_ids"].shape[1] - inputs["input_ids"].shape[1]
    labels = torch.full_like(full["input_ids"], -100)
    labels[:, -reply:] = full["input_ids"][:, -reply:]
    return inputs, full, labels


def _processor_or_why(out: Path, family: str):
    """The processor, or for SmolVLM where it cannot load here, why not (torchvision for its video processor,
    num2words for the class itself)."""
    try:
        return AutoProcessor.from_pretrained(out), None
    except ImportError as e:
        if family != "smolvlm":
            raise
        assert "torchvision" in str(e).lower() or "num2words" in str(e)
        return None, str(e)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_tiny_family_loads_trains_and_generates(tmp_path, family):
    out = BUILDERS[family](tmp_path / family, TEXTS)
    assert sum(f.stat().st_size for f in out.iterdir()) < 1_000_000
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(model).__name__ == MODEL_CLASSES[family] and model.dtype == torch.float32
    processor, why = _processor_or_why(out, family)
    image = picture(48, 40)
    if family == "gemma3":
        inputs, batch, labels = _gemma3_batches(processor, image)
    elif family == "paligemma":
        assert processor.chat_template is None and processor.tokenizer.chat_template is None
        assert AutoTokenizer.from_pretrained(out)("a")["input_ids"][0] == model.config.text_config.bos_token_id
        inputs, batch, labels = _paligemma_batches(processor, image)
    else:
        inputs, batch, labels = _smolvlm_batches(out, image)
    assert processor is None or type(processor).__name__ == PROCESSOR_CLASSES[family]
    assert set(inputs) == PROCESSOR_KEYS[family], why
    assert PROCESSOR_KEYS[family] | {"labels"} <= forward_parameters(type(model))
    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == IMAGE_TOKENS[family]
    assert finite(model(**batch, labels=labels).loss)
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = generated[:, inputs["input_ids"].shape[1]:]
    assert 1 <= new.shape[1] <= 5
    tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(out)
    assert isinstance(tokenizer.decode(new[0], skip_special_tokens=True), str)
