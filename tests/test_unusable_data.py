"""Nothing trains, evaluates or converts on no data: sources whose records are all unusable, and files that lack the
columns a reader needs, are one-line errors before anything runs; recipe sources read like `verbo data` does."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from verbovision.cli import main
from verbovision.config.parse import parse_recipe
from verbovision.data.images import load_images
from verbovision.data.records import MISSING_IMAGE, UNREADABLE_IMAGE, skip_entry
from verbovision.data.sources import source_records
from verbovision.errors import ConfigError, DataError
from verbovision.files import read_json
from verbovision.train.run import train_recipe

from .helpers import built_model, kinds, stage, tiny_recipe, write_jsonl

N_IMAGES = 12


@pytest.fixture
def coco_apart(tmp_path) -> Path:
    """The standard COCO layout: annotations/captions_train.json, its images in photos/ (not a folder it guesses)."""
    root = tmp_path / "coco"
    (root / "photos").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for i in range(N_IMAGES):
        Image.new("RGB", (40, 40), (20 * i, 120, 200 - 10 * i)).save(root / "photos" / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"{i:03d}.png"})
        annotations.append({"image_id": i, "id": 100 + i, "caption": f"a square of colour {i}"})
    (root / "annotations/captions_train.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def coco_recipe(root: Path, source: dict, **kw) -> dict:
    return tiny_recipe(root, [stage("s", data={"train": [source]}, **{"max_steps": 4, **kw})])


def test_coco_apart_from_its_images_trains_with_image_root(coco_apart, tmp_path):
    recipe = parse_recipe(coco_recipe(coco_apart, {"path": "annotations/captions_train.json", "image_root": "photos"}))
    records = list(source_records(recipe.stages[0].data.train[0], coco_apart))
    assert [r.images[0] for r in records] == [(coco_apart / f"photos/{i:03d}.png").resolve() for i in range(N_IMAGES)]
    run = tmp_path / "run"
    train_recipe(recipe, run)
    info = read_json(run / "run.json")
    assert info["stages"]["s"]["steps"] == 4 and info["skipped"]["s"] == {}
    # The frozen vision tower encoded every image once into the feature cache: the images were read and used.
    (index,) = (run / "feature_cache").glob("*/index.json")
    assert len(read_json(index)) == N_IMAGES


def test_coco_apart_from_its_images_without_image_root_fails_before_anything_is_built(coco_apart, tmp_path, capsys):
    raw = coco_recipe(coco_apart, {"path": "annotations/captions_train.json"})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(run)]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    annotations = coco_apart / "annotations/captions_train.json"
    assert error.startswith(f"verbo: error: stage s: 0 usable training records in {annotations} "
                            f"({N_IMAGES} skipped: image not found x{N_IMAGES}; e.g. 0: ")
    assert str(coco_apart / "annotations/000.png") in error and "image_root (--image-root)" in error
    # Not even the model is built: its tokenizer would be trained on no caption (and kept by --resume).
    assert not (run / "final").exists() and not (run / "init").exists() and not (run / "stages").exists()


@pytest.mark.parametrize("vision", ["full", "frozen"])  # pixels read per batch / a feature cache built up front
def test_a_stage_with_no_usable_record_fails_before_its_first_step(coco_apart, shapes_data, tmp_path, vision):
    base = built_model(tmp_path, shapes_data)
    raw = coco_recipe(coco_apart, {"path": "annotations/captions_train.json"},
                      train={"vision": vision, "connector": "full", "language": "full"})
    raw["model"] = {"from": str(base)}
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"^stage s: 0 usable training records in .*captions_train\.json "
                                        rf"\({N_IMAGES} skipped: image not found x{N_IMAGES}; e\.g\. 0: "):
        train_recipe(parse_recipe(raw), run)
    assert not (run / "final").exists() and not list(run.glob("stages/*/*"))  # no checkpoint, no feature cache
    assert not (run / "feature_cache").exists()
    rows = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    assert not any("loss" in json.loads(row) for row in rows)


def test_a_source_with_no_usable_record_fails_even_beside_a_good_one(coco_apart, shapes_data, tmp_path):
    raw = tiny_recipe(shapes_data, [stage("s")])
    raw["stages"][0]["data"]["val"].append(str(coco_apart / "annotations/captions_train.json"))
    with pytest.raises(DataError, match=r"^stage s: 0 usable validation records in .*captions_train\.json "
                                        rf"\({N_IMAGES} skipped: image not found x{N_IMAGES}; "):
        train_recipe(parse_recipe(raw), tmp_path / "run")


def test_skipped_records_are_counted_before_training(coco_apart, tmp_path, capsys):
    for i in range(N_IMAGES - 2):  # 2 of 12 images left: most of the source is skipped
        (coco_apart / f"photos/{i:03d}.png").unlink()
    recipe = coco_recipe(coco_apart, {"path": "annotations/captions_train.json", "image_root": "photos"},
                         max_steps=1)
    train_recipe(parse_recipe(recipe), tmp_path / "run")
    out = capsys.readouterr().out
    assert f"warning: stage s: 2 usable training records in {coco_apart / 'annotations/captions_train.json'} " \
           f"({N_IMAGES - 2} skipped: image not found x{N_IMAGES - 2}; e.g. 0: " in out


# ---------------------------------------------------------------------------------------------------- columns


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / name)
    return tmp_path


CASES = {
    "no image column": (["caption", "label"], [["a red square", "x"], ["a blue one", "y"]],
                        "no image column (columns: caption, label); name it with --image-column "
                        "(a recipe source's image_column)"),
    "no caption column": (["file", "image"], [["1", "a.png"], ["2", "b.png"]],
                          "no caption/answer column (columns: file, image); name it with --text-column "
                          "(a recipe source's text_column)"),
    "neither": (["file", "label"], [["a.png", "x"], ["b.png", "y"]],
                "no image column and no caption/answer column (columns: file, label); "
                "name them with --image-column and --text-column (a recipe source's image_column and text_column)"),
}


@pytest.mark.parametrize("command", ["check", "convert", "clean", "split"])
@pytest.mark.parametrize("case", CASES)
def test_a_csv_without_an_image_or_caption_column_is_one_error(photos, tmp_path, capsys, command, case):
    header, rows, message = CASES[case]
    data = write_csv(photos / "data.csv", header, rows)
    out = tmp_path / "out"
    outputs = {"check": [], "convert": ["--out", str(out / "data.json")], "clean": ["--out", str(out)],
               "split": ["--out", str(out)]}
    assert main(["data", command, str(data), *outputs[command]]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"verbo: error: {data}: {message}"]
    assert "usable" not in captured.out and not out.exists()


def test_a_caption_column_of_another_name_is_named_with_text_column(photos, tmp_path, capsys):
    data = write_csv(photos / "data.csv", ["image", "description"], [["a.png", "a red square"], ["b.png", "red"]])
    assert main(["data", "check", str(data)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"verbo: error: {data}: no caption/answer column (columns: description, image); name it with --text-column "
        "(a recipe source's text_column)")
    assert main(["data", "check", str(data), "--text-column", "description"]) == 0
    assert "2 records, 2 usable, 0 with problems" in capsys.readouterr().out
    assert main(["data", "convert", str(data), "--text-column", "description", "--out", str(tmp_path / "d.json")]) == 0
    rows = json.loads((tmp_path / "d.json").read_text())
    assert [row["conversations"][-1]["value"] for row in rows] == ["a red square", "red"]
    # A named column the file does not have: one error too.
    assert main(["data", "convert", str(data), "--text-column", "desc", "--out", str(tmp_path / "e.json")]) == 2
    assert "no caption/answer column 'desc' (columns: description, image)" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


def test_recipe_sources_take_the_reading_keys(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "tables").mkdir()
    write_csv(tmp_path / "tables/rows.csv", ["picture", "description", "ask"], [["a.png", "a red square", "Q?"]])
    source = {"path": "tables/rows.csv", "image_root": ".", "image_column": "picture", "text_column": "description",
              "question_column": "ask"}

    def record_of(source: dict):
        recipe = parse_recipe(tiny_recipe(tmp_path, [stage("s", data={"train": [source]})]))
        (record,) = source_records(recipe.stages[0].data.train[0], tmp_path)
        return record

    record = record_of(source)  # image_root is relative to data_root, like the source's path
    assert record.images == [(tmp_path / "a.png").resolve()] and [t.text for t in record.turns] == ["<image>\nQ?",
                                                                                                 "a red square"]
    assert record_of({**source, "question_column": None, "prompt": "Legenda:"}).turns[0].text == "<image>\nLegenda:"
    with pytest.raises(DataError, match="image not found"):  # without image_root: beside the CSV, where it is not
        record_of({**source, "image_root": None})
    with pytest.raises(ConfigError, match=r"stages\.0\.data\.train\.0\.text_colum: unknown key \(did you mean "
                                          r"'text_column'\?\)"):
        record_of({"path": "tables/rows.csv", "text_colum": "x"})


def test_jsonl_rows_need_not_share_their_keys(photos):
    # The first row lacks a caption, a later one has it: the file has the column, the first row is the problem.
    data = write_jsonl(photos / "d.jsonl", [{"image": "a.png"}, {"image": "b.png", "caption": "blue"}])
    assert kinds(data) == ["empty answer", "ok"]
    data = write_jsonl(photos / "e.jsonl", [{"image": "a.png", "label": 1}, {"image": "b.png", "desc": "blue"}])
    with pytest.raises(DataError, match=r"e\.jsonl: no caption/answer column \(columns: desc, image, label\)"):
        kinds(data)


def test_imagefolder_metadata_without_captions_is_one_error(photos):
    write_jsonl(photos / "metadata.jsonl", [{"file_name": "a.png", "label": 1}, {"file_name": "b.png", "label": 2}])
    with pytest.raises(DataError, match=r"metadata\.jsonl: no caption/answer column \(columns: file_name, label\)"):
        kinds(photos)


# ---------------------------------------------------------------------------------------------------- convert, eval


def test_convert_with_no_usable_record_writes_nothing(coco_apart, tmp_path, capsys):
    annotations = coco_apart / "annotations/captions_train.json"
    out = tmp_path / "out/coco.json"
    assert main(["data", "convert", str(annotations), "--out", str(out)]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"verbo: error: 0 usable records in {annotations} ({N_IMAGES} skipped: image not found "
                            f"x{N_IMAGES}; e.g. 0: ")
    assert not out.parent.exists()
    assert main(["data", "check", str(annotations), "--allow"]) == 2  # problems may be allowed, no usable record not
    assert f"{N_IMAGES} records, 0 usable" in capsys.readouterr().out
    photos = str(coco_apart / "photos")
    assert main(["data", "convert", str(annotations), "--image-root", photos, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == N_IMAGES and rows[0]["image"] == "../coco/photos/000.png"
    # An empty file is no dataset either.
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["data", "convert", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "e.json")]) == 2
    assert "0 usable records in" in capsys.readouterr().err and not (tmp_path / "e.json").exists()


def test_eval_checks_its_data_before_loading_a_model(coco_apart, photos, tmp_path, capsys):
    no_model = tmp_path / "no-model"  # never reached: the data fails first
    annotations = coco_apart / "annotations/captions_train.json"
    assert main(["eval", str(no_model), "--data", str(annotations), "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err
    assert f"{annotations}: record '0': {coco_apart / 'annotations/000.png'}: image not found" in error
    data = write_csv(photos / "data.csv", ["image", "description"], [["a.png", "a red square"]])
    assert main(["eval", str(no_model), "--data", str(data)]) == 2
    error = capsys.readouterr().err
    assert "no caption/answer column (columns: description, image); name it with --text-column" in error
    assert not (tmp_path / "eval").exists()


def test_images_that_exist_but_do_not_decode_stop_the_stage_not_train_it(coco_apart, tmp_path):
    """Files that exist pass the cheap check before training; a trained vision tower reads them only as batches are
    built. Steps whose every example was skipped update nothing, and an epoch of them is an error: the run never
    reports "trained" at loss 0 on no data."""
    for image in (coco_apart / "photos").iterdir():
        image.write_bytes(b"not a png")
    train = {"vision": "full", "connector": "full", "language": "full"}
    recipe = parse_recipe(coco_recipe(coco_apart, {"path": "annotations/captions_train.json", "image_root": "photos"},
                                      train=train, max_steps=None, epochs=2))
    with pytest.raises(DataError, match=r"stage s: an epoch of the training data gave no usable example "
                                        r"\(12 skipped: unreadable image x12"):
        train_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run/final").exists()
    metrics = tmp_path / "run/metrics.jsonl"
    assert not metrics.exists() or "loss" not in metrics.read_text(), "no step logged a loss"


def test_a_resumed_epoch_that_learned_nothing_is_the_same_error(coco_apart, tmp_path):
    """The run stops at the end of its epoch of undecodable images with checkpoints of the epoch's first steps behind
    it; --resume then took those steps as ones that learned (only a count in memory said otherwise), finished the
    epoch on nothing and saved a "trained" model with exit 0."""
    for image in (coco_apart / "photos").iterdir():
        image.write_bytes(b"not a png")
    train = {"vision": "full", "connector": "full", "language": "full"}
    recipe = parse_recipe(coco_recipe(coco_apart, {"path": "annotations/captions_train.json", "image_root": "photos"},
                                      train=train, max_steps=None, epochs=1, save_every=1))
    run = tmp_path / "run"
    for resume in (False, True):
        with pytest.raises(DataError, match=r"stage s: an epoch of the training data gave no usable example "
                                            r"\(12 skipped: unreadable image x12"):
            train_recipe(recipe, run, resume=resume)
        assert list((run / "stages/0-s/checkpoints").glob("step-*")), "the first attempt left checkpoints to resume"
    assert not (run / "final").exists()


def test_a_record_skipped_in_every_epoch_is_counted_once(coco_apart, tmp_path):
    """An image that does not decode, read by a trained vision tower as batches are built, skipped its record in
    each epoch: run.json and report.md counted one bad record once per epoch (3 here, 15 in git-pokemon-lora)."""
    (coco_apart / "photos/000.png").write_bytes(b"not a png")
    train = {"vision": "full", "connector": "full", "language": "full"}
    recipe = parse_recipe(coco_recipe(coco_apart, {"path": "annotations/captions_train.json", "image_root": "photos"},
                                      train=train, max_steps=None, epochs=3))
    train_recipe(recipe, tmp_path / "run")
    (skip,) = read_json(tmp_path / "run/run.json")["skipped"]["s"].values()
    assert skip["count"] == 1 and len(skip["examples"]) == 1, skip


def test_an_unreadable_image_skips_its_item_only(tmp_path):
    """`load_images`, as batches, the feature cache, SCST and `verbo predict` load images: an item keeps all of its
    images or none, and each one left out comes back with its error."""
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    items = {"a": ["red.png"], "b": ["red.png", "missing.png"], "c": [], "d": ["broken.png"], "e": ["red.png"] * 2}
    kept, images, failed = load_images(list(items), lambda item: [tmp_path / name for name in items[item]])
    assert kept == ["a", "c", "e"] and [len(row) for row in images] == [1, 0, 2]
    assert images[0][0].getpixel((0, 0)) == (200, 30, 30)
    assert [(item, type(error)) for item, error in failed] == [("b", DataError), ("d", DataError)]
    assert [skip_entry(item, error)[0] for item, error in failed] == [MISSING_IMAGE, UNREADABLE_IMAGE]
