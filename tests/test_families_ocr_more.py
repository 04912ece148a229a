"""VerboVision on the families of tests/tiny_families_ocr_more.py that the family matrix cannot run: each is refused
as it loads, with the reason, and `verbo caption` exits 2 with that one line."""

from __future__ import annotations

import pytest

from verbovision.cli import main

from .conftest import needs_model_type
from .test_tiny_families import picture
from .tiny_families_ocr_more import BUILDERS

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
