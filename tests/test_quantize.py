"""Quantized loading: int8 dynamic quantization of a tiny random VLM, and bitsandbytes refusing to run on CPU."""

from __future__ import annotations

import json
import math
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
def test_bitsandbytes_modes_need_cuda_and_bitsandbytes(mode):
    if bitsandbytes_runs():
        assert quantization_config(mode)["quantization_config"].quant_method == "bitsandbytes"
        return
    with pytest.raises(VerboError, match="needs a CUDA GPU and bitsandbytes; on CPU use int8-dynamic"):
        quantization_config(mode)


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
    if not bitsandbytes_runs():
        assert main(["caption", str(tmp_path / "model"), str(image), "--quantize", "4bit"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
    else:
        assert main(["caption", str(tmp_path / "model"), str(image), "--quantize", "4bit", "--max-new-tokens", "3"]) == 0
        assert capsys.readouterr().out.startswith(str(image))


def bitsandbytes_runs() -> bool:
    try:
        quantization_config("4bit")
    except VerboError:
        return False
    return True


def test_qlora_refuses_dense_training_of_quantized_weights(shapes_data):
    from verbovision.config.parse import parse_recipe


    raw = tiny_recipe(shapes_data, [stage("s", train={"vision": "frozen", "connector": "full", "language": "lora"})])
    raw["model"] = {**raw["model"], "quantize": "4bit"}  # a copy: the tiny model block is shared by every test
    with pytest.raises(ConfigError, match="connector cannot train quantized weights"):
        parse_recipe(raw)


def test_qlora_pixel_shuffle_stage(shapes_data, tmp_path):
    """QLoRA on the geovlm architecture (pixel-shuffle connector) with cached vision features: trains and merges on a
    CUDA machine with bitsandbytes; refused with the reason anywhere else."""
    from verbovision.config.parse import parse_recipe
    from verbovision.train.run import train_recipe


    raw = tiny_recipe(shapes_data, [stage("s", train={"vision": "frozen", "connector": "lora", "language": "lora"},
                                          lora={"r": 4, "alpha": 8, "dropout": 0.0}, max_steps=2, log_every=1,
                                          merge=True)])
    raw["model"] = {**TINY_SCRATCH, "connector": {"type": "pixel_shuffle", "factor": 2, "act": "silu"},
                    "quantize": "4bit"}
    if not bitsandbytes_runs():
        with pytest.raises(VerboError, match="needs a CUDA GPU"):
            train_recipe(parse_recipe(raw), tmp_path / "run")
        return
    train_recipe(parse_recipe(raw), tmp_path / "run")
    assert list((tmp_path / "run/feature_cache").iterdir()), "the frozen tower's features were cached and used"
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert (tmp_path / "run/final/config.json").exists()
