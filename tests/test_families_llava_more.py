"""Families of tests/tiny_families_llava_more.py beyond the family matrix: FastVLM, which cannot be built here."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import FastVlmConfig

from verbovision.cli import main
from verbovision.errors import VerboError
from verbovision.train.preflight import model_skeleton

from .tiny_families import TINY_LM


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_a_model_needing_a_missing_package_says_what_to_install(tmp_path, capsys):
    """FastVLM's vision tower is a timm model: without timm, loading or preflighting one is one line naming timm."""
    model = tmp_path / "fast_vlm"
    FastVlmConfig(text_config={"model_type": "qwen2", **TINY_LM, "vocab_size": 300}).save_pretrained(model)
    save_file({"unread": torch.zeros(1)}, str(model / "model.safetensors"), metadata={"format": "pt"})
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32)).save(image)

    assert main(["caption", str(model), str(image), "--device", "cpu"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]  # after the note that fast_vlm is untried
    assert said == f"verbo: error: {model}: its model needs the timm package, which is not installed: pip install timm"
    with pytest.raises(VerboError, match="its model needs the timm package"):
        model_skeleton(str(model))
