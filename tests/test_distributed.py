"""Data-parallel training: `verbo train --nproc 2` (two CPU processes, gloo, through Accelerate) ends with the same
weights as one process on the same global batch, with text-only and image records mixed in the batches."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from verbovision.cli import main
from verbovision.data import read_records

from .test_train import tiny_recipe


def _recipe(tmp_path: Path, shapes_data: Path) -> Path:
    text_only = [{"id": f"text-{i}", "conversations": [
        {"from": "human", "value": f"How many sides has a {shape}?"}, {"from": "gpt", "value": answer}]}
        for i, (shape, answer) in enumerate([("triangle", "three"), ("square", "four"), ("star", "ten")] * 2)]
    (tmp_path / "text.json").write_text(json.dumps(text_only))
    stage = {"name": "mixed", "template": "chat", "max_steps": 3, "batch_size": 4, "grad_accum": 2, "lr": 1e-3,
             "train": {"vision": "full", "connector": "full", "language": "full"}, "eval_every": 2,
             "data": {"train": ["train/caption_short_en.json", {"path": str(tmp_path / "text.json"), "weight": 2.0}],
                      "val": ["val/caption_short_en.json"]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(shapes_data, [stage])))
    return path


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path, shapes_data):
    assert read_records(shapes_data / "train/caption_short_en.json")
    recipe = _recipe(tmp_path, shapes_data)
    assert main(["train", str(recipe), "--out", str(tmp_path / "one")]) == 0
    assert main(["train", str(recipe), "stages.0.batch_size=2", "--nproc", "2", "--out", str(tmp_path / "two")]) == 0

    one = load_file(str(tmp_path / "one/final/model.safetensors"))
    two = load_file(str(tmp_path / "two/final/model.safetensors"))
    init = load_file(str(tmp_path / "one/init/model.safetensors"))
    assert one.keys() == two.keys()
    difference = max((one[k] - two[k]).abs().max().item() for k in one)
    assert difference < 1e-5, difference  # float32; the two runs pad their micro-batches differently
    moved = max((one[k] - init[k]).abs().max().item() for k in one)
    assert moved > 1e-3  # training did change the weights, by far more than the tolerance
    vision = [k for k in one if "vision_tower" in k]
    assert any(not torch.equal(one[k], init[k]) for k in vision)

    rows = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert len(rows("two")) == len(rows("one"))  # one process logged
    for key in ("loss", "grad_norm", "val_loss"):  # AdamW hides a gradient scale error in the weights, not here
        one_values, two_values = ([r[key] for r in rows(run) if key in r] for run in ("one", "two"))
        assert len(one_values) == len(two_values) > 0
        assert max(abs(a - b) for a, b in zip(one_values, two_values)) < 1e-5, key


def test_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {path.stem: load_config_from_file(str(path)) for path in folder.glob("*.yaml")}
    assert {k: c.distributed_type.name for k, c in kinds.items()} == {
        "multi_gpu": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}
    assert kinds["zero2"].deepspeed_config["zero_stage"] == 2 and kinds["zero3"].deepspeed_config["zero_stage"] == 3
