"""The image-text model types VerboVision refuses as they load, with the reason: ones whose images do not reach the
model as placeholders in a prompt (Pix2Struct, Kosmos-2.5, UDOP, T5Gemma 2, BLIP), that need a text-dependent image
mask VerboVision never gives (IDEFICS, Mllama), that ignore the prompt (ShieldGemma 2), or that are no image-to-text
model at all (a protein-text model, robot-action policies, a block-diffusion LM, a text-only LM) though
AutoModelForImageTextToText lists them. The types of tests/tiny_families_special.py that fit are in the family
matrix."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from verbovision.cli import main
from verbovision.families import SUPPORT

from .helpers import needs_model_type

REFUSED_BY_CONFIG = ["shieldgemma2", "kosmos-2.5", "pix2struct", "udop", "t5gemma2", "blip", "idefics", "mllama",
                     "evolla", "pi0", "pi05", "diffusion_gemma", "mistral4"]
"""Refused from their config alone: `verbo caption` stops before loading any weights or processor."""


@pytest.mark.parametrize("model_type", REFUSED_BY_CONFIG)
def test_refused_type_exits_2_with_the_reason(model_type, tmp_path, shapes_data, capsys):
    needs_model_type(model_type)
    AutoConfig.for_model(model_type).save_pretrained(tmp_path)  # a checkpoint of the type, its weights not needed
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    capsys.readouterr()
    assert main(["caption", str(tmp_path), str(image), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == (f"verbo: error: {model_type} models are not supported: "
                                               f"{SUPPORT[model_type].refused}")
