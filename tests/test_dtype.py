"""The dtype weights load and train in: `model.dtype` in recipes, `--dtype` on commands, `auto` resolved per device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from verbovision.cli import main
from verbovision.config.parse import parse_recipe
from verbovision.errors import VerboError
from verbovision.files import read_json
from verbovision.model.store import resolve_dtype
from verbovision.train.run import train_recipe

from .helpers import LORA, stage, tiny_recipe


def _gpu(monkeypatch, bf16: bool) -> None:
    """This process sees a CUDA GPU that does (or does not) compute in bfloat16 natively."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_is_bfloat16_on_a_gpu_that_supports_it(monkeypatch, bf16, expected):
    _gpu(monkeypatch, bf16)
    assert resolve_dtype("auto", "cuda") == expected
    assert resolve_dtype(None, "cuda:0") == expected
    assert resolve_dtype("auto", "cpu") == torch.float32  # the CPU beside that GPU


def test_auto_is_float32_on_the_cpu_and_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype("auto", "cpu") == resolve_dtype("auto", "mps") == resolve_dtype("auto") == torch.float32


def test_named_dtypes_resolve_as_named_and_others_are_refused():
    assert [resolve_dtype(name, "cpu") for name in ("float32", "bfloat16", "float16")] == \
        [torch.float32, torch.bfloat16, torch.float16]
    assert resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(VerboError, match="dtype 'half' unknown; use auto, float32, bfloat16, float16"):
        resolve_dtype("half")


def _dtypes(file: Path) -> set[str]:
    with safe_open(str(file), "pt") as tensors:
        return {str(tensors.get_slice(name).get_dtype()) for name in tensors.keys()}


def _trained_in_bfloat16(run: Path, shapes_data: Path) -> None:
    recipe = tiny_recipe(shapes_data, [
        stage("connector", train={"vision": "frozen", "connector": "full", "language": "last:1"}, save_every=2),
        stage("lora", train={"vision": "frozen", "connector": "full", "language": "lora"}, lora=LORA, merge=True),
    ])
    recipe["model"]["dtype"] = "bfloat16"
    train_recipe(parse_recipe(recipe), run)


def test_a_bfloat16_recipe_trains_float32_weights_over_frozen_bfloat16_ones(tmp_path, shapes_data):
    run = tmp_path / "run"
    _trained_in_bfloat16(run, shapes_data)
    summary = read_json(run / "run.json")["summary"]
    for name in ("connector", "lora"):
        assert summary[name]["precision"]["weights"] == "bfloat16/float32"  # frozen / trained
        assert summary[name]["precision"]["autocast"] == "bfloat16"
    # what trained, and the optimizer's states, in float32
    checkpoint = sorted((run / "stages/0-connector/checkpoints").iterdir())[-1]
    assert _dtypes(checkpoint / "trainable.safetensors") == {"F32"}
    moments = torch.load(checkpoint / "optimizer.pt", weights_only=False)["optimizer"]["state"].values()
    assert {state["exp_avg"].dtype for state in moments} == {torch.float32}
    # the saved models, whole in the dtype they loaded in; the adapter as it trained
    for model in ("stages/0-connector/model", "stages/1-lora/model", "final"):
        assert _dtypes(run / model / "model.safetensors") == {"BF16"}, model
        assert read_json(run / model / "config.json")["dtype"] == "bfloat16"
    assert _dtypes(run / "stages/1-lora/adapter/adapter_model.safetensors") == {"F32"}
    # merged weights rounded to bfloat16: the check allows for that rounding at the logits' scale
    merge = read_json(run / "final/verbovision.json")["merge"]
    assert max(merge["max_abs_diff"], merge["max_abs_diff_reloaded"]) <= merge["tolerance"] < 0.1


def test_caption_loads_the_model_in_the_dtype_asked(model_dir, shapes_data, monkeypatch, capsys):
    import verbovision.infer.vlm as vlm

    loaded = []

    def spy(*args, **kwargs):
        model, processor = load_model(*args, **kwargs)
        loaded.append({p.dtype for p in model.parameters()})
        return model, processor

    load_model = vlm.load_model
    monkeypatch.setattr(vlm, "load_model", spy)
    image = str(next((shapes_data / "images").iterdir()))
    for flags, dtype in ([], torch.float32), (["--dtype", "bfloat16"], torch.bfloat16):
        assert main(["caption", str(model_dir), image, "--max-new-tokens", "4", *flags]) == 0
        assert loaded.pop() == {dtype}
        assert capsys.readouterr().out.strip()


def test_an_unknown_dtype_flag_is_refused_in_one_line(model_dir, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["caption", str(model_dir), "x.png", "--dtype", "bf16"])
    assert exit.value.code == 2
    assert "argument --dtype: invalid choice: 'bf16'" in capsys.readouterr().err


def test_merge_saves_the_merged_model_in_the_dtype_asked(lora_run, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge", str(lora_run), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert _dtypes(out / "model.safetensors") == {"BF16"}
    assert read_json(out / "config.json")["dtype"] == "bfloat16"
    assert "tolerance" in capsys.readouterr().out
