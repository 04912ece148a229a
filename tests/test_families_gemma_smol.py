"""VerboVision on the tiny Gemma 3, PaliGemma and SmolVLM checkpoints of tests/tiny_families_gemma_smol.py."""

from __future__ import annotations

import torch
from PIL import Image

from verbovision.data import Collator, Encoder, Record, Turn
from verbovision.families import family_of
from verbovision.store import load_model

from .tiny_families_gemma_smol import make_tiny_gemma3


def _marked(ids: list[int], types: list[int]) -> list[int]:
    return [i for i, t in zip(ids, types) if t == 1]


def test_gemma3_batches_mark_the_image_soft_tokens_as_its_processor_does(tmp_path, tiny_tokenizer_texts):
    """Gemma 3 attends bidirectionally within an image only where `token_type_ids` mark its soft tokens: the batches
    carry them as the processor's own output does (the image token of the text, `<start_of_image>`, is not one)."""
    model, processor = load_model(make_tiny_gemma3(tmp_path / "gemma3", tiny_tokenizer_texts), device="cpu")
    encoder = Encoder(processor, "chat", family=family_of(model.config))
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    record = Record("r", [image], [Turn("user", "<image>\nDescribe the image briefly."),
                                   Turn("assistant", "a red square")], "test")
    batch = Collator(encoder).pad([encoder.encode(record)])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image briefly."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a red square"}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    expected = processor(text=[text], images=[[image]], add_special_tokens=False)
    ids, types = batch["input_ids"][0].tolist(), batch["token_type_ids"][0].tolist()
    assert processor.tokenizer.decode(ids) == processor.tokenizer.decode(expected["input_ids"][0])
    soft = model.config.image_token_id
    assert _marked(ids, types) == _marked(expected["input_ids"][0], expected["token_type_ids"][0]) == [soft] * 4
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items() if k != "labels"}, pixel_values=pixels, labels=batch["labels"])
    assert torch.isfinite(loss.loss)
