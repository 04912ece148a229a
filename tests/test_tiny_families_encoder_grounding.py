"""The tiny checkpoints of tests/tiny_families_encoder_grounding.py load with the Auto classes, prompt as their
families do, generate, and give a finite loss; and what their processors return is what their forwards name."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from .helpers import TEXTS, picture
from .tiny_families_encoder_grounding import BUILDERS, NUM_QUERY_TOKENS

FAMILIES = {
    # model_type: (model class, processor class, the family's prompt, what the processor returns)
    "florence2": ("Florence2ForConditionalGeneration", "Florence2Processor", "<CAPTION>",
                  {"input_ids", "attention_mask", "pixel_values"}),
    "blip-2": ("Blip2ForConditionalGeneration", "Blip2Processor", "Question: how many shapes are there? Answer:",
               {"input_ids", "attention_mask", "pixel_values"}),
    "instructblip": ("InstructBlipForConditionalGeneration", "InstructBlipProcessor", "How many shapes are there?",
                     {"input_ids", "attention_mask", "pixel_values", "qformer_input_ids", "qformer_attention_mask"}),
    "kosmos-2": ("Kosmos2ForConditionalGeneration", "Kosmos2Processor", "<grounding>An image of",
                 {"input_ids", "attention_mask", "pixel_values", "image_embeds_position_mask"}),
}
ANSWER = " a red square"


def image_positions(family: str, processor, batch) -> torch.Tensor:
    """Where the image features go in the (encoder) input: [B, T] bool."""
    if family == "kosmos-2":
        return batch["image_embeds_position_mask"].bool()
    token = processor.tokenizer.convert_tokens_to_ids(str(processor.image_token))  # BLIP-2's is an AddedToken
    return batch["input_ids"] == token


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_family_prompts_generates_and_trains(tmp_path, family):
    model_class, processor_class, prompt, keys = FAMILIES[family]
    out = BUILDERS[family](tmp_path / family, TEXTS)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert (type(model).__name__, type(processor).__name__) == (model_class, processor_class)
    assert model.config.model_type == family and model.dtype == torch.float32
    assert processor.chat_template is None  # none of these families' Hub checkpoints has one
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    tokenizer = processor.tokenizer

    inputs = processor(text=prompt, images=picture(48, 40), return_tensors="pt")
    assert set(inputs) == keys
    assert keys <= set(inspect.signature(model.forward).parameters)  # the forward names every one
    images = image_positions(family, processor, inputs)
    expected = {"florence2": 5, "blip-2": NUM_QUERY_TOKENS, "instructblip": NUM_QUERY_TOKENS, "kosmos-2": 64}[family]
    assert images.sum().item() == expected
    if family == "florence2":
        text = tokenizer.decode(inputs["input_ids"][0][expected:])
        assert text == "<s>What does the image describe?</s>"  # the task token's question, in the encoder's input
    elif family in ("blip-2", "instructblip"):
        assert images[0, :expected].all()  # in front of the text, the BOS included
    else:
        assert inputs["input_ids"][0, 1].item() == processor.tokenizer.convert_tokens_to_ids("<image>")
        assert inputs["input_ids"][0, 2:2 + expected].tolist() == list(range(tokenizer.unk_token_id + 1,
                                                                            tokenizer.unk_token_id + 1 + expected))

    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt_length = 1 if family == "florence2" else inputs["input_ids"].shape[1]  # the decoder starts from one token
    if family == "florence2":
        assert generated[0, 0].item() == model.config.text_config.decoder_start_token_id
    else:
        assert torch.equal(generated[:, :prompt_length], inputs["input_ids"])
    assert 1 <= generated.shape[1] - prompt_length <= 5

    if family == "florence2":  # the reply is the decoder's: labels are its tokens, shifted right inside the model
        labels = tokenizer(ANSWER.strip(), return_tensors="pt")["input_ids"]
        batch = inputs
    else:  # one sequence: labels are its ids, the image positions masked
        kwargs = {"add_eos_token": True} if family == "kosmos-2" else {}
        batch = processor(text=prompt + ANSWER, images=picture(48, 40), return_tensors="pt", **kwargs)
        labels = batch["input_ids"].masked_fill(image_positions(family, processor, batch), -100)
    loss = model(**batch, labels=labels).loss
    assert loss is not None and math.isfinite(loss.item())
