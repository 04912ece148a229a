"""Training: recipes run end to end, LoRA stages merge into verified bases, bad input gives clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from verbovision.config.parse import apply_override, load_recipe, parse_recipe
from verbovision.data.encoding import Encoder
from verbovision.data.sources import read_records
from verbovision.errors import ConfigError, DataError
from verbovision.files import read_json
from verbovision.merge import logits_of, probe_batch
from verbovision.model.store import load_model
from verbovision.model.trainable import enable_checkpointing
from verbovision.train.run import train_recipe

from .helpers import built_model, stage, tiny_recipe, train_one_stage

RECIPES = Path(__file__).resolve().parents[1] / "src" / "verbovision" / "recipes"


def test_two_stage_run_with_lora_merge(tmp_path, shapes_data):
    recipe = parse_recipe(tiny_recipe(shapes_data, [
        stage("full", train={"vision": "full", "connector": "full", "language": "full"}),
        stage("lora", train={"vision": "frozen", "connector": "full", "language": "lora"},
              lora={"r": 4, "alpha": 8, "dropout": 0.0}, merge=True, schedule="linear"),
    ]))
    run = tmp_path / "run"
    train_recipe(recipe, run)
    for name in ("config.yaml", "run.json", "metrics.jsonl", "loss.png", "init/config.json", "final/config.json"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").iterdir())
    info = read_json(run / "run.json")
    assert info["packages"]["torch"] and info["data_fingerprints"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"full", "lora"} and any("val_loss" in r for r in rows)

    # The merged model the next stage would start from equals base + adapter on a probe batch.
    adapter = run / "stages/1-lora/adapter"
    meta = read_json(adapter / "verbovision_adapter.json")
    assert Path(meta["base_model"]) == (run / "stages/0-full/model").resolve()
    base = AutoModelForImageTextToText.from_pretrained(meta["base_model"]).eval()
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    merged, processor = load_model(run / "stages/1-lora/model", device="cpu")
    batch = probe_batch(merged, processor, "cpu", seed=3)
    difference = (logits_of(with_adapter, batch) - logits_of(merged, batch)).abs().max().item()
    assert difference < 1e-4
    assert read_json(run / "stages/1-lora/model/verbovision.json")["merge"]["max_abs_diff"] < 1e-4
    # the adapter changed the model (otherwise the equality above proves nothing)
    untouched = AutoModelForImageTextToText.from_pretrained(meta["base_model"]).eval()
    assert (logits_of(untouched, batch) - logits_of(merged, batch)).abs().max().item() > 1e-6


def test_frozen_components_do_not_change(tmp_path, shapes_data):
    recipe = parse_recipe(tiny_recipe(shapes_data, [
        stage("connector-only", train={"vision": "frozen", "connector": "full", "language": "last:1"}),
    ]))
    train_recipe(recipe, tmp_path / "run")
    before = AutoModelForImageTextToText.from_pretrained(tmp_path / "run/init").state_dict()
    after = AutoModelForImageTextToText.from_pretrained(tmp_path / "run/final").state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(n.startswith("model.multi_modal_projector") for n in changed)
    assert any(n.startswith("model.language_model.layers.1.") for n in changed)
    assert not any(n.startswith("model.vision_tower") for n in changed)
    assert not any(n.startswith("model.language_model.layers.0.") for n in changed)
    assert not any("embed_tokens" in n for n in changed)


def test_gradient_checkpointing_per_component(tmp_path, shapes_data):
    raw = tiny_recipe(shapes_data, [stage("s", train={"vision": "full", "connector": "full", "language": "full"},
                                          max_steps=2, log_every=1)])
    train_recipe(parse_recipe(raw), tmp_path / "plain")
    raw["stages"][0]["gradient_checkpointing"] = ["language"]
    train_recipe(parse_recipe(raw), tmp_path / "checkpointed")
    rows = lambda run: [r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text()  # noqa: E731
                                                .splitlines()) if "loss" in r]
    assert rows("checkpointed") == pytest.approx(rows("plain"), abs=1e-6)  # recomputing changes nothing

    # Which layers recompute: inside a checkpointed layer, modules start twice in a training step, elsewhere once
    # (a pre-hook: the recomputation stops inside the last module, once it has every tensor the backward needs).
    model, processor = load_model(str(tmp_path / "plain/init"), device="cpu")
    enable_checkpointing(model, ["language"])
    model.train()
    calls = {"vision": 0, "language": 0}
    model.model.vision_tower.encoder.layers[0].mlp.register_forward_pre_hook(
        lambda *_: calls.__setitem__("vision", calls["vision"] + 1))
    model.model.language_model.layers[0].mlp.register_forward_pre_hook(
        lambda *_: calls.__setitem__("language", calls["language"] + 1))
    model(**probe_batch(model, processor, "cpu")).logits.sum().backward()
    assert calls == {"vision": 1, "language": 2}
    with pytest.raises(ConfigError, match="gradient_checkpointing: true, false or a list of"):
        parse_recipe({**raw, "stages": [{**raw["stages"][0], "gradient_checkpointing": ["decoder"]}]})


def test_labels_cover_assistant_replies_only(tmp_path, shapes_data):
    _, processor = load_model(built_model(tmp_path, shapes_data), device="cpu")
    record = read_records(shapes_data / "train/vqa_en.json")[0]
    for template in ("chat", "plain"):
        encoder = Encoder(processor, template)
        example = encoder.encode(record)
        labelled = [t for t, label in zip(example.input_ids, example.labels) if label != -100]
        reply = processor.tokenizer.decode(labelled, skip_special_tokens=True)
        assert reply.strip() == record.turns[-1].text
        image_positions = [i for i, t in enumerate(example.input_ids) if t == processor.image_token_id]
        assert len(image_positions) == len(encoder.image_tokens.fixed)
        assert all(example.labels[i] == -100 for i in image_positions)


def test_bad_image_is_skipped_counted_and_reported(tmp_path, shapes_data):
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    records = json.loads((data / "train/caption_short_en.json").read_text())
    broken = data / records[0]["image"].replace("../", "")
    broken.write_bytes(b"not a png")
    records[1]["image"] = "../images/missing.png"
    (data / "train/caption_short_en.json").write_text(json.dumps(records))
    raw = tiny_recipe(data, [stage("s", epochs=2, max_steps=None, batch_size=8, log_every=1)])
    train_recipe(parse_recipe(raw), tmp_path / "run")
    skipped = read_json(tmp_path / "run/run.json")["skipped"]["s"]
    assert skipped["unreadable image"]["count"] >= 1 and records[0]["id"] in skipped["unreadable image"]["examples"][0]
    assert skipped["image not found"]["count"] >= 1

    # Images read by 3 DataLoader workers instead (more workers than some epochs have steps left): the same run.
    raw["stages"][0]["data_workers"] = 3
    train_recipe(parse_recipe(raw), tmp_path / "workers")
    assert read_json(tmp_path / "workers/run.json")["skipped"]["s"] == skipped
    losses = lambda run: [(r["step"], r.get("loss"), r.get("val_loss"))  # noqa: E731
                          for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())]
    assert losses("workers") == losses("run") and len(losses("run")) >= 8
    weights = [load_file(str(tmp_path / run / "final/model.safetensors")) for run in ("run", "workers")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("override,message", [
    ("stages.0.lrr=1", "stages.0.lrr: unknown key (did you mean 'lr'?)"),
    ("stages.0.train.language=half", "stages.0.train.language: 'half' must be frozen, full, lora, last:N or cross_attention"),
    ("stages.0.batch_size=big", "stages.0.batch_size: expected int"),
    ("stages.3.lr=1", "not an index"),
    ("model.connector.tpye=mlp", "model.connector.tpye: unknown key (did you mean 'type'?)"),
    ("model.dtype=bfloat", ("model.dtype: 'bfloat' unknown (did you mean 'bfloat16'?); use auto, float32, "
                            "bfloat16, float16")),
    ("model.dtype=float16", "model.dtype: float16 trains without the loss scaling it needs; use bfloat16"),
    # `stages.0.train={vision: full, language: frozen}` unquoted: the shell splits it at its spaces
    ("stages.0.train={vision:", ("override stages.0.train: '{vision:' is not a YAML value (expected the node content, "
                                 "but found '<stream end>' at line 1 column 9); in a shell, quote an override that "
                                 "holds spaces")),
    # values that trained nothing (max_steps -1, epochs 0, lr 0), trained an epoch (max_steps 0), trained backwards
    # (lr -1), or failed inside the run with a traceback (log_every 0, lora.r 0, lora.dropout 1)
    ("stages.0.max_steps=-1", "stages.0.max_steps: must be >= 1"),
    ("stages.0.max_steps=0", "stages.0.max_steps: must be >= 1"),
    (("stages.0.epochs=0", "stages.0.max_steps=null"), "stages.0.epochs: must be > 0"),
    ("stages.0.lr=0", "stages.0.lr: must be > 0"),
    ("stages.0.lr_language=-1e-4", "stages.0.lr_language: must be > 0"),
    ("stages.0.warmup=-1", "stages.0.warmup: must be >= 0"),
    ("stages.0.log_every=0", "stages.0.log_every: must be >= 1"),
    # 0 meant "off" unsaid for these; null says it (max_grad_norm 0 is the usual "no clipping", negative is not)
    ("stages.0.eval_every=0", "stages.0.eval_every: must be >= 1, or null to validate at the end of each epoch"),
    ("stages.0.save_every=0", "stages.0.save_every: must be >= 1, or null to checkpoint twice per epoch"),
    ("stages.0.early_stopping=0", "stages.0.early_stopping: must be >= 1, or null to never stop early"),
    # no validation data, so no validation to count: it never stopped, unsaid
    (("stages.0.early_stopping=2", "stages.0.data.val=[]"),
     "stages.0.early_stopping: counts validations, which need data.val records"),
    ("stages.0.max_grad_norm=-1", "stages.0.max_grad_norm: must be >= 0 (0 or null: no clipping)"),
    ("stages.0.lora.r=0", "stages.0.lora.r: must be >= 1"),
    ("stages.0.lora.dropout=1", "stages.0.lora.dropout: must be in [0, 1)"),
    # a NaN weight was a traceback, a negative one an epoch without that source, all-zero "the data holds no records"
    ("stages.0.data.train=[{path: train/caption_short_en.json, weight: .nan}]",
     "stages.0.data.train.0.weight: must be a number >= 0"),
    ("stages.0.data.val=[{path: val/caption_short_en.json, weight: -1}]", "stages.0.data.val.0.weight: must be a number"),
    ("stages.0.data.train=[{path: train/caption_short_en.json, weight: 0}]",
     "stages.0.data.train: every source has weight 0, so nothing would train"),
    # from-scratch sizes that failed inside torch while the model was built
    ("model.language.hidden_size=-4", "model.language.hidden_size: must be >= 1"),
    ("model.vision.patch_size=64", "model.vision.patch_size: 64 is larger than image_size 32"),
    # tracebacks: an override value that is not YAML, a source without its path
    ("stages.0.data.train=[a.json, b", "override stages.0.data.train: '[a.json, b' is not a YAML value (expected"),
    ("stages.0.data.train=[{weight: 2}]", "stages.0.data.train.0: path is required"),
])
def test_bad_recipe_keys_name_the_key(tmp_path, shapes_data, override, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(shapes_data, [stage("s")])))
    with pytest.raises(ConfigError) as error:
        load_recipe(path, [override] if isinstance(override, str) else list(override))
    assert message in str(error.value) and str(path) in str(error.value)


def test_stages_need_names_of_their_own(shapes_data):
    # run.json kept the last of two stages named alike, the report showed one, metrics.jsonl mixed their rows
    with pytest.raises(ConfigError, match=r"stages\.1\.name: 's' names stages\.0 too"):
        parse_recipe(tiny_recipe(shapes_data, [stage("s"), stage("s")]))


def test_invalid_yaml_is_one_line_naming_line_and_column(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nstages: [{lr: 1e-3}\n")
    with pytest.raises(ConfigError) as error:
        load_recipe(path)
    assert str(error.value) == f"{path}: invalid YAML: expected ',' or ']', but got '<stream end>' at line 3 column 1"


def test_missing_data_file_names_it(tmp_path, shapes_data):
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("s", data={"train": ["train/nope.json"]})]))
    with pytest.raises(DataError, match="nope.json: data file not found"):
        train_recipe(recipe, tmp_path / "run")


def test_override_parses_values():
    raw = {"stages": [{"lr": 1.0, "data": {"train": ["a"]}}]}
    apply_override(raw, "stages.0.lr=3e-4")
    apply_override(raw, "stages.0.keep_best=false")
    apply_override(raw, "stages.0.data.train=[b, c]")
    assert raw["stages"][0] == {"lr": "3e-4", "keep_best": False, "data": {"train": ["b", "c"]}}
    assert parse_recipe(raw).stages[0].lr == 3e-4


def test_resume_skips_finished_stages(tmp_path, shapes_data):
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("a"), stage("b")]))
    run = tmp_path / "run"
    train_recipe(recipe, run)
    first = (run / "stages/0-a/model/model.safetensors").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="--resume"):
        train_recipe(recipe, run)
    train_recipe(recipe, run, resume=True)
    assert (run / "stages/0-a/model/model.safetensors").stat().st_mtime_ns == first


def test_every_recipe_parses():
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert {"quickstart", "verbovision-pt", "vit-gpt2", "llava-vqa-lora", "git-pokemon-lora", "geovlm"} <= set(names)
    for name in names:
        load_recipe(RECIPES / f"{name}.yaml")


def test_best_checkpoint_by_generation_metric(tmp_path, shapes_data):
    recipe = parse_recipe(tiny_recipe(shapes_data, [
        stage("s", max_steps=6, eval_every=2, best_metric="cider", best_metric_records=8, lr=3e-3)]))
    train_recipe(recipe, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    scores = [r["val_cider"] for r in rows if "val_cider" in r]
    assert len(scores) == 3 and all(r.get("val_loss") is not None for r in rows if "val_cider" in r)
    assert read_json(tmp_path / "run/run.json")["stages"]["s"]["best"] == max(scores)
    assert (tmp_path / "run/stages/0-s/best.safetensors").exists()


def test_generation_metric_needs_validation_data(shapes_data):
    with pytest.raises(ConfigError, match="best_metric: cider needs data.val"):
        parse_recipe(tiny_recipe(shapes_data, [stage("s", best_metric="cider", data={"train": ["a.json"]})]))


def test_per_component_learning_rates_are_logged_by_name(tmp_path, shapes_data):
    """metrics.jsonl's `lr` was the first parameter group's: the vision tower's lr_vision, logged as the stage's lr."""
    trains = {"vision": "full", "connector": "full", "language": "full"}
    run = tmp_path / "run"
    train_recipe(parse_recipe(tiny_recipe(shapes_data, [stage("s", max_steps=1, train=trains, lr=1e-3, lr_vision=1e-5,
                                                              lr_connector=2e-4, schedule="constant", warmup=0)])),
                 run)
    (row,) = [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "grad_norm" in row]
    assert (row["lr"], row["lr_vision"], row["lr_connector"]) == (1e-3, 1e-5, 2e-4)


def test_a_vqa_best_metric_on_single_answer_validation_data_fails_before_the_first_stage(tmp_path, shapes_data):
    """VQA accuracy needs several reference answers per item; on one it refused at the stage's first validation, after
    the stages before it (and its own steps up to it) had trained."""
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("a", max_steps=1), stage("b", best_metric="vqa")]))
    with pytest.raises(ConfigError, match=r"^stage b: best_metric vqa: item '\S+' has 1 reference answer\(s\); VQA "
                                          r"accuracy credits"):
        train_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_early_stopping_halts_when_validation_stops_improving(tmp_path, shapes_data):
    # A learning rate this high makes validation loss stop improving at once; patience 2 ends the stage early.
    recipe = parse_recipe(tiny_recipe(shapes_data, [
        stage("s", max_steps=40, eval_every=1, early_stopping=2, lr=5.0, max_grad_norm=None, warmup=0)]))
    train_recipe(recipe, tmp_path / "run")
    info = read_json(tmp_path / "run/run.json")["stages"]["s"]
    assert info["steps"] < 40


def test_bf16_autocast_and_compile(tmp_path, shapes_data):
    # aot_eager: dynamo's graph capture and AOT autograd as inductor uses them, without its minutes of kernel builds
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("s", bf16=True, compile="aot_eager", max_steps=3,
                                                          log_every=1)]))
    train_recipe(recipe, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    assert (tmp_path / "run/final/model.safetensors").exists()  # parameter names unchanged by compile


@pytest.mark.parametrize("train", [{"connector": "full"}, {"language": "lora"}], ids=["full", "lora"])
def test_a_run_continues_from_a_finished_run_folder(tmp_path, shapes_data, lora_run, train):
    """`model.from:` a run folder starts from its final model, here an adapter: the stage trains that adapter merged
    into its base, and a new adapter loads onto it so."""
    more = stage("more", max_steps=1, train={"vision": "frozen", "connector": "frozen", "language": "frozen", **train},
                 lora={"r": 4, "alpha": 8, "dropout": 0.0})
    run = train_one_stage(tmp_path, shapes_data, lora_run, more)
    assert json.loads((run / "final/verbovision.json").read_text())["base_model"] == str(lora_run / "final")
    lora = train.get("language") == "lora"
    model, _ = load_model(run / "final", device="cpu")
    adapted, _ = load_model(lora_run / "final", device="cpu")
    merged = dict(adapted.merge_and_unload().named_parameters())
    loaded = dict((model.merge_and_unload() if lora else model).named_parameters())
    assert loaded.keys() == merged.keys()
    changed = [name for name in merged if not torch.equal(loaded[name], merged[name])]
    assert changed and all(("language_model" if lora else "multi_modal_projector") in name for name in changed)


def test_a_quantized_run_does_not_start_from_an_adapter(tmp_path, shapes_data, lora_run):
    recipe = {"name": "q", "seed": 0, "data_root": str(shapes_data), "model": {"from": str(lora_run), "quantize": "4bit"},
              "stages": [stage("q", train={"language": "lora"})]}
    with pytest.raises(ConfigError, match=r"^model.from .*final: an adapter, which would be merged into 4bit weights "
                                          r"\(lossy\); merge it in full precision first \(verbo merge "):
        train_recipe(parse_recipe(recipe), tmp_path / "run")
    assert not (tmp_path / "run/stages").exists()
