"""The chunked loss (verbovision.model.loss): the output head applied by the loss itself, to the labelled positions
only and a few at a time, gives the plain loss of the whole sequence's logits, for every family of the matrix — the
families whose forward scales or soft-caps its logits included (`families.Head`) — and the same gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from verbovision.config.model import ConnectorSpec, LanguageSpec, ModelSpec, VisionSpec
from verbovision.data.batching import Collator
from verbovision.data.encoding import Encoder
from verbovision.data.sources import read_records
from verbovision.families import family_of
from verbovision.model import loss as loss_module
from verbovision.model.build import build_vlm, save_model
from verbovision.model.loss import token_loss
from verbovision.model.store import load_model

from .test_family_matrix import MATRIX, chosen_template, runnable_case
from .tiny_families import make_tiny_llava

RELATIVE = 1e-5
"""float32 on the CPU: the two paths multiply and sum in other orders, nothing more."""


def with_head_arithmetic(base: Path) -> Path:
    """The checkpoint `base` with a logit scale, a logits scaling and a soft cap set in its text config, none of them
    1 or off (the tiny builders keep most at their defaults): a forward that reads any of them after its output head
    shows it, and the chunked loss must do the same (`families.Head`)."""
    config = AutoConfig.from_pretrained(base)
    text = config.get_text_config()
    text.logit_scale, text.logits_scaling, text.final_logit_softcapping = 0.25, 4.0, 0.5
    config.save_pretrained(base)
    return base


def three_record_batch(model, processor, model_type: str, shapes_data) -> dict:
    """A padded batch of three records of different lengths (captions and a question), as training collates it."""
    family = family_of(model.config)
    named = chosen_template(model_type) if model_type in MATRIX else {}
    template = named.get("template", family.own_layout or "chat")
    encoder = Encoder(processor, template, family=family)
    records = read_records(shapes_data / "train/vqa_en.json")[:2] + read_records(
        shapes_data / "train/caption_short_en.json")[:1]
    return Collator(encoder)([encoder.encode(r) for r in records]).batch


def loss_by_path(model, batch, chunked: bool, reduction: str, monkeypatch) -> torch.Tensor:
    """token_loss on the chunked path (three labelled positions a chunk, so that a batch takes several) or the
    plain one."""
    vocabulary = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(loss_module, "CHUNKED_FROM", 0 if chunked else float("inf"))
    monkeypatch.setattr(loss_module, "CHUNK_LOGITS", 3 * vocabulary)
    return token_loss(model, batch, "cpu", family_of(model.config), reduction=reduction)


def assert_paths_agree(base: Path, model_type: str, shapes_data, monkeypatch) -> None:
    model, processor = load_model(with_head_arithmetic(base), device="cpu")
    assert model.config.model_type == model_type
    batch = three_record_batch(model, processor, model_type, shapes_data)
    assert (batch["labels"][:, 1:] != -100).sum() > 3  # several chunks
    with torch.no_grad():
        for reduction in ("mean", "sum"):
            plain = loss_by_path(model, batch, False, reduction, monkeypatch)
            chunked = loss_by_path(model, batch, True, reduction, monkeypatch)
            assert torch.isfinite(plain) and chunked.item() == pytest.approx(plain.item(), rel=RELATIVE)


@pytest.mark.parametrize("model_type", MATRIX)
def test_chunked_loss_equals_plain(model_type, tmp_path, shapes_data, tiny_tokenizer_texts, monkeypatch):
    case = runnable_case(model_type)
    assert_paths_agree(case.build(tmp_path / "base", tiny_tokenizer_texts), model_type, shapes_data, monkeypatch)


def test_chunked_loss_equals_plain_for_built_pixel_shuffle(tmp_path, tiny_vision, tiny_lm, shapes_data, monkeypatch):
    """What `verbo build` writes for a pixel_shuffle connector (geovlm's): a Cohere2Vision model, outside the matrix."""
    spec = ModelSpec(vision=VisionSpec(name=tiny_vision["siglip"]), language=LanguageSpec(name=tiny_lm["qwen2"]),
                     connector=ConnectorSpec(type="pixel_shuffle", act="silu", factor=2), image_token="<|image_pad|>")
    save_model(*build_vlm(spec), tmp_path / "built")
    assert_paths_agree(tmp_path / "built", "cohere2_vision", shapes_data, monkeypatch)


def test_chunked_gradients_equal_plain(tmp_path, shapes_data, tiny_tokenizer_texts, monkeypatch):
    """In training each chunk's logits are recomputed in the backward: the gradients are still the plain path's."""
    model, processor = load_model(make_tiny_llava(tmp_path / "llava", tiny_tokenizer_texts), device="cpu")
    batch = three_record_batch(model, processor, "llava", shapes_data)
    model.train()
    gradients = []
    for chunked in (False, True):
        model.zero_grad()
        loss_by_path(model, batch, chunked, "mean", monkeypatch).backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, chunked = gradients
    assert plain.keys() == chunked.keys() and "lm_head.weight" in plain
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], rtol=RELATIVE, atol=1e-7, msg=name)


def test_no_labelled_position_is_nan_on_both_paths(tmp_path, shapes_data, tiny_tokenizer_texts, monkeypatch):
    """Nothing to learn from gives the plain path's 0 / 0 (a caller skips such batches), not a silent 0."""
    model, processor = load_model(make_tiny_llava(tmp_path / "llava", tiny_tokenizer_texts), device="cpu")
    batch = three_record_batch(model, processor, "llava", shapes_data)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    with torch.no_grad():
        for chunked in (False, True):
            assert loss_by_path(model, batch, chunked, "mean", monkeypatch).isnan()
            assert loss_by_path(model, batch, chunked, "sum", monkeypatch).item() == 0.0
