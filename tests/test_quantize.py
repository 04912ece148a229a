"""Quantized loading: int8 dynamic quantization of a tiny random VLM; bitsandbytes 4-bit/8-bit loading, QLoRA and
quantized captioning on the CPU (its CPU kernels run the same code paths a CUDA GPU does), and what is refused where."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
import warnings

import pytest
import torch
from PIL import Image

from verbovision.config.model import ConnectorSpec, LanguageSpec, ModelSpec, VisionSpec
from verbovision.errors import ConfigError, VerboError
from verbovision.infer.messages import prompt_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.model.build import build_vlm
from verbovision.model.quantize import QUANTIZATION, quantization_config, quantize_dynamic_int8
from verbovision.model.store import explained_import_error

from .helpers import TINY_SCRATCH, stage, tiny_recipe

DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture
def tiny(tiny_vision, tiny_lm):
    spec = ModelSpec(vision=VisionSpec(name=tiny_vision["siglip"]), language=LanguageSpec(name=tiny_lm["qwen2"]),
                     connector=ConnectorSpec(type="mlp"), image_token="<|image_pad|>")
    torch.manual_seed(0)  # the connector is initialized at random
    model, processor = build_vlm(spec)
    return model.eval(), processor


def _probe(processor):
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (30, 40), "blue")]
    text = [processor.image_token + "\nDescribe.", processor.image_token + "\nHow many shapes?"]
    return processor(images=images, text=text, padding=True, return_tensors="pt")


def test_int8_dynamic_replaces_linears_and_keeps_logits_close(tiny):
    model, processor = tiny
    inputs = _probe(processor)
    with torch.no_grad():
        expected = model(**inputs).logits
    linears = [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.ao's deprecation notices are silenced inside, nothing else is
        assert quantize_dynamic_int8(model) is model
    modules = dict(model.named_modules())
    connector = [n for n in linears if "multi_modal_projector" in n]
    assert connector and all(type(modules[n]) is torch.nn.Linear for n in connector)  # kept float32 on purpose
    quantized = [n for n in linears if n not in connector]
    assert "lm_head" in quantized and all(isinstance(modules[n], DynamicLinear) for n in quantized)
    assert model.verbovision_quantized == "int8-dynamic" and not model.training
    with torch.no_grad():
        got = model(**inputs).logits
    # Tolerance: every logit within 10% of the float logits' largest magnitude. Measured: 2.2-3.5% over connector
    # seeds 0-9 (int8 weights and int8 activations). Random logits are nearly flat, so top-1 agreement is no test here.
    error = (got - expected).abs().max()
    assert 0 < error <= 0.10 * expected.abs().max()
    assert quantize_dynamic_int8(model) is model  # a second call is a no-op


def test_int8_dynamic_model_generates(tiny):
    model, processor = tiny
    vlm = VLM.from_loaded(quantize_dynamic_int8(model), processor, template="chat")
    image = Image.new("RGB", (40, 30), "red")
    records = [prompt_record(image, "Describe."), prompt_record(image, "How many shapes?")]
    replies = vlm.generate_details(records, DecodeOptions(max_new_tokens=4, min_new_tokens=4))
    assert [r.completion_tokens for r in replies] == [4, 4]
    assert all(isinstance(text, str) for text in vlm.caption([image], options=DecodeOptions(max_new_tokens=3)))


def test_int8_dynamic_refuses_non_cpu(tiny):
    model, _ = tiny
    with pytest.raises(VerboError, match="CPU only"):
        quantize_dynamic_int8(model.to("meta"))


def test_int8_dynamic_refuses_half_precision(tiny):
    model, _ = tiny
    with pytest.raises(VerboError, match="float32"):
        quantize_dynamic_int8(model.to(torch.bfloat16))


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_bitsandbytes_modes_load_where_bitsandbytes_runs(mode, monkeypatch):
    if importlib.util.find_spec("bitsandbytes") is not None:  # without it, what is refused is checked below
        if mode == "4bit":
            extra = quantization_config(mode, torch.device("cpu"))
            assert extra["quantization_config"].quant_method == "bitsandbytes" and extra["device_map"] == {"": "cpu"}
        else:
            with pytest.raises(VerboError, match="^8bit quantization \\(bitsandbytes\\) cannot run here: its 8-bit "
                                                 "layers run on CUDA GPUs only; on the CPU use 4bit, or int8-dynamic "
                                                 "for inference$"):
                quantization_config(mode, torch.device("cpu"))
    with pytest.raises(VerboError, match=f"^{mode} quantization \\(bitsandbytes\\) cannot run here: it has no kernels "
                                         "for mps; use --device cuda or cpu$"):
        quantization_config(mode, torch.device("mps"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.SimpleNamespace(__version__="0.48.2"))
    with pytest.raises(VerboError, match=r"bitsandbytes 0.48.2 crashes quantizing on the CPU: pip install -U "
                                         r"'bitsandbytes>=0.49'$" if mode == "4bit" else "CUDA GPUs only"):
        quantization_config(mode, torch.device("cpu"))
    assert quantization_config(mode, torch.device("cuda", 0))["device_map"] == {"": "cuda:0"}
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    device = torch.device("cuda", 0)
    with pytest.raises(VerboError, match=r"bitsandbytes is not installed \(pip install bitsandbytes\)$"):
        quantization_config(mode, device)
    if mode == "4bit":
        with pytest.raises(VerboError, match=r"bitsandbytes is not installed \(pip install bitsandbytes\); on CPU, "
                                             "int8-dynamic needs nothing more$"):
            quantization_config(mode, torch.device("cpu"))


def test_a_package_too_old_for_transformers_is_named_with_its_version():
    """transformers asks for bitsandbytes with pip's flags and a version; the one line names both."""
    said = explained_import_error(ImportError("Using `bitsandbytes` 4-bit quantization requires bitsandbytes: "
                                              "`pip install -U bitsandbytes>=0.46.1`"), "m", "model")
    assert str(said) == "m: its model needs bitsandbytes>=0.46.1, which is not installed (or older): " \
                        "pip install -U 'bitsandbytes>=0.46.1'"


def test_quantization_modes():
    assert QUANTIZATION == ("none", "int8-dynamic", "8bit", "4bit")
    assert quantization_config("none") == {} and quantization_config("int8-dynamic") == {}
    with pytest.raises(ConfigError, match="unknown"):
        quantization_config("int4")


def test_quantized_models_are_never_merged_or_saved(tiny, tmp_path):
    from verbovision.merge import refuse_quantized
    from verbovision.model.build import save_model

    model, processor = tiny
    refuse_quantized(model)  # a float model is fine
    quantize_dynamic_int8(model)
    with pytest.raises(VerboError, match="refusing to merge onto a quantized base"):
        refuse_quantized(model)
    with pytest.raises(VerboError, match="cannot be saved as a checkpoint"):
        save_model(model, processor, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_generation_commands_take_quantize(tmp_path, tiny, shapes_data, capsys):
    from verbovision.cli import main
    from verbovision.model.build import save_model

    model, processor = tiny
    save_model(model, processor, tmp_path / "model", {"template": "plain"})
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    assert main(["caption", str(tmp_path / "model"), str(image), "--quantize", "int8-dynamic",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith(str(image))


def test_qlora_refuses_dense_training_of_quantized_weights(shapes_data):
    from verbovision.config.parse import parse_recipe


    raw = tiny_recipe(shapes_data, [stage("s", train={"vision": "frozen", "connector": "full", "language": "lora"})])
    raw["model"] = {**raw["model"], "quantize": "4bit"}  # a copy: the tiny model block is shared by every test
    with pytest.raises(ConfigError, match="connector cannot train quantized weights"):
        parse_recipe(raw)


TINY_64 = {**TINY_SCRATCH, "vision": {**TINY_SCRATCH["vision"], "hidden_size": 64},
           "language": {**TINY_SCRATCH["language"], "hidden_size": 64}}
"""64 wide: bitsandbytes' CPU kernels take inputs of at least one quantization block (64 values)."""


@pytest.mark.parametrize("connector", ["mlp", "linear", "pixel_shuffle"])
def test_qlora_trains_and_merges_on_every_connector(shapes_data, tmp_path, connector, capsys):
    """QLoRA with cached vision features (the pixel-shuffle connector is the geovlm architecture, whose features were
    once cast to the packed uint8 weight's dtype): trains, merges onto the full-precision base within the merge's
    tolerance, and the merged model captions loaded in 4 bits."""
    pytest.importorskip("bitsandbytes")
    from verbovision.cli import main
    from verbovision.config.parse import parse_recipe
    from verbovision.train.run import train_recipe

    raw = tiny_recipe(shapes_data, [stage("s", train={"vision": "frozen", "connector": "lora", "language": "lora"},
                                          lora={"r": 4, "alpha": 8, "dropout": 0.0}, max_steps=2, log_every=1,
                                          merge=True)])
    extra = {"factor": 2, "act": "silu"} if connector == "pixel_shuffle" else {}
    raw["model"] = {**TINY_64, "connector": {"type": connector, **extra}, "quantize": "4bit"}
    train_recipe(parse_recipe(raw), tmp_path / "run")
    assert list((tmp_path / "run/feature_cache").iterdir()), "the frozen tower's features were cached and used"
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    run_info = json.loads((tmp_path / "run/run.json").read_text())
    assert run_info["summary"]["s"]["precision"]["quantize"] == "4bit"
    assert "merged" in capsys.readouterr().out
    if connector != "pixel_shuffle":
        return
    image = str(sorted((shapes_data / "images").glob("*.png"))[0])
    assert main(["caption", str(tmp_path / "run/final"), image, "--quantize", "4bit", "--device", "cpu",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith(image)
