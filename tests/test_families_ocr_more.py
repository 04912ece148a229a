"""VerboVision on the families of tests/tiny_families_ocr_more.py where the family matrix does not show it: the
image processor's tensors beyond its model_input_names reach the model (DeepSeek-OCR-2's tiles); families that cannot
work are refused as they load, with the reason, and `verbo caption` exits 2 with that one line."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from verbovision.cli import main
from verbovision.data.batching import Collator
from verbovision.data.encoding import Encoder
from verbovision.data.records import DATA_IMAGE_TOKEN, Record, Turn
from verbovision.families import family_of
from verbovision.model.store import load_model

from .helpers import CAPTIONS, LORA, needs_model_type, picture, train_one_stage
from .tiny_families import make_tiny_llava
from .tiny_families_ocr_more import BUILDERS


def test_deepseek_ocr2_takes_the_tiles_of_a_large_image(tmp_path, tiny_tokenizer_texts):
    """Its image processor returns a large image's tiles as pixel_values_local, which its model_input_names leaves out;
    without them the model has features for the global view only, fewer than the processor's image tokens."""
    needs_model_type("deepseek_ocr2")
    model, processor = load_model(BUILDERS["deepseek_ocr2"](tmp_path / "base", tiny_tokenizer_texts), device="cpu")
    assert "pixel_values_local" not in processor.image_processor.model_input_names
    encoder = Encoder(processor, "plain", family=family_of(model.config))
    turns = [Turn("user", f"{DATA_IMAGE_TOKEN}\nFree OCR."), Turn("assistant", "a red square")]
    batch = Collator(encoder)([encoder.encode(Record("ocr", [picture(96, 80)], turns, "large"))]).batch
    assert batch["num_local_patches"].tolist() == [4]  # 96x80: 2x2 tiles of 48x48 beside the global view
    assert batch["pixel_values_local"].shape == (4, 3, 48, 48)
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}).loss
    assert math.isfinite(loss.item())


def test_an_adapter_peft_loads_without_some_of_its_weights_is_refused(tmp_path, shapes_data, tiny_tokenizer_texts,
                                                                    capsys):
    """PEFT only warns when an adapter's weights find no place in the model (as DeepSeek-OCR-2's do under PEFT 0.21,
    renamed a second time by transformers' checkpoint conversion), and the model then runs without them. Shown with
    an adapter one of whose weights is renamed."""
    base = make_tiny_llava(tmp_path / "base", tiny_tokenizer_texts)
    stage = {"name": "lora", "template": "chat", "data": CAPTIONS, "max_steps": 1, "batch_size": 1,
             "train": {"vision": "frozen", "connector": "frozen", "language": "lora"},
             "lora": {**LORA, "target": "all-linear"}}
    adapter = train_one_stage(tmp_path, shapes_data, base, stage) / "stages/0-lora/adapter"
    weights = load_file(adapter / "adapter_model.safetensors")
    renamed = next(k for k in weights if ".lora_B." in k)
    weights[renamed.replace("layers.", "layer.")] = weights.pop(renamed)
    save_file(weights, adapter / "adapter_model.safetensors")
    picture(48, 40).save(tmp_path / "picture.png")
    capsys.readouterr()
    assert main(["caption", str(adapter), str(tmp_path / "picture.png"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"verbo: error: {adapter}: PEFT ") and "without some of its weights" in error


REFUSED = {
    "pp_chart2table": "its processor expands no image token",
}


@pytest.mark.parametrize("family", REFUSED)
def test_unsupported_family_is_refused_as_it_loads(family, tmp_path, tiny_tokenizer_texts, capsys):
    needs_model_type(family)
    base = BUILDERS[family](tmp_path / "base", tiny_tokenizer_texts)
    picture(48, 40).save(tmp_path / "picture.png")
    capsys.readouterr()
    assert main(["caption", str(base), str(tmp_path / "picture.png"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"verbo: error: {family} models are not supported: {REFUSED[family]}")
    assert "\n" not in error
