"""`verbo eval --benchmark` read from a benchmark's hub dataset: for each benchmark that declares one, the official
fixture of the other tests turned into a tiny local copy of that hub dataset (its columns and feature types as its
dataset card lists them, real JPEG bytes, parquet files where the hub repository keeps them), read through the hub
path, and its items compared with what the official reader gives for the official fixture; the CLI end to end on a
tiny model; the cache; the errors. Nothing touches the network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from verbovision.cli import main
from verbovision.errors import ConfigError, DataError
from verbovision.evaluate.benchmarks import BENCHMARKS
from verbovision.evaluate.benchmarks.hub import benchmark_data
from verbovision.evaluate.benchmarks.run import BenchmarkRun, benchmarks_named, load_items, run_benchmarks

from .test_benchmark_scoring import _gqa_fixture, _pope_fixture, _textvqa_fixture
from .test_benchmarks import Replier, textcaps_dir, vqav2_dir

datasets = pytest.importorskip("datasets")
Value, Sequence_, Image_ = datasets.Value, datasets.Sequence, datasets.Image


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    """Our cache and Hugging Face's datasets cache in the test's folder."""
    monkeypatch.setenv("VERBO_CACHE", str(tmp_path / "verbo-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def _cell(path: Path) -> dict:
    return {"bytes": path.read_bytes(), "path": None}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _snapshot(root: Path, features: dict, files: dict[str, list[dict]], readme: str = "") -> Path:
    """A local copy of a hub dataset: each file's rows as parquet at its path (features embedded, as the hub's
    parquet files have them), and the card's config list where the repository has one."""
    for name, rows in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        columns = {key: [row[key] for row in rows] for key in features}
        datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(str(root / name))
    if readme:
        (root / "README.md").write_text(readme)
    return root


# ----------------------------------------------------------------------------------- the hub datasets, as published

POPE = {"id": Value("string"), "question_id": Value("string"), "question": Value("string"),
        "answer": Value("string"), "image_source": Value("string"), "image": Image_(), "category": Value("string")}


def pope_snapshot(official: Path, root: Path, drop: str = "") -> Path:
    """lmms-lab/POPE: one test split of the three subsets' questions, each with its category."""
    rows = []
    for subset in ("adversarial", "popular", "random"):  # the hub's order; the files are read back in POPE's
        for row in _lines(official / f"coco_pope_{subset}.json"):
            rows.append({"id": str(len(rows)), "question_id": str(row["question_id"]), "question": row["text"],
                         "answer": row["label"], "image_source": Path(row["image"]).stem,
                         "image": _cell(official / "val2014" / row["image"]), "category": subset})
    features = {key: kind for key, kind in POPE.items() if key != drop}
    return _snapshot(root, features, {"data/test-00000-of-00001.parquet": rows})


VQA_ANSWER = {"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}
VQAV2 = {"question_type": Value("string"), "multiple_choice_answer": Value("string"), "answers": [VQA_ANSWER],
         "image_id": Value("int64"), "answer_type": Value("string"), "question_id": Value("int64"),
         "question": Value("string"), "image": Image_()}


def vqav2_snapshot(official: Path, root: Path) -> Path:
    """lmms-lab/VQAv2: validation (questions with their annotations) and testdev (questions only) splits."""
    annotations = {a["question_id"]: a for a in
                   json.loads((official / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]}
    files = {}
    for split, subset, images in (("validation", "val2014", "val2014"), ("testdev", "test-dev2015", "test2015")):
        questions = json.loads((official / f"v2_OpenEnded_mscoco_{subset}_questions.json").read_text())["questions"]
        files[f"data/{split}-00000-of-00001.parquet"] = [
            {**dict.fromkeys(("question_type", "multiple_choice_answer", "answers", "answer_type")),
             **annotations.get(q["question_id"], {}), **q,
             "image": _cell(official / images / f"COCO_{images}_{q['image_id']:012d}.jpg")} for q in questions]
    return _snapshot(root, VQAV2, files)


TEXTVQA = {"image_id": Value("string"), "question_id": Value("int32"), "question": Value("string"),
           "question_tokens": Sequence_(Value("string")), "image": Image_(), "image_width": Value("int32"),
           "image_height": Value("int32"), "flickr_original_url": Value("string"),
           "flickr_300k_url": Value("string"), "answers": Sequence_(Value("string")),
           "image_classes": Sequence_(Value("string")), "set_name": Value("string"),
           "ocr_tokens": Sequence_(Value("string"))}


def textvqa_snapshot(official: Path, root: Path) -> Path:
    """lmms-lab/textvqa: the validation split, one row per question with its image and OCR tokens."""
    rows = [{**row, "question_tokens": row["question"].split(), "image_width": 4, "image_height": 4,
             "flickr_original_url": "", "flickr_300k_url": "", "ocr_tokens": ["3310"],
             "image": _cell(official / "train_images" / f"{row['image_id']}.jpg")}
            for row in json.loads((official / "TextVQA_0.5.1_val.json").read_text())["data"]]
    return _snapshot(root, TEXTVQA, {"data/validation-00000-of-00001.parquet": rows})


TEXTCAPS = {"question_id": Value("string"), "question": Value("string"), "image": Image_(),
            "image_id": Value("string"), "image_classes": Sequence_(Value("string")),
            "flickr_original_url": Value("string"), "flickr_300k_url": Value("string"),
            "image_width": Value("int64"), "image_height": Value("int64"), "set_name": Value("string"),
            "image_name": Value("string"), "image_path": Value("string"), "caption_id": Sequence_(Value("int64")),
            "caption_str": Sequence_(Value("string")), "reference_strs": Sequence_(Value("string"))}


def textcaps_snapshot(official: Path, root: Path) -> Path:
    """lmms-lab/TextCaps: the val split, one row per image with its captions and reference_strs."""
    by_image: dict[str, dict] = {}
    for row in json.loads((official / "TextCaps_0.1_val.json").read_text())["data"]:
        image = by_image.setdefault(row["image_id"], {
            "question_id": "", "question": "", "image_classes": [], "flickr_original_url": "",
            "flickr_300k_url": "", "image_width": 32, "image_height": 32, "caption_id": [], "caption_str": [],
            "image": _cell(official / "train_images" / f"{row['image_id']}.jpg"),
            **{key: row[key] for key in ("image_id", "set_name", "image_name", "image_path", "reference_strs")}})
        image["caption_id"].append(row["caption_id"])
        image["caption_str"].append(row["caption_str"])
    return _snapshot(root, TEXTCAPS, {"data/val-00000-of-00001.parquet": list(by_image.values())})


GQA_TYPES = {"structural": Value("string"), "semantic": Value("string"), "detailed": Value("string")}
GQA_QUESTIONS = {"id": Value("string"), "imageId": Value("string"), "question": Value("string"),
                 "answer": Value("string"), "fullAnswer": Value("string"), "isBalanced": Value("bool"),
                 "types": GQA_TYPES}
GQA_CARD = """---
configs:
- config_name: testdev_balanced_images
  data_files:
  - split: testdev
    path: testdev_balanced_images/testdev-*
- config_name: testdev_balanced_instructions
  data_files:
  - split: testdev
    path: testdev_balanced_instructions/testdev-*
---
"""


def gqa_snapshot(official: Path, root: Path) -> Path:
    """lmms-lab/GQA: questions and images as separate configs, each a folder of parquet files."""
    questions = json.loads((official / "testdev_balanced_questions.json").read_text())
    images = [{"id": path.stem, "image": _cell(path)} for path in sorted((official / "images").iterdir())]
    _snapshot(root, {"id": Value("string"), "image": Image_()},
              {"testdev_balanced_images/testdev-00000-of-00001.parquet": images})
    return _snapshot(root, GQA_QUESTIONS, {"testdev_balanced_instructions/testdev-00000-of-00001.parquet":
                                           [{"id": qid, **row} for qid, row in questions.items()]}, GQA_CARD)


HUB_CASES = {  # benchmark -> (official fixture, split, its hub snapshot)
    "pope": (_pope_fixture, "test", pope_snapshot),
    "vqav2": (vqav2_dir, "val", vqav2_snapshot),
    "vqav2 test-dev": (vqav2_dir, "test-dev", vqav2_snapshot),
    "textvqa": (_textvqa_fixture, "val", textvqa_snapshot),
    "textcaps": (textcaps_dir, "val", textcaps_snapshot),
    "gqa": (_gqa_fixture, "testdev", gqa_snapshot),
}


def _what(item) -> tuple:
    return item.id, item.prompt, item.references, item.group, dict(item.meta)


@pytest.mark.parametrize("case", HUB_CASES)
def test_a_hub_copy_reads_as_the_official_files(tmp_path, case):
    build, split, snapshot = HUB_CASES[case]
    benchmark = BENCHMARKS[case.split()[0]]
    (tmp_path / "official").mkdir()
    build(tmp_path / "official")
    official = benchmark.read(tmp_path / "official", split)
    items, origin = load_items(benchmark, snapshot(tmp_path / "official", tmp_path / "hub"), split, None)
    assert [_what(item) for item in items] == [_what(item) for item in official]
    for ours, theirs in zip(items, official):  # the image's bytes as they were: nothing re-encoded
        assert ours.image.read_bytes() == theirs.image.read_bytes()
        Image.open(ours.image).load()
    assert origin["hub"]["id"] == str((tmp_path / "hub").resolve()) and origin["hub"]["fingerprint"]


def test_the_written_layout_is_kept_and_reused_while_the_dataset_is_the_same(tmp_path):
    _pope_fixture(tmp_path / "official")
    snapshot = pope_snapshot(tmp_path / "official", tmp_path / "hub")
    first = benchmark_data(BENCHMARKS["pope"], snapshot, "test")
    assert first.folder.is_relative_to(tmp_path / "verbo-cache/benchmarks/pope/hub/default/test")
    marker = first.folder / "coco_pope_random.json"
    marker.write_text(marker.read_text())  # touched: a second read must not write the folder again
    before = marker.stat().st_mtime_ns
    again = benchmark_data(BENCHMARKS["pope"], snapshot, "test")
    assert again == first and marker.stat().st_mtime_ns == before
    assert [p.name for p in first.folder.parent.iterdir()] == [first.folder.name]  # no partial folder left


def test_official_files_are_read_where_they_are(tmp_path):
    _pope_fixture(tmp_path)
    source = benchmark_data(BENCHMARKS["pope"], tmp_path, "test")
    assert source.folder == tmp_path and source.origin == {"data_dir": str(tmp_path.resolve())}


def test_verbo_eval_benchmark_on_a_hub_copy_end_to_end(plain_model_dir, tmp_path, capsys):
    _pope_fixture(tmp_path / "official")
    snapshot = pope_snapshot(tmp_path / "official", tmp_path / "hub")
    out = tmp_path / "out"
    assert main(["eval", str(plain_model_dir), "--benchmark", "pope", "--data-dir", str(snapshot), "--limit", "4",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "pope       accuracy" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())["pope"]
    assert summary["records"] == 4 and set(summary["metrics"]) >= {"accuracy", "f1"}
    assert summary["data"]["id"] == str(snapshot.resolve()) and summary["data"]["split"] == "test"
    settings = json.loads((out / "pope/settings.json").read_text())
    assert settings["hub"] == summary["data"] and "data_dir" not in settings
    rows = [json.loads(line) for line in (out / "pope/predictions.jsonl").read_text().splitlines()]
    assert all(Path(row["image"]).is_relative_to(tmp_path / "verbo-cache") for row in rows)


# --------------------------------------------------------------------------------------------------------- errors


def _one_line_error(capsys, *arguments: str) -> str:
    """The error `verbo eval` ends with: one line (datasets' progress bars may come before it)."""
    capsys.readouterr()
    assert main(["eval", "no-model", *arguments]) == 2
    printed = capsys.readouterr().err
    error = printed.strip().replace("\r", "\n").splitlines()[-1]
    assert error.startswith("verbo: error: ") and printed.count("verbo: error") == 1 and "Traceback" not in printed
    return error


def test_a_benchmark_without_a_hub_dataset_asks_for_its_official_files(capsys):
    error = _one_line_error(capsys, "--benchmark", "chair")
    assert "chair has no hub dataset; give --data-dir with its official files: annotations/instances_val2014.json" \
        in error
    with pytest.raises(DataError, match="textvqa: split 'val-ocr' is not in its hub dataset lmms-lab-encoder/textvqa"):
        benchmark_data(BENCHMARKS["textvqa"], None, "val-ocr")


def test_a_hub_dataset_offline_and_not_cached_is_named(capsys):
    error = _one_line_error(capsys, "--benchmark", "pope")
    assert "pope: cannot load lmms-lab-encoder/POPE, split test (" in error and "give --data-dir" in error
    assert "there is no local folder" not in error  # the benchmark's own hub dataset
    error = _one_line_error(capsys, "--benchmark", "pope", "--data-dir", "lmms-lab/POPE")  # or a mistyped folder
    assert "cannot load lmms-lab/POPE, split test" in error and "; there is no local folder lmms-lab/POPE either; " \
        in error


def test_a_hub_copy_missing_a_column_names_it(tmp_path, capsys):
    _pope_fixture(tmp_path / "official")
    snapshot = pope_snapshot(tmp_path / "official", tmp_path / "hub", drop="category")
    error = _one_line_error(capsys, "--benchmark", "pope", "--data-dir", str(snapshot))
    assert f"pope: {snapshot}, split test, has no column 'category'; pope reads question_id, question, answer, " \
           "image_source, image, category as lmms-lab-encoder/POPE has them" in error


def test_one_hub_id_for_several_benchmarks_is_refused(tmp_path, capsys):
    error = _one_line_error(capsys, "--benchmark", "pope,gqa", "--data-dir", "lmms-lab/POPE")
    assert "--data-dir lmms-lab/POPE: a hub dataset id holds one benchmark; give one benchmark with it, or omit " \
           "--data-dir to read pope, gqa each from its own hub dataset" in error
    with pytest.raises(ConfigError, match="a hub dataset id holds one benchmark"):
        run_benchmarks(BenchmarkRun(benchmarks_named("pope,gqa"), "lmms-lab/POPE", tmp_path / "out"), Replier)


def test_a_training_stage_reads_its_eval_benchmark_from_a_hub_copy(tmp_path, shapes_data):
    from verbovision.config.parse import parse_recipe
    from verbovision.train.setup import benchmark_items

    from .helpers import stage, tiny_recipe

    _pope_fixture(tmp_path / "official")
    snapshot = pope_snapshot(tmp_path / "official", tmp_path / "pope-hub")
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("s", eval_benchmarks=[{"name": "pope",
                                                                                  "data_dir": str(snapshot)}])]))
    [(benchmark, items)] = benchmark_items(recipe, recipe.stages[0])
    official, _ = load_items(BENCHMARKS["pope"], tmp_path / "official", None, 100)
    assert benchmark.name == "pope" and [_what(item) for item in items] == [_what(item) for item in official]
    # OWNER/NAME under data_root is that folder, wherever the run starts from, not a hub dataset of that name
    shutil.copytree(snapshot, tmp_path / "root/bench/pope")
    recipe = parse_recipe(tiny_recipe(tmp_path / "root", [stage("s", eval_benchmarks=[{"name": "pope",
                                                                                       "data_dir": "bench/pope"}])]))
    [(_, items)] = benchmark_items(recipe, recipe.stages[0])
    assert [_what(item) for item in items] == [_what(item) for item in official]
