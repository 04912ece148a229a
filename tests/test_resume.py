"""Exact resume: a run killed with SIGKILL (also mid-checkpoint) resumes to the same loss curve and weights."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from verbovision.cli import main
from verbovision.config.parse import parse_recipe
from verbovision.model.store import load_model
from verbovision.train.run import train_recipe

from .helpers import curve, kill_at_step, rows, stage, tiny_recipe

STEPS = 24


def resumable_recipe(data) -> dict:
    return tiny_recipe(data, [stage(
        "lora", train={"vision": "frozen", "connector": "full", "language": "lora"},
        lora={"r": 4, "alpha": 8, "dropout": 0.2},  # dropout: the RNG state must be restored too
        max_steps=STEPS, save_every=2, keep=2, log_every=1, eval_every=5, epochs=10, batch_size=4)])


def final_weights(run) -> dict:
    return load_file(str(run / "final/adapter_model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, shapes_data):
    raw = resumable_recipe(shapes_data)
    reference = tmp_path / "reference"
    train_recipe(parse_recipe(raw), reference)

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    kill_at = random.Random(os.getpid()).randint(5, STEPS - 6)
    kill_at_step([sys.executable, "-m", "verbovision", "train", str(path), "--out", str(run)], run, kill_at)
    checkpoints = sorted((run / "stages/0-lora/checkpoints").glob("step-*"))
    # Rotation keeps the last two; a kill that falls between writing a checkpoint and removing the oldest leaves three.
    assert 1 <= len(checkpoints) <= 3

    # What a kill in the middle of a checkpoint write leaves behind: a partial temporary folder.
    partial = run / "stages/0-lora/checkpoints" / f".step-{STEPS:08d}.tmp"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"\x00" * 10)

    train_recipe(parse_recipe(raw), run, resume=True)
    assert len(list((run / "stages/0-lora/checkpoints").glob("step-*"))) == 2, "rotation keeps the last two"
    expected, got = curve(reference), curve(run)
    assert [s for s, _, _ in got] == [s for s, _, _ in expected]
    for (_, loss_a, val_a), (_, loss_b, val_b) in zip(expected, got):
        for a, b in ((loss_a, loss_b), (val_a, val_b)):
            assert (a is None) == (b is None) and (a is None or abs(a - b) <= 1e-6), (a, b)
    reference_weights, resumed_weights = final_weights(reference), final_weights(run)
    assert reference_weights.keys() == resumed_weights.keys()
    for name, value in reference_weights.items():
        assert torch.allclose(value, resumed_weights[name], atol=1e-6), name


def test_a_run_killed_while_saving_its_built_model_resumes(tmp_path, shapes_data):
    """A SIGKILL while init/ was saved (its weights written, its tokenizer not yet) left a model folder without a
    processor under init/'s name: --resume took it for whole and failed to load it, with a traceback."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(shapes_data, [stage("s", max_steps=1)])))
    killed = ("import os, sys; import verbovision.model.build as build; "
              "build.save_processor = lambda *_: os._exit(137); "  # as a SIGKILL while the tokenizer is written
              "from verbovision.cli import main; main(sys.argv[1:])")
    run = tmp_path / "run"
    assert subprocess.run([sys.executable, "-c", killed, "train", str(recipe), "--out", str(run)]).returncode == 137
    assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 0
    load_model(run / "final", device="cpu")
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # the killed save's part is gone


def test_skip_counters_survive_a_checkpoint(tmp_path):
    from verbovision.train.distributed import Processes
    from verbovision.train.state import TrainState

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = TrainState(step=7, epoch=1, step_in_epoch=3)
    state.record_skip("unreadable image", "rec-1: broken.png")
    state.record_skip("unreadable image", "rec-2: broken2.png")
    procs = Processes()
    state.save(procs, tmp_path, model, optimizer, scheduler)
    restored = TrainState()
    assert restored.load(procs, tmp_path, model, optimizer, scheduler)
    assert restored.skipped == {"unreadable image": {"count": 2, "examples": ["rec-1: broken.png",
                                                                               "rec-2: broken2.png"]}}
    assert (restored.step, restored.epoch, restored.step_in_epoch) == (7, 1, 3)
    # A checkpoint from before trained_in_epoch was saved: its epoch's steps count as trained, as they did then.
    (saved,) = tmp_path.glob("step-*/state.json")
    saved.write_text(json.dumps({k: v for k, v in json.loads(saved.read_text()).items() if k != "trained_in_epoch"}))
    assert restored.load(procs, tmp_path, model, optimizer, scheduler) and restored.trained_in_epoch == 3


def test_a_stage_redone_from_its_start_logs_its_steps_once(tmp_path, shapes_data):
    """A kill after a stage's last logged step but before its first checkpoint (or after its checkpoints made way for
    its saved model, before it was marked done): the resumed run redoes the stage from its start, and its rows of the
    killed attempt give way to the new ones instead of doubling the loss curve."""
    raw = tiny_recipe(shapes_data, [stage("s", max_steps=3, log_every=1, save_every=100)])
    run = tmp_path / "run"
    train_recipe(parse_recipe(raw), run)
    logged = curve(run)
    stage_dir = run / "stages/0-s"
    (stage_dir / "done.json").unlink()
    for checkpoint in (stage_dir / "checkpoints").glob("step-*"):
        shutil.rmtree(checkpoint)
    train_recipe(parse_recipe(raw), run, resume=True)
    assert curve(run) == logged


def test_a_run_whose_last_metrics_row_was_cut_short_resumes(tmp_path, shapes_data):
    """A kill or a full disk in the middle of a metrics.jsonl row (predict's answers are guarded the same way): the
    resumed run failed reading it, with a JSONDecodeError traceback. The torn row is dropped and logged again."""
    raw = tiny_recipe(shapes_data, [stage("s", max_steps=3, log_every=1, save_every=100)])
    run = tmp_path / "run"
    train_recipe(parse_recipe(raw), run)
    logged = curve(run)
    (run / "stages/0-s/done.json").unlink()
    shutil.rmtree(run / "stages/0-s/checkpoints")  # killed mid-row, before the checkpoint after it
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-9])
    train_recipe(parse_recipe(raw), run, resume=True)
    assert curve(run) == logged


def test_time_in_metrics_goes_on_across_a_resume(tmp_path, shapes_data):
    """metrics.jsonl's `time` (seconds since the run started) restarted at 0 in a resumed run: a plot over time went
    back. It goes on from the checkpoint's time (or the last row kept, where later)."""
    raw = tiny_recipe(shapes_data, [stage("s", max_steps=6, save_every=2, log_every=1, eval_every=100)])
    run = tmp_path / "run"
    train_recipe(parse_recipe(raw), run)
    # As if killed after step 6 was logged, before its checkpoint, 1000 s into the run and 2000 s at step 4's
    # checkpoint (a long validation, say).
    (run / "stages/0-s/done.json").unlink()
    shutil.rmtree(run / "stages/0-s/checkpoints/step-00000006")
    state = run / "stages/0-s/checkpoints/step-00000004/state.json"
    saved = json.loads(state.read_text())
    assert saved["elapsed"] >= next(r["time"] for r in rows(run) if r["step"] == 4 and "loss" in r)
    state.write_text(json.dumps({**saved, "elapsed": 2000.0}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({**r, "time": r["time"] + 1000}) + "\n" for r in rows(run)))
    train_recipe(parse_recipe(raw), run, resume=True)
    times = [r["time"] for r in rows(run)]
    assert [r["step"] for r in rows(run)][:4] == [1, 2, 3, 4] and len(times) > 4
    assert times == sorted(times) and times[4] >= 2000, times


def test_run_json_records_the_versions_of_each_start(tmp_path, shapes_data):
    """A run started under other package versions and resumed kept saying only its first start's: nothing told that
    its later stages trained under others. Its own fields stay the first start's; `resumes` lists each resume's."""
    from verbovision.train.report import write_report

    raw = tiny_recipe(shapes_data, [stage("a", max_steps=1), stage("b", max_steps=1)])
    run = tmp_path / "run"
    train_recipe(parse_recipe(raw), run)
    first = json.loads((run / "run.json").read_text())
    first["packages"]["torch"] = "2.0.0"  # as if started under another torch
    (run / "run.json").write_text(json.dumps(first))
    shutil.rmtree(run / "stages/1-b")  # as if stopped before it
    train_recipe(parse_recipe(raw), run, resume=True)
    info = json.loads((run / "run.json").read_text())
    assert {key: info[key] for key in first if key not in ("stages", "adapters")} == {
        key: first[key] for key in first if key not in ("stages", "adapters")}
    (resume,) = info["resumes"]
    torch_version = importlib.metadata.version("torch")  # the distribution's: no local part (+cu130) on CUDA builds
    assert resume["packages"]["torch"] == torch_version and resume.keys() == {"started", "python", "packages",
                                                                                  "git_commit"}
    report = write_report(run, []).read_text()
    assert f"- resumed {resume['started']}: torch 2.0.0 -> {torch_version}\n" in report


def test_a_moved_run_resumes_with_its_finished_stages_where_they_are_now(tmp_path, shapes_data):
    """done.json records a finished stage's folders; a run moved since (or resumed by another path, relative or
    through a link) finds them in its stage folders, not where they were."""
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("a", max_steps=1), stage("b", max_steps=1)]))
    train_recipe(recipe, tmp_path / "first")
    shutil.rmtree(tmp_path / "first/stages/1-b")  # as if killed before the second stage ended
    shutil.move(tmp_path / "first", tmp_path / "moved")
    run = train_recipe(recipe, tmp_path / "moved", resume=True)
    assert run["stages"]["a"]["model_dir"] == str(tmp_path / "moved/stages/0-a/model")
    assert (tmp_path / "moved/final").resolve() == tmp_path / "moved/stages/1-b/model"


def test_a_moved_run_whose_final_adapter_has_its_base_in_the_run_still_loads_and_merges(tmp_path, shapes_data):
    """The last stage's adapter named its base, the first stage's merged model, by its absolute path: once the run
    had moved, `verbo caption RUN` and `verbo merge RUN` failed on that path."""
    from verbovision.cli import main
    from verbovision.infer.vlm import VLM
    from verbovision.model.store import adapter_base

    lora = {"train": {"vision": "frozen", "connector": "full", "language": "lora"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("a", max_steps=1, merge=True, **lora),
                                                    stage("b", max_steps=1, **lora)]))
    train_recipe(recipe, tmp_path / "first")
    shutil.move(tmp_path / "first", tmp_path / "moved")
    assert adapter_base(tmp_path / "moved/final") == str(tmp_path / "moved/stages/0-a/model")
    assert VLM(tmp_path / "moved", device="cpu").caption([next((shapes_data / "images").glob("*.png"))])
    assert main(["merge", str(tmp_path / "moved"), "--out", str(tmp_path / "merged")]) == 0


def test_recipe_changes_allow_only_what_continuing_keeps():
    """Frequencies and runtime settings are notes; a length raised, of an unfinished stage, too; the rest refused."""
    from verbovision.train.resume import recipe_changes

    saved = {"seed": 0, "stages": [{"lr": 1e-3, "max_steps": 4, "save_every": 2, "data": {"train": ["a.json"]}},
                                   {"lr": 1e-3, "max_steps": 4, "save_every": 2, "data": {"train": ["a.json"]}}]}
    new = {"seed": 1, "stages": [{"lr": 1e-3, "max_steps": 8, "save_every": 4, "data": {"train": ["b.json"]}},
                                 {"lr": 3e-4, "max_steps": 8, "save_every": 2, "data": {"train": ["a.json"]}}]}
    allowed, refused = recipe_changes(saved, new, finished={0})
    assert allowed == ["stages.0.save_every: 2 -> 4", "stages.1.max_steps: 4 -> 8"]
    assert refused == ["seed: 0 -> 1", "stages.0.max_steps: 4 -> 8", 'stages.0.data.train.0: "a.json" -> "b.json"',
                       "stages.1.lr: 0.001 -> 0.0003"]
    lowered = recipe_changes(saved, {**saved, "stages": [saved["stages"][0], {**saved["stages"][1], "max_steps": 2}]},
                             finished=set())
    assert lowered == ([], ["stages.1.max_steps: 4 -> 2"])


def test_resume_refuses_a_changed_recipe_or_data_and_notes_safe_changes(tmp_path, shapes_data, capsys):
    from verbovision.errors import ConfigError

    data = tmp_path / "data"  # a copy: a data file of it changes below
    shutil.copytree(shapes_data, data)
    raw = tiny_recipe(data, [stage("s", max_steps=1, save_every=1)])
    run = tmp_path / "run"
    train_recipe(parse_recipe(raw), run)
    (run / "stages/0-s/done.json").unlink()  # as if stopped before the stage ended
    config = (run / "config.yaml").read_text()
    changed = copy.deepcopy(raw)
    changed["stages"][0].update(lr=3e-4, batch_size=2)
    with pytest.raises(ConfigError, match=r"stages\.0\.lr: 0\.001 -> 0\.0003; stages\.0\.batch_size: 4 -> 2; revert"):
        train_recipe(parse_recipe(changed), run, resume=True)
    assert (run / "config.yaml").read_text() == config, "a refused resume leaves the run's recipe as it was"

    safe = copy.deepcopy(raw)
    safe["stages"][0].update(max_steps=2, log_every=1)
    capsys.readouterr()
    assert train_recipe(parse_recipe(safe), run, resume=True)["stages"]["s"]["steps"] == 2
    notes = capsys.readouterr().err
    assert "stages.0.max_steps: 1 -> 2" in notes and "stages.0.log_every: 10 -> 1" in notes

    (run / "stages/0-s/done.json").unlink()
    train_file = data / "train/caption_short_en.json"
    train_file.write_text(train_file.read_text() + " ")
    with pytest.raises(ConfigError, match="train/caption_short_en.json changed since the run started"):
        train_recipe(parse_recipe(safe), run, resume=True)
    train_file.write_text(train_file.read_text()[:-1])

    from verbovision.train.resume import shown

    moved = tmp_path / "moved"  # the same data elsewhere: its fingerprints say it is the same
    data.rename(moved)
    capsys.readouterr()
    assert train_recipe(parse_recipe({**safe, "data_root": str(moved)}), run, resume=True)["stages"]["s"]["steps"] == 2
    assert f"data_root: {shown(str(data))} -> {shown(str(moved))}" in capsys.readouterr().err


def test_resume_in_another_number_of_processes_is_refused(tmp_path, shapes_data):
    """A run checkpointed by 2 processes (batch_size per process) resumed in 1 went on with half the global batch
    from the checkpoint's step on, its epochs counted anew, and run.json then said 1 process for the whole stage."""
    from verbovision.errors import ConfigError

    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("s", max_steps=2, save_every=1)]))
    run = tmp_path / "run"
    train_recipe(recipe, run)
    info = json.loads((run / "run.json").read_text())
    info["summary"]["s"]["batch"]["processes"] = 2  # as `verbo train --nproc 2` records it
    (run / "run.json").write_text(json.dumps(info))
    (run / "stages/0-s/done.json").unlink()  # stopped before the stage ended
    with pytest.raises(ConfigError, match=r"--resume in 1 process, but stage s trained in 2 \(batch_size is per "
                                          r"process: its batches would change partway\); resume with --nproc 2"):
        train_recipe(recipe, run, resume=True)
    shutil.rmtree(run / "stages/0-s/checkpoints")  # nothing to continue: the stage starts again, in 1 process
    assert train_recipe(recipe, run, resume=True)["summary"]["s"]["batch"]["processes"] == 1


@pytest.mark.parametrize("resume", [True, False])
def test_a_folder_that_is_not_a_run_is_refused_with_or_without_resume(tmp_path, shapes_data, resume):
    from verbovision.errors import ConfigError

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a run")
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("s", max_steps=1)]))
    with pytest.raises(ConfigError, match=f"{folder}: not empty and not a run folder"):
        train_recipe(recipe, folder, resume=resume)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("save_every", [None, 5])
def test_checkpoints_follow_save_every_and_the_last_step_not_every_epoch_end(tmp_path, shapes_data, save_every):
    """save_every N: steps N, 2N...; null: halfway through each epoch and at its end; and always the last step."""
    raw = tiny_recipe(shapes_data, [stage("s", batch_size=3, epochs=1, max_steps=None, save_every=save_every, keep=20,
                                          data={"train": ["train/caption_short_en.json"]})])
    run = tmp_path / "run"
    steps_per_epoch = train_recipe(parse_recipe(raw), run)["summary"]["s"]["steps_per_epoch"]
    assert steps_per_epoch % 5 and steps_per_epoch > 5  # the epoch's end is none of save_every's steps
    shutil.rmtree(run)
    total = steps_per_epoch + 2
    raw["stages"][0]["max_steps"] = total
    train_recipe(parse_recipe(raw), run)
    saved = sorted(int(p.name.removeprefix("step-")) for p in (run / "stages/0-s/checkpoints").glob("step-*"))
    due = set(range(5, total + 1, 5)) if save_every else {steps_per_epoch // 2, steps_per_epoch}
    assert saved == sorted(due | {total})
