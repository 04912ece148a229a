"""The tiny checkpoint of tests/tiny_families_mistral.py in plain transformers, where torchvision is installed (its
processor class needs it): it loads with the Auto classes, its processor renders the prompt and expands its image
token into rows, `generate` runs and labels give a loss that reaches the vision tower."""

from __future__ import annotations

import pytest

from .helpers import TEXTS, check_in_plain_transformers, needs_model_type
from .tiny_families_mistral import make_tiny_mistral3


def test_tiny_mistral3_in_plain_transformers(tmp_path):
    needs_model_type("mistral3")
    pytest.importorskip("torchvision", reason="PixtralProcessor, mistral3's processor class, needs torchvision")
    # 48x40 pixels -> padded to 48x48 -> 3x3 merged patches: 9 [IMG], a [IMG_BREAK] after each row but the last
    check_in_plain_transformers(make_tiny_mistral3(tmp_path / "mistral3", TEXTS), "mistral3",
                                "Mistral3ForConditionalGeneration", "PixtralProcessor", "<s>[INST][IMG]Describe.[/INST]",
                                {"input_ids", "attention_mask", "pixel_values", "image_sizes"}, 9)
