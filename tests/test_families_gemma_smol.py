"""VerboVision on the tiny Gemma 3, PaliGemma and SmolVLM checkpoints of tests/tiny_families_gemma_smol.py."""

from __future__ import annotations

import torch
from PIL import Image
from transformers.models.smolvlm import processing_smolvlm

from verbovision.cli import main
from verbovision.data.batching import Collator
from verbovision.data.encoding import Encoder, with_trained_template
from verbovision.data.records import Record, Turn
from verbovision.data.sources import read_records
from verbovision.families import family_of
from verbovision.infer.messages import prompt_record
from verbovision.model.features import FeatureCache
from verbovision.model.loss import token_loss
from verbovision.model.store import load_model

from .tiny_families_gemma_smol import make_tiny_gemma3, make_tiny_paligemma, make_tiny_smolvlm


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
    question = [{"type": "image"}, {"type": "text", "text": "Describe the image briefly."}]
    messages = [{"role": "user", "content": question},
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


def test_gemma3_cached_features_give_the_pixels_loss(tmp_path, shapes_data, tiny_tokenizer_texts):
    """Gemma 3's connector takes the SigLIP tower's last hidden state, so its frozen-vision stages use the feature
    cache: the same loss as from pixels (token types included), and the images matter to it."""
    model, processor = load_model(make_tiny_gemma3(tmp_path / "gemma3", tiny_tokenizer_texts), device="cpu")
    assert family_of(model.config).caches_features
    encoder = Encoder(processor, "chat", family=family_of(model.config))
    examples = [encoder.encode(r) for r in list(read_records(shapes_data / "train/caption_short_en.json"))[:4]]
    cache = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")
    assert cache.ensure([p for e in examples for p in e.images]) == {}
    pixels, features = Collator(encoder)(examples).batch, Collator(encoder, features=cache)(examples).batch
    pixels.pop("num_crops", None)  # pan-and-scan bookkeeping, which the processor drops from the model's inputs
    assert "token_type_ids" in features and "pixel_values" not in features
    with torch.no_grad():
        family = encoder.family
        from_pixels = token_loss(model, pixels, "cpu", family)
        from_features = token_loss(model, features, "cpu", family)
        shuffled = token_loss(model, {**features, "image_features": features["image_features"].flip(0)}, "cpu", family)
    assert abs(from_features.item() - from_pixels.item()) < 1e-5
    assert abs(shuffled.item() - from_features.item()) > 1e-4


def test_smolvlm_without_num2words_says_what_to_install(tmp_path, tiny_tokenizer_texts, monkeypatch, capsys):
    """SmolVLMProcessor refuses to be built without the num2words package, images or not: one line naming it."""
    monkeypatch.setattr(processing_smolvlm, "num2words", None)  # as where the package is not installed
    base = make_tiny_smolvlm(tmp_path / "smolvlm", tiny_tokenizer_texts)
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30)).save(image)
    capsys.readouterr()
    assert main(["caption", str(base), str(image), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.endswith("not installed: pip install num2words"), error


def test_paligemma_attends_its_prompt_both_ways_and_its_reply_causally(tmp_path, tiny_tokenizer_texts):
    """PaliGemma's prefix-LM: batches mark the prompt 0 and the reply 1 in token_type_ids, as its processor does for
    a prefix and a suffix. Without them a batch with no padding would attend both ways over the reply as well."""
    model, processor = load_model(make_tiny_paligemma(tmp_path / "paligemma", tiny_tokenizer_texts), device="cpu")
    encoder = Encoder(processor, "plain", family=family_of(model.config))
    record = Record("r", [Image.new("RGB", (40, 30), (200, 30, 30))],
                    [Turn("user", "<image>\nDescribe the image briefly."), Turn("assistant", "a red square")], "test")
    batch = Collator(encoder)([encoder.encode(record)]).batch
    labels = batch.pop("labels")[0].tolist()
    first = next(i for i, label in enumerate(labels) if label != -100)
    assert batch["token_type_ids"][0].tolist() == [0] * first + [1] * (len(labels) - first)

    def logits(position: int | None = None) -> torch.Tensor:
        """The logits, with the token at `position` changed."""
        ids = batch["input_ids"].clone()
        if position is not None:
            ids[0, position] = processor.tokenizer.convert_tokens_to_ids("a")
        with torch.no_grad():
            return model(**{**batch, "input_ids": ids}).logits[0]

    unchanged = logits()
    assert torch.equal(logits(-1)[:-1], unchanged[:-1])  # the last reply token reaches no earlier position
    assert not torch.allclose(logits(first - 2)[first - 3], unchanged[first - 3])  # a later prompt token does


def test_paligemma_is_prompted_and_trained_as_its_processor_lays_it_out(tmp_path, tiny_tokenizer_texts, capsys):
    """A PaliGemma needs no --template: its texts are laid out as PaliGemmaProcessor lays them out (the images, BOS,
    the prompt and a newline; the reply and EOS as the suffix), so a training example is the processor's with
    `suffix=`, and `verbo caption` asks "caption en" and replies what a greedy `generate` on the processor's inputs
    gives."""
    base = make_tiny_paligemma(tmp_path / "paligemma", tiny_tokenizer_texts)
    model, processor = load_model(base, device="cpu")
    encoder = Encoder(processor, family=family_of(model.config))
    assert encoder.template == "prefix"
    # Saved after training, it keeps having no chat template: its processor lays out the prompt itself.
    assert with_trained_template(processor, encoder.family, {"template": "prefix"}).chat_template is None
    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 40), (30, 30, 200))]
    # The tiny tokenizer has a token "\nanswer": the reply is tokenized apart from the prompt, as a suffix is.
    reply = "answer: a red square"
    record = Record("r", images, [Turn("user", "<image>caption en<image>"), Turn("assistant", reply)], "test")
    batch = Collator(encoder)([encoder.encode(record)]).batch
    expected = processor(text="caption en", images=[images], suffix=reply, return_tensors="pt")
    assert expected["input_ids"][0].tolist().count(processor.tokenizer.bos_token_id) == 1
    for key in ("input_ids", "labels", "token_type_ids", "pixel_values"):
        assert torch.equal(batch[key], expected[key]), key

    # Larger language weights than the builder's: its greedy replies would repeat the prompt's last newline.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, weight in model.model.language_model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.normal_(std=0.3)
    model.save_pretrained(base)
    image = tmp_path / "red.png"
    images[0].save(image)
    capsys.readouterr()
    assert main(["caption", str(base), str(image), "--device", "cpu", "--max-new-tokens", "6"]) == 0
    caption = capsys.readouterr().out.rstrip("\n").split("\t")[1]
    inputs = processor(text="caption en", images=Image.open(image), return_tensors="pt")
    inputs.pop("labels")
    prompt = encoder.encode(prompt_record(image, "caption en"), for_generation=True)
    assert prompt.input_ids == inputs["input_ids"][0].tolist()
    with torch.no_grad():
        reply = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert caption == processor.tokenizer.decode(reply, skip_special_tokens=True) != ""
