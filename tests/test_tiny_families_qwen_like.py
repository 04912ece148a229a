"""The tiny checkpoints of tests/tiny_families_qwen_like.py in plain transformers: they load with the Auto classes,
their processor renders the family's prompt and expands its image token, `generate` runs and labels give a loss."""

from __future__ import annotations

import math

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from verbovision.families import forward_parameters
from verbovision.store import load_processor

from .helpers import needs_model_type
from .test_tiny_families import TEXTS, picture
from .tiny_families_qwen_like import BUILDERS

CHAT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
QWEN2_VL_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                   "<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n")
DEEPSEEK_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                   "that the user provides, and assist the user with a variety of tasks using natural language.\n\n"
                   "User: <image_placeholder>Describe.\n\nAssistant:")
QWEN_KEYS = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"}
FAMILIES = {
    # family: (model class, processor class, prompt, processor output keys, image tokens for a 48x40 picture)
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", QWEN2_VL_PROMPT,
                   QWEN_KEYS | {"mm_token_type_ids"}, 6),  # 48x40 -> 48x32 pixels -> 3x2 merged tokens
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor",
                 "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
                 "<|im_start|>assistant\n", QWEN_KEYS | {"mm_token_type_ids"}, 6),
    "llava_onevision1_5": ("LlavaOnevision15ForConditionalGeneration", "Exaone4_5_Processor", QWEN2_VL_PROMPT,
                           QWEN_KEYS, 6),
    "deepseek_vl": ("DeepseekVLForConditionalGeneration", "DeepseekVLProcessor", DEEPSEEK_PROMPT,
                    {"input_ids", "attention_mask", "pixel_values"}, 16),
    "deepseek_vl_hybrid": ("DeepseekVLHybridForConditionalGeneration", "DeepseekVLHybridProcessor", DEEPSEEK_PROMPT,
                           {"input_ids", "attention_mask", "pixel_values", "high_res_pixel_values"}, 16),
}


def _processor(out):
    """AutoProcessor; without torchvision a processor class holding a video processor can be neither built nor loaded
    by transformers, so VerboVision's images-only loading of the same class stands in for it."""
    try:
        return AutoProcessor.from_pretrained(out)
    except ImportError:
        assert not is_torchvision_available()
        processor = load_processor(out)
        assert processor.video_processor is None
        return processor


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_in_plain_transformers(tmp_path, family):
    needs_model_type(family)
    inputs, processor = check_in_plain_transformers(BUILDERS[family](tmp_path / family, TEXTS), family,
                                                    *FAMILIES[family])
    if family.startswith("deepseek"):  # its Llama tokenizer starts every text with BOS; the template does not
        assert inputs["input_ids"][0, 0].item() == processor.tokenizer.bos_token_id


def check_in_plain_transformers(out, family: str, model_class: str, processor_class: str, prompt: str, keys: set,
                                image_tokens: int):
    """A tiny checkpoint of `family` loads with the Auto classes as `model_class` and a `processor_class`, renders
    the chat `prompt`, turns it and a 48x40 picture into `keys` with `image_tokens` image tokens, generates, and its
    loss reaches the vision tower. Returns the prompt's inputs and the processor."""
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
    patch_embedding = next(p for n, p in model.named_parameters()
                           if ("vision" in n or "visual" in n) and "language_model" not in n)  # not ERNIE's experts
    assert patch_embedding.grad.abs().sum() > 0  # the loss reached the image through the vision tower
    return inputs, processor
