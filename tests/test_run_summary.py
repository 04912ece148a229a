"""What a run says before its first step (printed, in run.json and report.md), and progress fit for a log file."""

from __future__ import annotations

import io
import json
import math

import pytest
import yaml
from tqdm import tqdm
from transformers import AutoModelForImageTextToText

from verbovision import progress as progress_module
from verbovision.cli import main
from verbovision.data.sources import read_records
from verbovision.files import read_json
from verbovision.progress import LogProgress, progress

from .helpers import stage, tiny_recipe


def test_each_stage_says_what_it_will_do_before_its_first_step(tmp_path, shapes_data, capsys):
    records = json.loads((shapes_data / "val/caption_short_en.json").read_text())[:3]
    records[1]["image"] = "nowhere.png"
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps([{**r, "image": str((shapes_data / "val" / r["image"]).resolve())} if i != 1 else r
                                 for i, r in enumerate(records)]))
    trains = {"vision": "frozen", "connector": "full", "language": "last:1"}
    data = {"train": ["train/caption_short_en.json", str(extra)], "val": ["val/caption_short_en.json"]}
    recipe = tiny_recipe(shapes_data, [stage("s", train=trains, data=data, batch_size=4, grad_accum=2,
                                             max_steps=None, epochs=2, log_every=1)])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out

    usable = {role: len(read_records(shapes_data / f"{role}/caption_short_en.json")) for role in ("train", "val")}
    steps_per_epoch = math.ceil(math.ceil((usable["train"] + 2) / 4) / 2)
    summary = read_json(tmp_path / "run/run.json")["summary"]["s"]
    assert summary["sources"] == {
        "train": [{"source": "train/caption_short_en.json", "usable": usable["train"], "skipped": 0},
                  {"source": str(extra), "usable": 2, "skipped": 1}],
        "validation": [{"source": "val/caption_short_en.json", "usable": usable["val"], "skipped": 0}]}
    assert summary["steps_per_epoch"] == steps_per_epoch and summary["total_steps"] == 2 * steps_per_epoch
    assert summary["batch"] == {"batch_size": 4, "grad_accum": 2, "processes": 1, "effective": 8}
    assert summary["precision"] == {"weights": "float32", "autocast": None, "quantize": None}
    assert summary["device"] == "cpu"

    # last:1 trains the language model's last layer and the norm after it, nothing else of it
    weights = dict(AutoModelForImageTextToText.from_pretrained(tmp_path / "run/final").named_parameters())
    count = lambda *prefixes: sum(w.numel() for name, w in weights.items() if name.startswith(prefixes))  # noqa: E731
    last_layer = count("model.language_model.layers.1.", "model.language_model.norm.")
    parameters = summary["parameters"]
    assert parameters["language"] == {"trainable": last_layer, "total": count("model.language_model.", "lm_head.")}
    connector = count("model.multi_modal_projector.")
    assert parameters["connector"] == {"trainable": connector, "total": connector}
    assert parameters["vision"]["trainable"] == 0 < parameters["vision"]["total"]

    printed = [
        "stage 0 s (sft, template chat):",
        f"  train data train/caption_short_en.json: {usable['train']} usable, 0 skipped",
        f"  train data {extra}: 2 usable, 1 skipped",
        f"  validation data val/caption_short_en.json: {usable['val']} usable, 0 skipped",
        f"  steps: {steps_per_epoch} per epoch, {2 * steps_per_epoch} in all (2 epochs); effective batch 8 = "
        "batch_size 4 x grad_accum 2 x 1 process",
        "  precision: float32 weights; device: cpu",
    ]
    for line in printed:
        assert line in out.splitlines(), line
    assert "  trainable parameters: vision 0 of " in out
    report = (tmp_path / "run/report.md").read_text()
    assert "## Run summary" in report and "- precision: float32 weights; device: cpu" in report
    assert f"- train data train/caption_short_en.json: {usable['train']} usable, 0 skipped" in report


def test_training_progress_in_a_log_file_is_a_few_whole_lines(tmp_path, shapes_data, capsys):
    recipe = tiny_recipe(shapes_data, [stage("s", max_steps=40, batch_size=2, eval_every=100, log_every=100)])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err  # not a terminal, as in `make demo > log 2>&1`
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("stage 0 s: step ")]
    assert len(lines) == 20  # every 5%: steps 2, 4, ..., 40
    assert lines[0].startswith("stage 0 s: step 2/40 (5%), ") and lines[-1].startswith("stage 0 s: step 40/40 (100%)")
    assert all("loss=" in line for line in lines)


@pytest.mark.parametrize("total,initial,expected", [(1000, 0, 20), (30, 0, 15), (7, 0, 7), (1000, 500, 10), (1001, 500, 11), (0, 0, 0)])
def test_log_progress_writes_a_line_every_five_percent_and_at_the_end(capsys, total, initial, expected):
    bar = LogProgress(total, initial, "stage 0 s")
    for _ in range(total - initial):
        bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == expected
    assert not lines or lines[-1].startswith(f"stage 0 s: step {total}/{total} (100%)")


def test_a_terminal_gets_the_live_bar(monkeypatch):
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    monkeypatch.setattr(progress_module.sys, "stderr", terminal)
    assert isinstance(progress(10), tqdm)
    assert isinstance(progress(10, enabled=False), LogProgress)


def test_postfix_values_are_read_only_when_the_progress_is_shown(capsys):
    """A training step's loss left on the GPU is read (a host-device synchronisation) only when a line shows it."""
    from verbovision.train.state import Shown

    reads = []

    class DeviceValue:
        def __float__(self):
            reads.append(1)
            return 0.25

    bar = LogProgress(100, 0, "stage 0 s")
    for _ in range(10):  # every 5%: two lines
        bar.set_postfix(loss=Shown(DeviceValue()))
        bar.update(1)
    assert len(reads) == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("loss=0.2500")
