"""The seed recipes run end to end on tiny random stand-ins of the same architectures: every one through the README's
offline commands as written (synthetic data of its shape, hub ids swapped for local directories), and those that
fine-tune existing models in detail: git-pokemon-lora (GIT), vit-gpt2 (ViT + GPT-2 encoder-decoder, then SCST) and
vit-llama (the trained ViT + Llama)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, LlamaConfig, Qwen2Config

from verbovision.cli import main
from verbovision.config.parse import load_recipe
from verbovision.config.parse import parse_recipe as load_recipe_dict
from verbovision.data.batching import Collator
from verbovision.data.encoding import Encoder
from verbovision.data.sources import read_records
from verbovision.data.tokenizer import train_bpe_tokenizer
from verbovision.families import family_of
from verbovision.files import read_json
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.model.store import load_model
from verbovision.train.run import train_and_report

from .helpers import FLOAT32, TINY_LM
from .tiny_families import make_tiny_git, make_tiny_llava, make_tiny_vision_encoder_decoder

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "src" / "verbovision" / "recipes"


def readme_seed_commands() -> dict[str, list[list[str]]]:
    """The README's offline commands for the seed recipes: recipe -> its `verbo` commands, each as its arguments."""
    section = (ROOT / "README.md").read_text().split("## Trying the seed recipes offline", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = {}
    for group in block.strip().split("\n\n"):
        comment, *lines = group.splitlines()
        name = comment.removeprefix("# ").split(":")[0].split(",")[0]
        joined = " ".join(line.removesuffix("\\").strip() for line in lines)
        commands[name] = [shlex.split(command)[1:] for command in joined.split("&&")]
    return commands


def _tiny_lm(out: Path, config_class, layers: int, texts: list[str]) -> Path:
    tokenizer = train_bpe_tokenizer(texts, "<|image_pad|>", vocab_size=300)
    torch.manual_seed(0)
    config = config_class(**{**TINY_LM, "num_hidden_layers": layers}, vocab_size=len(tokenizer))
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, tiny_vision, tiny_tokenizer_texts) -> Path:
    """models/<the README's directory names>: tiny random models of the same architectures (Qwen2.5 with 8 layers,
    as geovlm's last:8 needs, the GPT-2 decoder with the 4 that vit-gpt2's last:4 does)."""
    models = tmp_path_factory.mktemp("models")
    (models / "siglip-base-patch16-224").symlink_to(tiny_vision["siglip"])
    _tiny_lm(models / "Qwen2.5-0.5B-Instruct", Qwen2Config, 8, tiny_tokenizer_texts)
    _tiny_lm(models / "Tucano-630m", LlamaConfig, 2, tiny_tokenizer_texts)
    _tiny_lm(models / "Llama-3.2-1B-Instruct", LlamaConfig, 2, tiny_tokenizer_texts)
    make_tiny_llava(models / "llava-1.5-7b-hf", tiny_tokenizer_texts)
    make_tiny_git(models / "git-base", tiny_tokenizer_texts)
    make_tiny_vision_encoder_decoder(models / "vit-gpt2-image-captioning", tiny_tokenizer_texts, decoder_layers=4)
    return models


def in_a_checkout(folder: Path, models: Path, monkeypatch) -> None:
    """Work in `folder` as in the repository's, with recipes/ and the README's models/ there."""
    (folder / "recipes").symlink_to(RECIPES)
    (folder / "models").symlink_to(models)
    monkeypatch.chdir(folder)


def run_readme_commands(recipe: str) -> int:
    """A recipe's README commands, on 40 images and 2 steps of 2 examples a stage (a generation metric on 2
    validation records); the exit code of `verbo train`, the last."""
    *preparations, train = readme_seed_commands()[recipe]
    for args in preparations:
        assert main(args + ["--n", "40"] if args[:2] == ["data", "synth"] else args) == 0, args
    short = [f"stages.{i}.{key}={value}" for i in range(len(load_recipe(train[1]).stages))
             for key, value in (("max_steps", 2), ("batch_size", 2), ("grad_accum", 1), ("best_metric_records", 2))]
    return main(train + short)


def test_the_readme_shows_an_offline_command_for_every_seed_recipe():
    seeds = {p.stem for p in RECIPES.glob("*.yaml")} - {"quickstart"}
    assert set(readme_seed_commands()) == seeds
    for name, commands in readme_seed_commands().items():
        assert commands[-1][:2] == ["train", f"recipes/{name}.yaml"]
        assert all(not arg.startswith(("model.", "data_root")) or "=models/" in arg for arg in commands[-1][2:])


def comment_overrides(recipe: Path) -> list[list[str]]:
    """The overrides a recipe's comment shows, one list per line, as a shell passes them (`key.path=value` words)."""
    lines = [line.removeprefix("#") for line in recipe.read_text().splitlines() if line.startswith("#   ")]
    return [[word for word in shlex.split(line) if re.match(r"^[a-z_][\w.]*=", word)] for line in lines]


def test_every_override_a_recipe_comment_shows_loads_as_the_shell_passes_it():
    shown = {recipe.stem: comment_overrides(recipe) for recipe in sorted(RECIPES.glob("*.yaml"))}
    assert len(shown["vit-gpt2"]) == 5 and len(shown["geovlm"]) == 2  # the freezing variants; the real data sets
    for name, lines in shown.items():
        for overrides in lines:
            load_recipe(RECIPES / f"{name}.yaml", overrides)


@pytest.mark.parametrize("recipe", ["geovlm", "verbovision-pt", "llava-vqa-lora", "git-pokemon-lora"])
def test_readme_offline_command(tmp_path, monkeypatch, stand_ins, recipe):
    in_a_checkout(tmp_path, stand_ins, monkeypatch)
    assert run_readme_commands(recipe) == 0
    run = tmp_path / "runs" / recipe
    info = read_json(run / "run.json")
    for name, summary in info["summary"].items():  # every stage validates on data of its own
        assert summary["sources"]["validation"], name
    assert "## Run summary" in (run / "report.md").read_text()
    if recipe == "geovlm":
        final = AutoModelForImageTextToText.from_pretrained(run / "final")
        assert type(final).__name__ == "Cohere2VisionForConditionalGeneration"
        assert final.config.image_token_id == load_model(run / "final", "cpu")[1].tokenizer.convert_tokens_to_ids(
            "<|image_pad|>")
        # last:8 of 8 layers trains them all and the norm after them, not the embeddings or the output head
        layers = sum(p.numel() for name, p in final.named_parameters()
                     if name.startswith(("model.language_model.layers.", "model.language_model.norm.")))
        language = info["summary"]["sft"]["parameters"]["language"]
        assert language["trainable"] == layers < language["total"]
    if recipe == "verbovision-pt":
        assert info["adapters"] == ["stages/0-pretrain/adapter", "stages/1-detailed/adapter"]
        for stage_dir in ("0-pretrain", "1-detailed"):
            # the README's run: float32 on the CPU (tolerance 1e-4), bfloat16 on a GPU (a tolerance that scales)
            merge = read_json(run / f"stages/{stage_dir}/model/verbovision.json")["merge"]
            assert merge["max_abs_diff"] <= merge["tolerance"]
        # stage 2 started from stage 1's merged model
        assert read_json(run / "stages/1-detailed/adapter/verbovision_adapter.json")["base_model"].endswith(
            "stages/0-pretrain/model")
        # `verbo caption` asks the model in the language (and for the detail) its last stage was trained on
        assert read_json(run / "final/verbovision.json")["prompt"] == "Descreva a imagem em detalhes."
    if recipe == "llava-vqa-lora":
        assert type(AutoModelForImageTextToText.from_pretrained(run / "final")).__name__ == \
            "LlavaForConditionalGeneration"
    if recipe == "git-pokemon-lora":
        assert (run / "final/adapter_config.json").exists()  # merge: false, the adapter is the result


def test_readme_offline_commands_vit_gpt2_then_vit_llama(tmp_path, monkeypatch, stand_ins):
    in_a_checkout(tmp_path, stand_ins, monkeypatch)
    assert run_readme_commands("vit-gpt2") == 0
    assert type(AutoModelForImageTextToText.from_pretrained("runs/vit-gpt2/final")).__name__ == \
        "VisionEncoderDecoderModel"
    assert run_readme_commands("vit-llama") == 0
    assert type(AutoModelForImageTextToText.from_pretrained("runs/vit-llama/final")).__name__ == \
        "LlavaForConditionalGeneration"


def test_geovlm_last_8_on_a_2_layer_language_model_fails_before_stage_0(tmp_path, monkeypatch, stand_ins, tiny_lm,
                                                                        capsys):
    models = tmp_path / "models-2-layers"
    models.mkdir()
    (models / "siglip-base-patch16-224").symlink_to(stand_ins / "siglip-base-patch16-224")
    (models / "Qwen2.5-0.5B-Instruct").symlink_to(tiny_lm["qwen2"])
    in_a_checkout(tmp_path, models, monkeypatch)
    capsys.readouterr()
    assert run_readme_commands("geovlm") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("verbo: error: stages.1 (sft): train.language: last:8, but the "
                                                    "language component has 2 layers; use last:1 to last:2 or full")
    assert not (tmp_path / "runs/geovlm/stages").exists()


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
    overrides = [f"model.vision.name={vit_gpt2}", f"model.language.name={tiny_lm['llama']}", f"data_root={shapes_data}",
                 f"model.dtype={FLOAT32}"]
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
                                       "model": {"from": str(base), "dtype": FLOAT32}, "stages": [scst]}), run)
    rows = [r for r in _metrics(run) if "sample_reward" in r]
    assert len(rows) == 2 and all(r["caption_length"] > 0 for r in rows)
    assert read_json(run / "final/verbovision.json")["merge"]["max_abs_diff"] < 1e-4
