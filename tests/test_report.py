"""What a person reads after a run or an evaluation: report.md tables, samples.png, loss.png and metrics.png.

The figures are checked for their structure (panels, axes, texts), not their pixels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from verbovision.config.parse import parse_recipe
from verbovision.evaluate.metrics import EvalResult
from verbovision.evaluate.report import markdown, metrics_figure, write_eval_folder
from verbovision.files import read_json, write_json
from verbovision.train.report import SAMPLE_TEXT_WIDTH, sample_captions, samples_figure, write_report
from verbovision.train.runinfo import loss_figure

from .helpers import built_model, png_bytes, stage, tiny_recipe, write_tar

LONG_REPLY = " ".join(f"Step {i}: the angle is {20 * i} degrees because the base angles are equal." for i in range(12))


def sample(image, prediction: str, reference: str, finish_reason: str = "stop") -> dict:
    return {"image": str(image), "prompt": "<image>\nWhat is the angle?", "prediction": prediction,
            "reference": reference, "finish_reason": finish_reason, "max_new_tokens": 64}


def cells(row: str) -> list[str]:
    """A Markdown table row's cells: split at the pipes that are not escaped."""
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


def assert_tables_whole(text: str) -> list[str]:
    """Every table row has its header's number of cells; returns the rows."""
    rows, width = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        width = width or len(cells(line))
        assert len(cells(line)) == width, line
        rows.append(line)
    return rows


def test_report_tables_escape_line_breaks_and_pipes(tmp_path):
    Image.new("RGB", (40, 40), "red").save(tmp_path / "a.png")
    samples = [sample(tmp_path / "a.png", "a <image> | b\\", "line one | x\r\nline two\n\nline four")]
    rows = assert_tables_whole(write_report(tmp_path, samples, {"meteor (skipped)": "java | not found"}).read_text())
    assert "| `a.png` | a &lt;image> \\| b\\\\ | line one \\| x<br>line two<br><br>line four |" in rows
    assert "| meteor (skipped) | java \\| not found |" in rows

    result = EvalResult({"CIDEr": 1.5}, predictions=[
        {"id": "7|8", "prediction": "two\nlines", "finish_reason": "length", "references": ["a | b"]}])
    rows = assert_tables_whole(markdown(result, {"model": "m"}))
    assert "| 7\\|8 | two<br>lines [cut at max_new_tokens] | a \\| b |" in rows


def test_sample_captions_pass_over_records_whose_image_does_not_open(tmp_path, shapes_data):
    # Training skips (and counts) such a record; the report's samples, drawn after training, failed on it.
    records = read_json(shapes_data / "train/caption_short_en.json")[:3]
    images = [(shapes_data / "train" / r["image"]).resolve() for r in records]
    (tmp_path / "cut.png").write_bytes(images[0].read_bytes()[:60])
    write_json(tmp_path / "data.json", [{**r, "image": str(image)} for r, image in
                                        zip(records, [tmp_path / "cut.png", *images[1:]])])
    recipe = parse_recipe(tiny_recipe(tmp_path, [stage("s", data={"train": ["data.json"]})]))
    samples = sample_captions(built_model(tmp_path, shapes_data), recipe)
    assert [s["image"] for s in samples] == [str(image) for image in images[1:]]


def test_a_samples_reference_is_a_caption_not_a_blank_one(tmp_path, shapes_data):
    # COCO's blank captions stay references (the official scorer counts them); a sample shows a real one.
    record = read_json(shapes_data / "train/caption_short_en.json")[0]
    write_json(tmp_path / "coco.json", {
        "images": [{"id": 1, "file_name": str((shapes_data / "train" / record["image"]).resolve())}],
        "annotations": [{"id": 1, "image_id": 1, "caption": " "}, {"id": 2, "image_id": 1, "caption": "a red square"}]})
    recipe = parse_recipe(tiny_recipe(tmp_path, [stage("s", data={"train": ["coco.json"]})]))
    assert [s["reference"] for s in sample_captions(built_model(tmp_path, shapes_data), recipe)] == ["a red square"]


def test_samples_of_shard_members_and_embedded_images_show_in_the_report(tmp_path, shapes_data):
    # Images without a path of their own: prompt_record and samples.png took every image for a file (a TypeError).
    pd = pytest.importorskip("pandas")
    write_tar(tmp_path / "s.tar", {"k/0.png": png_bytes((200, 0, 0)), "k/0.txt": b"a red square"})
    pd.DataFrame({"image": [{"bytes": png_bytes((0, 0, 200)), "path": None}], "caption": ["a blue square"]}).to_parquet(
        tmp_path / "d.parquet")
    model = built_model(tmp_path, shapes_data)
    for data, name, colour, caption in (("s.tar", "s.tar:k/0.png", (200, 0, 0), "a red square"),
                                        ("d.parquet", "d.parquet:0:image", (0, 0, 200), "a blue square")):
        samples = sample_captions(model, parse_recipe(tiny_recipe(tmp_path, [stage("s", data={"train": [data]})])))
        assert [s["image"] for s in samples] == [f"{tmp_path / name}"]
        assert samples[0]["picture"].getpixel((0, 0)) == colour
        run = tmp_path / data.replace(".", "-")
        run.mkdir()
        write_report(run, samples)
        assert (run / "samples.png").exists() and f"| {caption} |" in (run / "report.md").read_text()


def test_samples_png_wraps_long_replies_whole(tmp_path):
    Image.new("RGB", (40, 40), "red").save(tmp_path / "a.png")
    short = samples_figure([sample(tmp_path / "a.png", "a red square", "a red square")])
    long = samples_figure([sample(tmp_path / "a.png", LONG_REPLY, "Step 1.\nStep 2.\nAnswer: C", "length"),
                           sample(tmp_path / "a.png", "a red square", "a red square")])
    texts = [t.get_text() for ax in long.axes for t in ax.texts]
    reply = next(t for t in texts if t.startswith("Step 0"))
    assert " ".join(reply.split()) == LONG_REPLY + " [cut at max_new_tokens]"  # every word there, nothing cut
    assert max(map(len, reply.splitlines())) <= SAMPLE_TEXT_WIDTH < len(LONG_REPLY)
    assert "reference: Step 1.\nStep 2.\nAnswer: C" in texts  # its own line breaks kept
    assert long.get_figheight() > 2 * short.get_figheight()  # the long reply's row grew to hold it


def test_loss_png_gives_scst_its_rewards_and_a_linear_loss_axis():
    rows = [{"stage": "xent", "step": s, "loss": 5.0 / s} for s in range(1, 5)]
    rows += [{"stage": "xent", "step": 4, "val_loss": 1.5}]
    rows += [{"stage": "scst", "step": s, "loss": (-1) ** s * 0.1, "sample_reward": 0.5 + s / 10,
              "greedy_reward": 0.6, "caption_length": 9.0 - s} for s in range(1, 5)]
    rows += [{"stage": "scst", "step": 4, "val_loss": 2.0, "val_cider": 0.8}]
    fig = loss_figure(rows)
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert list(axes) == ["xent: loss", "scst: policy-gradient loss", "scst: reward of training captions",
                          "scst: sampled caption length (tokens)", "scst: validation loss (references)",
                          "scst: validation metric"]
    assert axes["xent: loss"].get_yscale() == "log"
    policy = axes["scst: policy-gradient loss"]
    assert policy.get_yscale() == "linear" and min(policy.lines[0].get_ydata()) == -0.1
    labels = {title: [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
              for title, ax in axes.items()}
    assert labels["scst: reward of training captions"] == ["sample_reward", "greedy_reward"]
    assert labels["scst: sampled caption length (tokens)"] == ["caption_length"]
    assert labels["scst: validation metric"] == ["val_cider"]


def test_metrics_png_puts_each_metric_on_an_axis_of_its_range():
    result = EvalResult({"Bleu_4": 0.95, "CIDEr": 9.9, "wer": 1.3, "exact_match": 0.97, "val_loss": 0.3},
                        intervals={"CIDEr": (9.7, 10.2)})
    fig = metrics_figure(result)
    axes = {ax.get_title().split("\n")[0]: ax for ax in fig.axes}
    assert list(axes) == ["Bleu_4", "CIDEr", "wer", "exact_match"]  # a panel each; the loss is not a score
    assert axes["Bleu_4"].get_ylim() == (0.0, 1.0) == axes["exact_match"].get_ylim()
    assert 10.2 < axes["CIDEr"].get_ylim()[1] < 12 and 1.3 < axes["wer"].get_ylim()[1] < 2
    assert metrics_figure(EvalResult({"val_loss": 0.3})) is None


def test_metrics_png_interrupted_while_rendering_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    result = EvalResult({"exact_match": 0.5})
    write_eval_folder(tmp_path, result, {})
    before = (tmp_path / "metrics.png").read_bytes()

    def interrupted(self, target, **kwargs):  # a kill halfway through writing the image
        (open(target, "wb") if isinstance(target, (str, Path)) else target).write(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_eval_folder(tmp_path, EvalResult({"exact_match": 0.9}), {})
    assert (tmp_path / "metrics.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.png", "report.json", "report.md"]


def test_an_undefined_metric_gets_a_panel_without_a_bar():
    fig = metrics_figure(EvalResult({"accuracy": 0.5, "precision": float("nan")}))
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert list(axes) == ["accuracy\n0.5", "precision\nundefined"] and not axes["precision\nundefined"].patches


def test_readme_names_what_a_run_folder_holds(lora_run):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listing = readme.split("## A run folder\n")[1].split("`report.md`.")[0] + "`report.md`"
    names = [name for name in re.findall(r"`([^`]+)`", listing) if not name.startswith("-")]
    assert "checkpoints/" in names and len(names) >= 12
    for name in names:
        pattern = name.rstrip("/").replace("<i>-<name>", "*")
        assert any(lora_run.glob(pattern)) or any(lora_run.rglob(pattern)), f"README names {name}; the run has none"
