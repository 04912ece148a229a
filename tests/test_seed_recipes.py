"""The seed recipes that fine-tune existing models, run end to end on tiny random stand-ins of the same architectures:
git-pokemon-lora (GIT), vit-gpt2 (ViT + GPT-2 encoder-decoder, then SCST) and vit-llama (the trained ViT + Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from verbovision.cli import main
from verbovision.data import Collator, Encoder, read_records
from verbovision.families import family_of
from verbovision.infer import VLM, DecodeOptions
from verbovision.recipe import load_recipe
from verbovision.recipe import parse_recipe as load_recipe_dict
from verbovision.store import load_model, read_json
from verbovision.train import train_and_report

from .tiny_families import make_tiny_git, make_tiny_vision_encoder_decoder

RECIPES = Path(__file__).resolve().parents[1] / "src" / "verbovision" / "recipes"


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_git_pokemon_lora_recipe(tmp_path, shapes_data, tiny_tokenizer_texts):
    base = make_tiny_git(tmp_path / "git-base", tiny_tokenizer_texts)
    data = tmp_path / "pokemon"
    assert main(["data", "split", str(shapes_data / "train/caption_short_en.json"), "--ratios", "0.8,0.1,0.1",
                 "--out", str(data)]) == 0
    sizes = {name: len(read_records(data / f"{name}.json")) for name in ("train", "val", "test")}
    assert sizes["train"] > 3 * sizes["val"] > 0 and sizes["test"] > 0
    overrides = [f"model.from={base}", f"data_root={data}", "stages.0.epochs=2", "stages.0.lora.r=4",
                 "stages.0.lora.alpha=8", "stages.0.lr=1e-3"]
    recipe = load_recipe(RECIPES / "git-pokemon-lora.yaml", overrides)
    assert recipe.stages[0].warmup == 0.05 and recipe.stages[0].lora.target == ["query", "key", "value", "dense"]
    run = tmp_path / "run"
    train_and_report(recipe, run)

    val_losses = [r["val_loss"] for r in _metrics(run) if "val_loss" in r]
    assert len(val_losses) == 2  # evaluated at the end of each epoch
    info = read_json(run / "run.json")
    assert info["stages"]["captions"]["best"] == min(val_losses)
    stage_dir = run / "stages/0-captions"
    assert (stage_dir / "best.safetensors").exists() and (stage_dir / "adapter/adapter_config.json").exists()
    steps_per_epoch = info["stages"]["captions"]["steps"] // 2
    saved = sorted(int(p.name.removeprefix("step-")) for p in (stage_dir / "checkpoints").glob("step-*"))
    assert 2 * steps_per_epoch in saved  # a checkpoint at the end of the last epoch (older ones rotated)
    for name in ("report.md", "loss.png", "samples.png"):  # loss curves and validation images with captions
        assert (run / name).exists(), name

    # text-only LoRA: the adapter wraps the language model's query/key/value/dense layers only
    adapter = read_json(stage_dir / "adapter/adapter_config.json")
    assert all(name.startswith("git.encoder.") for name in adapter["target_modules"])
    # padded label positions are -100 (GIT's [CLS] start token too)
    model, processor = load_model(run / "final", device="cpu")
    encoder = Encoder(processor, "caption", family=family_of(model.config))
    records = read_records(data / "val.json")[:2]
    records[1].turns[-1].text += " and a very long tail"
    batch = Collator(encoder).pad([encoder.encode(r) for r in records])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all() and (batch["labels"][:, 0] == -100).all()
    assert batch["input_ids"][0, 0] == model.config.bos_token_id
    captions = VLM(run / "final", device="cpu").caption(sorted((shapes_data / "images").glob("*.png"))[:2])
    assert len(captions) == 2


def test_vit_gpt2_recipe_with_scst_and_nucleus_sampling(tmp_path, shapes_data, tiny_tokenizer_texts):
    base = make_tiny_vision_encoder_decoder(tmp_path / "vit-gpt2", tiny_tokenizer_texts)
    clean = tmp_path / "clean"
    assert main(["data", "clean", str(shapes_data / "train/caption_short_en.json"), "--out", str(clean)]) == 0
    cleaned = next(clean.glob("*.json*"))
    overrides = [f"model.from={base}", f"data_root={shapes_data}", "stages.0.train.language=last:1",
                 "stages.1.train.language=last:1", "stages.1.scst_samples=2", "stages.1.scst_max_new_tokens=6",
                 "stages.1.best_metric_records=4"]
    for i in (0, 1):
        overrides += [f"stages.{i}.max_steps=2", f"stages.{i}.batch_size=2", f"stages.{i}.data.train=[{cleaned}]",
                      f"stages.{i}.data.val=[val/caption_short_en.json]"]
    run = tmp_path / "run"
    train_and_report(load_recipe(RECIPES / "vit-gpt2.yaml", overrides), run)
    assert "scst" in (run / "report.md").read_text()

    rows = _metrics(run)
    assert any(r["stage"] == "scst" and "sample_reward" in r and "greedy_reward" in r for r in rows)
    assert any(r["stage"] == "scst" and "val_cider" in r for r in rows)
    final = AutoModelForImageTextToText.from_pretrained(run / "final")
    assert type(final).__name__ == "VisionEncoderDecoderModel"
    vlm = VLM(run / "final", device="cpu")
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    nucleus = DecodeOptions(top_p=0.9, seed=1, max_new_tokens=8)
    assert vlm.caption([image], options=nucleus) == vlm.caption([image], options=nucleus)


def test_vit_llama_builds_llava_from_a_trained_vision_encoder_decoder(tmp_path, shapes_data, tiny_tokenizer_texts,
                                                                       tiny_lm):
    vit_gpt2 = make_tiny_vision_encoder_decoder(tmp_path / "vit-gpt2", tiny_tokenizer_texts)
    overrides = [f"model.vision.name={vit_gpt2}", f"model.language.name={tiny_lm['llama']}", f"data_root={shapes_data}"]
    for i in (0, 1):
        overrides += [f"stages.{i}.max_steps=2", f"stages.{i}.batch_size=2",
                      f"stages.{i}.data.train=[train/caption_short_en.json]",
                      f"stages.{i}.data.val=[val/caption_short_en.json]", f"stages.{i}.lora.r=4"]
    run = tmp_path / "run"
    train_and_report(load_recipe(RECIPES / "vit-llama.yaml", overrides), run)
    llava = AutoModelForImageTextToText.from_pretrained(run / "final")
    assert type(llava).__name__ == "LlavaForConditionalGeneration"
    vit = AutoModelForImageTextToText.from_pretrained(vit_gpt2).encoder
    assert read_json(run / "final/verbovision.json")["merge"]["max_abs_diff"] < 1e-4
    # the vision tower is the captioner's encoder, unchanged (frozen in both stages)
    for name, value in vit.state_dict().items():
        assert torch.equal(llava.model.vision_tower.state_dict()[name], value), name


def test_scst_stage_on_git(tmp_path, shapes_data, tiny_tokenizer_texts):
    base = make_tiny_git(tmp_path / "git-base", tiny_tokenizer_texts)
    scst = {"name": "scst", "type": "scst", "template": "caption", "max_steps": 2, "batch_size": 2,
            "scst_samples": 3, "scst_baseline": "mean", "scst_max_new_tokens": 6, "lr": 1e-3, "log_every": 1,
            "train": {"vision": "frozen", "connector": "frozen", "language": "lora"}, "lora": {"r": 4, "alpha": 8},
            "merge": True,
            "data": {"train": ["train/caption_short_en.json"]}}
    run = tmp_path / "run"
    train_and_report(load_recipe_dict({"name": "git-scst", "seed": 0, "data_root": str(shapes_data),
                                       "model": {"from": str(base)}, "stages": [scst]}), run)
    rows = [r for r in _metrics(run) if "sample_reward" in r]
    assert len(rows) == 2 and all(r["caption_length"] > 0 for r in rows)
    assert read_json(run / "final/verbovision.json")["merge"]["max_abs_diff"] < 1e-4
