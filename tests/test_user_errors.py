"""A new user's mistakes, each through the CLI: one `verbo: error:` line naming the input and what to do, exit 2,
at once (no hub retries, no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from verbovision.cli import main
from verbovision.config.model import ConnectorSpec, LanguageSpec, ModelSpec, VisionSpec
from verbovision.config.parse import parse_recipe
from verbovision.errors import DataError
from verbovision.model.build import build_vlm, save_model

from .helpers import free_port, stage, tiny_recipe

HUB_ID = "someone/tiny-vlm"
"""A hub id no test may download: it is in no cache but the one a test makes."""


def run_verbo(*args: str, cwd: Path | None = None, **env: str | None) -> subprocess.CompletedProcess:
    """`verbo ARGS` in a fresh process, with environment variables set (or removed, where None)."""
    environ = {**os.environ, **env}
    environ = {k: v for k, v in environ.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "verbovision", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=environ)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line a failed command printed (the test fails if it printed anything else on stderr)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("verbo: error: "), result.stderr
    return lines[0].removeprefix("verbo: error: ")


def unreachable_hub(tmp_path: Path) -> dict:
    """An environment whose hub is a closed port on this machine and whose hub cache is empty (or a test's own)."""
    return {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf")}


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory, tiny_vision, tiny_lm) -> Path:
    out = tmp_path_factory.mktemp("vlm")
    spec = ModelSpec(VisionSpec(name=tiny_vision["siglip"]), LanguageSpec(name=tiny_lm["qwen2"]), ConnectorSpec(),
                     image_token="<|image_pad|>")
    save_model(*build_vlm(spec), out, {"template": "chat"})
    return out


@pytest.fixture()
def image(tmp_path) -> Path:
    Image.new("RGB", (32, 32), "red").save(tmp_path / "img.png")
    return tmp_path / "img.png"


def test_hub_id_while_the_hub_is_unreachable(tmp_path, image):
    env = unreachable_hub(tmp_path)
    message = error_line(run_verbo("caption", HUB_ID, str(image), **env))
    assert message.startswith(f"model {HUB_ID}: no such directory, and the model hub cannot be reached "
                              f"({env['HF_ENDPOINT']}: ")
    assert message.endswith("check the connection (HF_ENDPOINT, proxy), or give a model directory")


def test_hub_id_offline_and_not_cached(tmp_path, image):
    message = error_line(run_verbo("caption", HUB_ID, str(image), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")))
    assert message == (f"model {HUB_ID}: no such directory, and not in the hub cache while HF_HUB_OFFLINE is set "
                       "(unset it to download the model, or give a model directory)")


def test_cached_hub_model_loads_from_the_cache_when_the_hub_is_unreachable(tmp_path, tiny_vlm, image):
    env = unreachable_hub(tmp_path)
    repo = Path(env["HF_HOME"]) / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(tiny_vlm, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    result = run_verbo("caption", HUB_ID, str(image), "--max-new-tokens", "2", **env)
    assert result.returncode == 0, result.stderr
    assert f"the model hub cannot be reached ({env['HF_ENDPOINT']}: " in result.stderr
    assert f"loading {HUB_ID} from the cache" in result.stderr
    assert result.stdout.startswith(f"{image}\t")


def test_mistyped_directories_in_build_and_recipe(tmp_path, tiny_vision, shapes_data):
    message = error_line(run_verbo("build", "--vision", tiny_vision["siglip"], "--language", "/typo/lm", "--out",
                                   str(tmp_path / "model")))
    assert message == "language model /typo/lm: no such directory (and not a hub id of the form owner/name)"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(shapes_data, [stage("s")])))
    message = error_line(run_verbo("train", str(tmp_path / "r.yaml"), "model.vision.name=/typo/encoder", "--out",
                                   str(tmp_path / "run")))
    assert message == "vision encoder /typo/encoder: no such directory (and not a hub id of the form owner/name)"


def test_language_model_or_encoder_given_as_model(tiny_lm, tiny_vision, image):
    lm, encoder = tiny_lm["qwen2"], tiny_vision["siglip"]
    assert error_line(run_verbo("caption", lm, str(image))) == (
        f"{lm}: a language model (qwen2), not an image-text model; compose it with a vision encoder first: "
        f"verbo build --vision ENCODER --language {lm} --out DIR")
    assert error_line(run_verbo("ask", encoder, str(image), "What is it?")) == (
        f"{encoder}: a vision encoder (siglip_vision_model), not an image-text model; compose it with a language "
        f"model first: verbo build --vision {encoder} --language LM --out DIR")


def test_recipe_name_that_is_also_a_folder_trains_the_shipped_recipe(tmp_path):
    (tmp_path / "quickstart").mkdir()  # what `verbo quickstart` leaves in the folder it runs in
    result = run_verbo("train", "quickstart", "--out", str(tmp_path / "run"), cwd=tmp_path)
    note, error = result.stderr.strip().splitlines()
    assert note.startswith("verbo: training the shipped recipe ") and note.endswith("quickstart.yaml")
    # The shipped recipe was read: its data_root (data/shapes) is not in this folder.
    assert error == "verbo: error: stages.0 (caption): data/shapes/train/caption_short_en.json: data file not found"
    assert error_line(run_verbo("train", str(tmp_path / "quickstart"))) == (
        f"{tmp_path / 'quickstart'}: a folder, not a recipe file; give a recipe YAML (such as recipes/quickstart.yaml)")


def test_failed_start_leaves_nothing_that_blocks_the_rerun(tmp_path, shapes_data):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(shapes_data, [stage("s", max_steps=1)])))
    for out in (tmp_path / "new-run", tmp_path / "empty-run"):
        if out.name == "empty-run":
            out.mkdir()
        failed = run_verbo("train", str(tmp_path / "r.yaml"), "model.language.name=/typo/lm", "--out", str(out))
        assert error_line(failed).startswith("language model /typo/lm: no such directory")
        assert not out.exists() if out.name == "new-run" else not any(out.iterdir())
    rerun = run_verbo("train", str(tmp_path / "r.yaml"), "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "final/config.json").exists()


def test_run_folder_where_a_file_is(tmp_path, shapes_data):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(shapes_data, [stage("s", max_steps=1)])))
    (tmp_path / "taken").write_text("a file, not a folder")
    for out in (tmp_path / "taken", tmp_path / "taken" / "run"):
        assert error_line(run_verbo("train", str(tmp_path / "r.yaml"), "--out", str(out))) == (
            f"{out}: {tmp_path / 'taken'} is a file, not a folder; choose another --out for the run")
    assert (tmp_path / "taken").read_text() == "a file, not a folder"


@pytest.mark.parametrize("flags,message", [
    (["--nproc", "0"], "--nproc 0: the number of processes is at least 1"),  # trained in one process
    (["--nproc", "2", "--accelerate-config", "nope.yaml"], "--accelerate-config nope.yaml: no such file"),  # traceback
    (["--accelerate-config", "{recipe}"], "--accelerate-config launches 2 or more processes (--nproc, else its "
                                          "num_processes: here 1)"),  # ignored
])
def test_launch_flags_that_would_be_ignored_or_fail(tmp_path, shapes_data, capsys, flags, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(shapes_data, [stage("s", max_steps=1)])))
    args = [flag.format(recipe=recipe) for flag in flags]
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), *args]) == 2
    assert capsys.readouterr().err.startswith(f"verbo: error: {message}") and not (tmp_path / "run").exists()


def test_failed_run_that_took_steps_stays_for_resume(tmp_path, shapes_data, monkeypatch):
    from verbovision.train import loop
    from verbovision.train.run import train_recipe

    def second_stage_fails(procs, recipe, stage, base, run_dir):
        if stage.name == "t":
            raise DataError("stage t cannot start")
        return prepare_stage(procs, recipe, stage, base, run_dir)

    prepare_stage = loop.prepare_stage
    monkeypatch.setattr(loop, "prepare_stage", second_stage_fails)
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("s", max_steps=1), stage("t", max_steps=1)]))
    with pytest.raises(DataError, match="stage t cannot start"):
        train_recipe(recipe, tmp_path / "run")
    assert (tmp_path / "run/stages/0-s/done.json").exists() and (tmp_path / "run/config.yaml").exists()


def test_an_unfinished_run_folder_given_as_model_says_how_to_finish_it(tmp_path, image):
    run = tmp_path / "run"
    (run / "stages/0-s/model").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    assert error_line(run_verbo("caption", str(run), str(image))) == (
        f"{run}: a run folder whose training has not finished (no final model): continue it with "
        f"`verbo train ... --out {run} --resume`, or give a stage's model (stages/*/model)")


def test_a_run_folder_given_as_model_is_its_final_model(plain_model_dir, lora_run, image, capsys):
    """PRODUCT.md: MODEL may be a run: its final model, a full model in one run and an adapter in the other."""
    from verbovision.cli import main

    for final in (plain_model_dir, lora_run / "final"):
        for model in (final.parent, final):
            assert main(["caption", str(model), str(image), "--device", "cpu"]) == 0
        by_run, by_final = capsys.readouterr().out.splitlines()
        assert by_run == by_final
        if final == plain_model_dir:
            assert by_run.split("\t")[1]  # it writes text: the comparison means something


def test_eval_flags_of_the_other_mode_are_errors_not_ignored():
    assert error_line(run_verbo("eval", "any/model", "--data", "x.json", "--limit", "2")) == (
        "verbo eval --data: --limit goes with --benchmark; --data scores every record of its file")
    assert error_line(run_verbo("eval", "any/model", "--benchmark", "pope", "--metrics", "cider", "--prompt", "Hi")) == (
        "verbo eval --benchmark: --metrics, --prompt go with --data; each benchmark is read and scored by its own rules")


def test_caption_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    assert error_line(run_verbo("caption", "any/model", str(tmp_path))) == (
        f"{tmp_path}: a folder without images (.jpg .jpeg .png .webp .bmp .gif .tif .tiff)")


def test_coco_file_whose_images_are_elsewhere_asks_for_image_root(tmp_path, image, capsys):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "photos").mkdir()
    image = image.rename(tmp_path / "photos" / image.name)  # not beside the annotations, nor a folder guessed
    coco = tmp_path / "annotations/captions_val2014.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": image.name}],
                                "annotations": [{"image_id": 1, "caption": "a red square"}]}))
    message = error_line(run_verbo("eval", "any/model", "--data", str(coco)))
    assert message.startswith(f"{coco}: record '1': {tmp_path / 'annotations' / image.name}: image not found; ")
    assert message.endswith("if the images are elsewhere, say where with image_root (--image-root)")
    assert main(["data", "check", str(coco), "--image-root", str(tmp_path / "photos")]) == 0  # as the hint says
    assert "1 records, 1 usable" in capsys.readouterr().out


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_written_follow_the_umask(shapes_data, tmp_path, umask):
    out = tmp_path / "llava.json"
    previous = os.umask(umask)
    try:
        assert main(["data", "convert", str(shapes_data / "val/caption_short_en.json"), "--to", "llava",
                     "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_saved_weights_are_as_readable_as_their_config(lora_run):
    """safetensors >= 0.8 creates its files 0600 whatever the umask (safetensors#782): a model trained for others to
    serve was unreadable to them. A model's and an adapter's weights get the mode their config.json got."""
    folders = [lora_run / "init", lora_run / "stages/0-full/model", lora_run / "stages/1-lora/adapter"]
    for folder in folders:
        config = folder / ("adapter_config.json" if folder.name == "adapter" else "config.json")
        for weights in folder.glob("*.safetensors"):
            assert stat.S_IMODE(weights.stat().st_mode) == stat.S_IMODE(config.stat().st_mode), weights


@pytest.mark.parametrize("flags, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens 0: give an integer >= 1"),
    (["--beams", "0"], "--beams 0: give an integer >= 1"),
    (["--temperature", "0"], "--temperature 0.0: give a number > 0 (leave the flag out for greedy decoding)"),
    (["--top-p", "1.5"], "--top-p 1.5: give a number in (0, 1]"),
    (["--seed", str(2**64)], f"--seed {2**64}: give a 64-bit integer"),
    (["--batch-size", "0"], "--batch-size 0: give an integer >= 1"),
    (["--min-new-tokens", "9", "--max-new-tokens", "4"], "--min-new-tokens 9 is more than --max-new-tokens 4: the reply "
                                                         "would stop short of it; raise --max-new-tokens"),
    (["--device", "gpu"], "device 'gpu' unknown; use cpu, cuda, cuda:N or mps"),
])
def test_decoding_and_device_flags_out_of_range(tiny_vlm, image, capsys, flags, message):
    assert main(["caption", str(tiny_vlm), str(image), *flags]) == 2
    assert capsys.readouterr().err == f"verbo: error: {message}\n"


def test_device_missing_on_this_machine(tiny_vlm, image, capsys):
    assert main(["caption", str(tiny_vlm), str(image), "--device", "cuda:99"]) == 2
    assert capsys.readouterr().err.startswith("verbo: error: device 'cuda:99': this machine has ")


def test_evaluation_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    taken = tmp_path / "report"
    taken.write_text("")
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text('{"id": "1", "prediction": "a cat", "references": ["a cat"]}\n')
    for argv in (["eval", "no/such-model", "--data", str(predictions), "--out", str(taken)],
                 ["score", str(predictions), "--out", str(taken)]):
        assert main(argv) == 2
        assert capsys.readouterr().err == (f"verbo: error: --out {taken}: a file; give a folder for the predictions "
                                           "and reports\n")


def test_model_with_a_truncated_weights_file_or_broken_metadata(tiny_vlm, image, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_vlm, model)
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[: len(weights) * 9 // 10])  # an interrupted copy
    assert main(["caption", str(model), str(image)]) == 2
    assert capsys.readouterr().err.startswith(f"verbo: error: {model}: a weights file is corrupt or truncated (")
    (model / "model.safetensors").write_bytes(weights)
    (model / "verbovision.json").write_text('{"template": "chat",')
    assert main(["caption", str(model), str(image)]) == 2
    assert capsys.readouterr().err.startswith(f"verbo: error: {model / 'verbovision.json'}: not valid JSON (")


def test_model_without_its_tokenizer_file(tiny_vlm, image, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_vlm, model)
    (model / "tokenizer.json").unlink()
    assert main(["caption", str(model), str(image)]) == 2
    assert capsys.readouterr().err == (f"verbo: error: {model}: no tokenizer it can read (tokenizer.json missing?); "
                                       "copy the model's tokenizer files into it\n")


def test_an_adapter_whose_base_is_gone_says_where_the_base_came_from(lora_run, image, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run / "final", adapter)
    metadata = json.loads((adapter / "verbovision_adapter.json").read_text())
    (adapter / "verbovision_adapter.json").write_text(json.dumps({**metadata, "base_model": str(tmp_path / "moved")}))
    assert error_line(run_verbo("caption", str(adapter), str(image))) == (
        f"{adapter}: its base model (from verbovision_adapter.json) {tmp_path / 'moved'}: no such directory (and not a "
        "hub id of the form owner/name)")


def test_merge_and_build_refuse_an_out_they_would_harm(lora_run, tiny_vision, tiny_lm, tmp_path, capsys):
    """The merged model saved over its adapter's own base (every later load of the adapter would apply it twice), into
    the adapter or the run folder (a checkpoint mixed with their files), or where a file is: refused before any
    work, each input left as it was."""
    run = tmp_path / "run"
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("feature_cache", "checkpoints", "tensorboard"))
    base, adapter = run / "stages/0-full/model", run / "stages/1-lora/adapter"
    metadata = json.loads((adapter / "verbovision_adapter.json").read_text())
    (adapter / "verbovision_adapter.json").write_text(json.dumps({**metadata, "base_model": str(base)}))
    (tmp_path / "file").write_text("x")
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    refusals = {base: "the adapter's base model this command reads; choose another --out",
                adapter: "the adapter this command reads; choose another --out",
                run: "a folder that holds something other than a model; choose a new or empty folder",
                tmp_path / "file": f"{tmp_path / 'file'} is a file, not a folder; choose another --out"}
    for out, message in refusals.items():
        assert main(["merge", str(run), "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"verbo: error: --out {out}: {message}\n"
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0  # a model folder: saved over
    build = ["build", "--vision", tiny_vision["siglip"], "--language", tiny_lm["qwen2"], "--out"]
    assert main([*build, tiny_lm["qwen2"]]) == 2
    assert capsys.readouterr().err.endswith("the language model this command reads; choose another --out\n")
    assert main([*build, str(tmp_path / "file" / "built")]) == 2
    assert capsys.readouterr().err.endswith("is a file, not a folder; choose another --out\n")
