"""`verbo train` checks every stage of a recipe before the first step: a mistake in a later stage is one line and
exit 2 before any stage has trained."""

from __future__ import annotations

import pytest
import yaml

from verbovision.cli import main

from .helpers import stage, tiny_recipe
from .tiny_families import make_tiny_git

FIRST = stage("a", train={"vision": "frozen", "connector": "full", "language": "full"})


def _train(tmp_path, recipe: dict, capsys) -> tuple[int, str]:
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code = main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("second,message", [
    (stage("b", train={"language": "last:8"}),
     "stages.1 (b): train.language: last:8, but the language component has 2 layers; use last:1 to last:2 or full"),
    (stage("b", train={"language": "cross_attention"}),
     "stages.1 (b): train.language: cross_attention, but the language component has no cross-attention modules"),
    (stage("b", train={"language": "lora"}, lora={"target": ["qkv_typo"]}),
     "stages.1 (b): lora: no linear layers match target ['qkv_typo']"),
    (stage("b", train={"vision": "frozen", "connector": "frozen", "language": "frozen"}),
     "stages.1 (b): train: every component is frozen: nothing would train"),
])
def test_a_later_stage_the_model_cannot_train_fails_before_the_first_step(tmp_path, shapes_data, capsys, second,
                                                                          message):
    code, err = _train(tmp_path, tiny_recipe(shapes_data, [FIRST, second]), capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run/stages").exists()  # stage a never started


def test_a_later_stages_missing_data_file_fails_before_anything_is_built(tmp_path, shapes_data, capsys):
    second = stage("b", data={"train": ["train/caption_short_en.json"], "val": ["val/nope.json"]})
    code, err = _train(tmp_path, tiny_recipe(shapes_data, [FIRST, second]), capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"stages.1 (b): {shapes_data / 'val/nope.json'}: data file not found" in err
    assert not (tmp_path / "run/init").exists()


def test_a_later_lora_stage_without_merge_is_refused_when_read(tmp_path, shapes_data, capsys):
    lora = stage("b", train={"language": "lora"})
    code, err = _train(tmp_path, tiny_recipe(shapes_data, [FIRST, lora, stage("c")]), capsys)
    assert code == 2 and "stages.1.merge: false on a LoRA stage that another stage follows" in err
    assert not (tmp_path / "run").exists()


def test_a_chat_template_stage_on_a_model_without_one(tmp_path, shapes_data, tiny_tokenizer_texts, capsys):
    git = make_tiny_git(tmp_path / "git", tiny_tokenizer_texts)
    train = {"vision": "frozen", "connector": "full", "language": "full"}
    recipe = {"name": "git", "data_root": str(shapes_data), "model": {"from": str(git)},
              "stages": [stage("a", template="caption", train=train), stage("b", template="chat", train=train)]}
    code, err = _train(tmp_path, recipe, capsys)
    assert code == 2 and "stages.1 (b): git: the model has no chat template; use template plain or caption" in err
    assert not (tmp_path / "run/stages").exists()


def test_a_meteor_best_metric_without_java_fails_before_anything_is_built(tmp_path, shapes_data, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-java"))  # verbo runs in this process: only `java` is looked up
    second = stage("b", best_metric="meteor", eval_every=1)
    code, err = _train(tmp_path, tiny_recipe(shapes_data, [FIRST, second]), capsys)
    assert code == 2 and err.count("\n") == 1
    assert "stages.1 (b): best_metric meteor runs the official Java program and java is not found" in err
    assert not (tmp_path / "run").exists()
