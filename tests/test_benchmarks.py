"""`verbo eval --benchmark`: each benchmark read from a tiny fixture in its exact official layout, scored through
`Benchmark.score` with given replies against values derived by hand from the official rules, its submission file;
the runner's sampling and resuming; the CLI end to end on a tiny model, and its errors."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from verbovision.cli import main
from verbovision.errors import ConfigError, DataError
from verbovision.evaluate.benchmarks import BENCHMARKS
from verbovision.evaluate.benchmarks import run as runner
from verbovision.evaluate.benchmarks.run import (BenchmarkRun, benchmarks_named, compare_benchmarks, run_benchmarks,
                                                 sample)
from verbovision.infer.options import Generation


def _image(path: Path, color: str = "red") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path, format="JPEG")


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _replies(items, by_position: list[str]) -> dict[str, str]:
    return {item.id: reply for item, reply in zip(items, by_position, strict=True)}


# ------------------------------------------------------------------------------------------- fixtures as published

RED = "a red circle on a white background"
BLUE = "two blue squares next to each other"


def _karpathy_image(imgid: int, split: str, filename: str, sentences: list[str], **extra) -> dict:
    """One image of Karpathy's dataset_*.json: sentences with tokens, raw, imgid, sentid."""
    return {"imgid": imgid, "split": split, "filename": filename, "sentids": list(range(len(sentences))),
            "sentences": [{"tokens": s.split(), "raw": s, "imgid": imgid, "sentid": k}
                          for k, s in enumerate(sentences)],
            **extra}


def coco_karpathy_dir(root: Path) -> Path:
    """dataset_coco.json with three test images (val2014/), one train image (train2014/) in between."""
    images = [
        _karpathy_image(0, "test", "COCO_val2014_000000000042.jpg", [RED] * 5, filepath="val2014", cocoid=42),
        _karpathy_image(1, "train", "COCO_train2014_000000000007.jpg", ["a cat"] * 5, filepath="train2014", cocoid=7),
        _karpathy_image(2, "test", "COCO_val2014_000000000043.jpg", [BLUE] * 5, filepath="val2014", cocoid=43),
        _karpathy_image(3, "test", "COCO_val2014_000000000044.jpg",
                        ["a green triangle", "one green triangle", "a small green triangle", "green triangle on grey",
                         "a triangle that is green"], filepath="val2014", cocoid=44),
    ]
    _json(root / "dataset_coco.json", {"images": images, "dataset": "coco"})
    for image in images:
        _image(root / image["filepath"] / image["filename"])
    return root


VQA_ANSWERS = {
    1: (["yes"] * 10, "yes/no", "is the"),
    2: (["2"] * 2 + ["3"] * 8, "number", "how many"),
    3: (["blue"] * 10, "other", "what color is the"),
}


def vqav2_dir(root: Path) -> Path:
    """VQAv2 val (questions + annotations, val2014/) and test-dev (questions, test2015/), as visualqa.org
    publishes them."""
    questions = [{"image_id": 9, "question": f"Question {qid}?", "question_id": qid} for qid in VQA_ANSWERS]
    _json(root / "v2_OpenEnded_mscoco_val2014_questions.json",
          {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014",
           "questions": questions})
    annotations = [{"question_type": qtype, "multiple_choice_answer": answers[-1], "image_id": 9, "answer_type": atype,
                    "question_id": qid, "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                                    for k, a in enumerate(answers)]}
                   for qid, (answers, atype, qtype) in VQA_ANSWERS.items()]
    _json(root / "v2_mscoco_val2014_annotations.json",
          {"info": {}, "license": {}, "data_subtype": "val2014", "annotations": annotations})
    _json(root / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
          {"data_subtype": "test-dev2015", "questions": [{"image_id": 11, "question": "What is it?",
                                                          "question_id": 110}]})
    _image(root / "val2014/COCO_val2014_000000000009.jpg")
    _image(root / "test2015/COCO_test2015_000000000011.jpg")
    return root


def flickr30k_dir(root: Path) -> Path:
    """dataset_flickr30k.json (no filepath, no cocoid: the Flickr photo id is the file name) and flickr30k-images/."""
    images = [_karpathy_image(0, "test", "1000092795.jpg", [RED] * 5),
              _karpathy_image(1, "train", "10002456.jpg", ["a dog"] * 5),
              _karpathy_image(2, "test", "1000268201.jpg", [BLUE] * 5)]
    _json(root / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    for image in images:
        _image(root / "flickr30k-images" / image["filename"])
    return root


def textcaps_dir(root: Path) -> Path:
    """TextCaps_0.1_val.json: a row per caption, each carrying its image's reference_strs; train_images/."""
    def row(image_id: str, caption_id: int, references: list[str]) -> dict:
        return {"image_id": image_id, "image_name": image_id, "image_path": f"train/{image_id}.jpg",
                "caption_id": caption_id, "caption_str": references[0], "caption_tokens": references[0].split(),
                "reference_strs": references, "reference_tokens": [r.split() for r in references], "set_name": "val"}

    data = [row("0054c91397f2fe05", 1, [RED] * 5), row("0054c91397f2fe05", 2, [RED] * 5),
            row("011e7e629fb9ae7b", 3, [BLUE] * 5)]
    _json(root / "TextCaps_0.1_val.json", {"dataset_type": "val", "dataset_name": "textcaps",
                                           "dataset_version": "0.1", "data": data})
    for image_id in ("0054c91397f2fe05", "011e7e629fb9ae7b"):
        _image(root / "train_images" / f"{image_id}.jpg")
    return root


NOCAPS = [("in-domain", "a red circle on white"), ("in-domain", "two blue squares side by side"),
          ("near-domain", "one green triangle near grey"), ("near-domain", "a yellow star in the sky"),
          ("out-domain", "a purple hexagon and black dots"), ("out-domain", "an orange oval over brown sand")]


def nocaps_dir(root: Path) -> Path:
    """nocaps_val_4500_captions.json (COCO caption format, each image with its domain; 10 captions an image) and
    val/, as nocaps publishes them."""
    images = [{"id": k, "file_name": f"{k:016x}.jpg", "height": 32, "width": 32, "domain": domain,
               "open_images_id": f"{k:016x}", "coco_url": f"https://s3.amazonaws.com/nocaps/val/{k:016x}.jpg"}
              for k, (domain, _) in enumerate(NOCAPS)]
    annotations = [{"image_id": k, "id": 10 * k + j, "caption": caption}
                   for k, (_, caption) in enumerate(NOCAPS) for j in range(10)]
    _json(root / "nocaps_val_4500_captions.json", {"licenses": [], "info": {}, "images": images,
                                                   "annotations": annotations})
    for image in images:
        _image(root / "val" / image["file_name"])
    return root


# ------------------------------------------------------------------------------------------------- coco-karpathy


def _set_first(folder: Path, name: str, table: str, key: str, value) -> Path:
    path = folder / name
    data = json.loads(path.read_text())
    data[table][0][key] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("benchmark, make, name, table, key, value, where, kind", [
    ("coco-karpathy", "coco_karpathy_dir", "dataset_coco.json", "images", "sentences", "a cat", "image 1", "a list"),
    ("coco-karpathy", "coco_karpathy_dir", "dataset_coco.json", "images", "filename", 42, "image 1", "a string"),
    ("nocaps", "nocaps_dir", "nocaps_val_4500_captions.json", "annotations", "caption", ["a"], "annotation 1",
     "a string"),
    ("nocaps", "nocaps_dir", "nocaps_val_4500_captions.json", "images", "id", "0", "image 1", "an integer"),
    ("textcaps", "textcaps_dir", "TextCaps_0.1_val.json", "data", "reference_strs", "a red", "data record 1",
     "a list"),
])
def test_captioning_entries_of_the_wrong_kind_are_named(tmp_path, benchmark, make, name, table, key, value, where,
                                                        kind):
    """A value the reader would concatenate, format or sort, of the wrong kind: one line naming the file, the entry
    and the key, not a TypeError traceback (or, for a string of references, each letter a reference)."""
    path = _set_first(globals()[make](tmp_path), name, table, key, value)
    split = "val" if benchmark in ("nocaps", "textcaps") else "test"
    with pytest.raises(DataError, match=re.escape(f"{path}: {where}: {key!r} is {value!r}, not {kind}")):
        BENCHMARKS[benchmark].read(tmp_path, split)



def test_coco_karpathy_reads_the_test_split_in_file_order(tmp_path):
    items = BENCHMARKS["coco-karpathy"].read(coco_karpathy_dir(tmp_path), "test")
    assert [item.id for item in items] == ["42", "43", "44"]
    assert items[0].image == tmp_path / "val2014/COCO_val2014_000000000042.jpg"
    assert items[0].prompt == "Describe the image briefly." and items[0].references == (RED,) * 5
    assert [item.id for item in BENCHMARKS["coco-karpathy"].read(tmp_path, "train")] == ["7"]


def test_coco_karpathy_scores_as_cocoevalcap(tmp_path):
    benchmark = BENCHMARKS["coco-karpathy"]
    items = benchmark.read(coco_karpathy_dir(tmp_path), "test")
    result = benchmark.score(items, _replies(items, [RED, BLUE, "zzz qqq"]))
    # CIDEr-D of a caption equal to all 5 references: each n-gram vector equals the reference's, so every n's cosine
    # is 1 and the length penalty exp(0) = 1: 10 * mean over n of 1 = 10. A caption sharing no word with its
    # references: every cosine 0, so 0. Mean over the 3 images: 20 / 3.
    assert result.per_item["CIDEr"] == pytest.approx({"42": 10.0, "43": 10.0, "44": 0.0})
    assert result.values["CIDEr"] == pytest.approx(20 / 3)
    # ROUGE-L: an exact reference has LCS = its length, so P = R = F = 1; no common word: 0. Mean: 2/3.
    assert result.values["ROUGE_L"] == pytest.approx(2 / 3)
    # BLEU-1 (corpus): matched unigrams / hypothesis unigrams = (7 + 7 + 0) / (7 + 7 + 2); the closest reference
    # lengths (7, 7, 3) sum to 17 > 16 hypothesis words, so the brevity penalty is exp(1 - 17/16).
    assert result.values["Bleu_1"] == pytest.approx(14 / 16 * math.exp(1 - 17 / 16), rel=1e-6)

    submission = json.loads(benchmark.write_submission(items, _replies(items, ["a", "b", "c"]), tmp_path).read_text())
    assert submission == [{"image_id": 42, "caption": "a"}, {"image_id": 43, "caption": "b"},
                          {"image_id": 44, "caption": "c"}]


# --------------------------------------------------------------------------------------------------------- vqav2


def test_vqav2_reads_questions_with_their_ten_answers_and_the_llava_prompt(tmp_path):
    items = BENCHMARKS["vqav2"].read(vqav2_dir(tmp_path), "val")
    assert [item.id for item in items] == ["1", "2", "3"]
    assert items[1].prompt == "Question 2?\nAnswer the question using a single word or phrase."
    assert items[1].references == ("2",) * 2 + ("3",) * 8 and items[1].group == "number"
    assert items[0].image == tmp_path / "val2014/COCO_val2014_000000000009.jpg"


def test_vqav2_entries_of_the_wrong_kind_are_named(tmp_path):
    root = vqav2_dir(tmp_path)
    path = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    for key, value, kind in (("image_id", "9", "an integer"), ("question", 5, "a string")):
        data = json.loads(path.read_text())
        data["questions"][1][key] = value
        path.write_text(json.dumps(data))
        with pytest.raises(DataError, match=re.escape(f"{path}: question 2: {key!r} is {value!r}, not {kind}")):
            BENCHMARKS["vqav2"].read(root, "val")
        vqav2_dir(tmp_path)


def test_vqav2_val_scores_as_vqaeval_on_the_evalai_processed_answer(tmp_path):
    benchmark = BENCHMARKS["vqav2"]
    items = benchmark.read(vqav2_dir(tmp_path), "val")
    result = benchmark.score(items, _replies(items, ["Yes.", "two", "red"]))
    # "Yes." -> EvalAI processing -> "yes"; all 10 humans said "yes": every leave-one-out subset has 9 matches,
    # min(1, 9/3) = 1, so 1.
    # "two" -> "2" (number words become digits); 2 of 10 humans said "2": leaving out one of those two leaves 1 match
    # (1/3), leaving out any of the other 8 leaves 2 (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    # "red" against ten "blue": 0.
    assert result.per_item["vqa"] == pytest.approx({"1": 1.0, "2": 0.6, "3": 0.0})
    assert result.values["vqa"] == pytest.approx(1.6 / 3)
    assert result.details["vqa[answer_type=number]"] == pytest.approx(0.6)
    assert result.details["vqa (vqaEval.py %)"] == 53.33

    path = benchmark.write_submission(items, _replies(items, ["Yes.", "two", "red"]), tmp_path)
    assert path.name == "vqa_OpenEnded_mscoco_val2014_verbo_results.json"
    assert json.loads(path.read_text()) == [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "2"},
                                            {"question_id": 3, "answer": "red"}]


def test_vqav2_test_dev_writes_the_submission_and_says_where_to_send_it(tmp_path):
    benchmark = BENCHMARKS["vqav2"]
    items = benchmark.read(vqav2_dir(tmp_path), "test-dev")
    assert [item.id for item in items] == ["110"] and items[0].references == ()
    assert items[0].image == tmp_path / "test2015/COCO_test2015_000000000011.jpg"
    result = benchmark.score(items, {"110": "A Dog"})
    assert result.values == {}
    assert result.skipped["vqa"] == ("no public answers; submit vqa_OpenEnded_mscoco_test-dev2015_verbo_results.json "
                                     "to EvalAI (eval.ai, VQA Challenge, test-dev phase)")
    path = benchmark.write_submission(items, {"110": "A Dog"}, tmp_path)
    assert json.loads(path.read_text()) == [{"question_id": 110, "answer": "dog"}]


# ------------------------------------------------------------------------------------------ nocaps, flickr, textcaps


def test_nocaps_scores_all_images_and_each_domain_on_its_own(tmp_path, no_java):
    benchmark = BENCHMARKS["nocaps"]
    items = benchmark.read(nocaps_dir(tmp_path), "val")
    assert [item.group for item in items] == [domain for domain, _ in NOCAPS]
    assert items[0].image == tmp_path / "val/0000000000000000.jpg" and len(items[0].references) == 10
    replies = [NOCAPS[0][1], NOCAPS[1][1], NOCAPS[2][1], "zzz", "zzz qqq", "qqq"]
    result = benchmark.score(items, _replies(items, replies))
    # A caption equal to all its references scores CIDEr-D 10 (every cosine 1, no length penalty) in any set where
    # some of its n-grams of each length are rarer than in every image (idf > 0); one sharing no word scores 0.
    # Overall: 10, 10, 10, 0, 0, 0 -> 5. In-domain: both perfect -> 10; near-domain: 10 and 0 -> 5; out-domain: 0.
    assert result.values["CIDEr"] == pytest.approx(5.0)
    assert result.values["CIDEr[domain=in-domain]"] == pytest.approx(10.0)
    assert result.values["CIDEr[domain=near-domain]"] == pytest.approx(5.0)
    assert result.values["CIDEr[domain=out-domain]"] == pytest.approx(0.0)
    # ROUGE-L per domain, in the details: 1 for an exact reference, 0 without a common word.
    assert result.details["ROUGE_L[domain=near-domain]"] == pytest.approx(0.5)
    assert "CIDEr[domain=in-domain]" in result.intervals


def test_a_domain_of_one_image_scores_cider_0_as_the_per_domain_evaluation_does(tmp_path, no_java):
    benchmark = BENCHMARKS["nocaps"]
    items = [item for item in benchmark.read(nocaps_dir(tmp_path), "val") if item.id in ("0", "1", "2")]
    result = benchmark.score(items, _replies(items, [NOCAPS[0][1], NOCAPS[1][1], NOCAPS[2][1]]))
    # near-domain alone is one image: each of its n-grams is in 1 of 1 documents, idf = log(1/1) = 0, so its vectors
    # are empty and CIDEr-D is 0 for a perfect caption, which scores 10 among all three images.
    assert result.per_item["CIDEr"]["2"] == pytest.approx(10.0)
    assert result.values["CIDEr[domain=near-domain]"] == 0.0


def test_flickr30k_reads_karpathys_test_split_with_flickr_ids(tmp_path, no_java):
    benchmark = BENCHMARKS["flickr30k"]
    items = benchmark.read(flickr30k_dir(tmp_path), "test")
    assert [item.id for item in items] == ["1000092795", "1000268201"]
    assert items[0].image == tmp_path / "flickr30k-images/1000092795.jpg"
    assert items[0].prompt == "Provide a one-sentence caption for the provided image."
    result = benchmark.score(items, _replies(items, [RED, "zzz"]))
    assert result.per_item["CIDEr"] == pytest.approx({"1000092795": 10.0, "1000268201": 0.0})  # as for COCO above
    path = benchmark.write_submission(items, _replies(items, ["a", "b"]), tmp_path)
    assert json.loads(path.read_text()) == [{"image_id": 1000092795, "caption": "a"},
                                            {"image_id": 1000268201, "caption": "b"}]


def test_textcaps_has_one_item_per_image_with_its_reference_strs(tmp_path, no_java):
    benchmark = BENCHMARKS["textcaps"]
    items = benchmark.read(textcaps_dir(tmp_path), "val")
    assert [item.id for item in items] == ["0054c91397f2fe05", "011e7e629fb9ae7b"]
    assert items[0].references == (RED,) * 5 and items[0].image == tmp_path / "train_images/0054c91397f2fe05.jpg"
    result = benchmark.score(items, _replies(items, [RED, BLUE]))
    assert result.values["CIDEr"] == pytest.approx(10.0) and result.values["ROUGE_L"] == pytest.approx(1.0)
    path = benchmark.write_submission(items, _replies(items, ["a", "b"]), tmp_path)
    assert json.loads(path.read_text()) == [{"image_id": "0054c91397f2fe05", "caption": "a"},
                                            {"image_id": "011e7e629fb9ae7b", "caption": "b"}]


# ------------------------------------------------------------------------------------------------------- runner


@pytest.fixture
def no_java(monkeypatch):
    """Caption benchmarks scored without METEOR, whose Java program takes seconds to start, where the test is about
    something else."""
    from verbovision.evaluate.benchmarks import captioning

    monkeypatch.setattr(captioning, "METRICS", ("bleu", "rouge_l", "cider"))


class Replier:
    """A generator that answers every prompt with its position in the calls, and counts what it was asked."""

    def __init__(self, fail_after: int | None = None):
        self.asked, self.fail_after = 0, fail_after

    def generate_details(self, records, options, batch_size):
        if self.fail_after is not None and self.asked >= self.fail_after:
            raise KeyboardInterrupt
        self.asked += len(records)
        return [Generation(f"reply {record.turns[0].text[-12:]}", 5, 3, "stop") for record in records]


def test_limit_draws_a_seeded_sample_kept_in_order():
    items = list(range(100))
    chosen = sample(items, 10)
    assert chosen == sorted(chosen) and len(set(chosen)) == 10 and chosen == sample(items, 10)
    assert chosen != items[:10]  # a sample of the whole split, not its first items
    assert sample(items, None) == items and sample(items, 500) == items


def test_an_interrupted_run_resumes_generating_only_what_is_missing(tmp_path, monkeypatch, no_java):
    monkeypatch.setattr(runner, "CHUNK_ITEMS", 2)
    data = vqav2_dir(coco_karpathy_dir(tmp_path / "data"))
    run = BenchmarkRun(benchmarks_named("coco-karpathy,vqav2"), data, tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        run_benchmarks(run, lambda: Replier(fail_after=2))  # one chunk of coco-karpathy kept, then interrupted
    assert not (tmp_path / "out/coco-karpathy/report.md").exists()
    resumed = Replier()
    reports = run_benchmarks(run, lambda: resumed)
    assert resumed.asked == 1 + 3  # the third caption, then vqav2's three questions
    whole = run_benchmarks(BenchmarkRun(run.benchmarks, data, tmp_path / "whole"), Replier)
    for name in ("coco-karpathy", "vqav2"):
        assert (tmp_path / "out" / name / "predictions.jsonl").read_text() == \
            (tmp_path / "whole" / name / "predictions.jsonl").read_text()
        assert reports[name]["metrics"] == whole[name]["metrics"]
        assert not (tmp_path / "out" / name / "generated").exists()

    untouched = Replier()
    run_benchmarks(run, lambda: untouched)  # everything finished: nothing generated, no model opened
    assert untouched.asked == 0
    with pytest.raises(DataError, match=r"holds replies of other settings \(items, limit differ\)"):
        run_benchmarks(BenchmarkRun(run.benchmarks, data, tmp_path / "out", limit=2), Replier)


def test_the_summary_lists_every_value_and_why_a_split_has_none(tmp_path):
    data = vqav2_dir(tmp_path / "data")
    run_benchmarks(BenchmarkRun(benchmarks_named("vqav2"), data, tmp_path / "val"), Replier)
    run_benchmarks(BenchmarkRun(benchmarks_named("vqav2"), data, tmp_path / "dev", split="test-dev"), Replier)
    val = json.loads((tmp_path / "val/summary.json").read_text())["vqav2"]
    assert val["split"] == "val" and val["records"] == 3 and set(val["metrics"]) == {"vqa"}
    dev = json.loads((tmp_path / "dev/summary.json").read_text())["vqav2"]
    assert dev["metrics"] == {}
    assert "submit vqa_OpenEnded_mscoco_test-dev2015_verbo_results.json" in dev["skipped"]["vqa"]
    assert dev["submission"] == "vqa_OpenEnded_mscoco_test-dev2015_verbo_results.json"


# ---------------------------------------------------------------------------------------------------------- CLI


def test_verbo_eval_benchmark_end_to_end_and_resumed(plain_model_dir, tmp_path, capsys, monkeypatch, no_java):
    data = vqav2_dir(coco_karpathy_dir(tmp_path / "data"))
    out = tmp_path / "out"
    command = ["eval", str(plain_model_dir), "--benchmark", "coco-karpathy,vqav2", "--data-dir", str(data),
               "--limit", "3", "--out", str(out), "--device", "cpu"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "coco-karpathy  CIDEr" in printed and "vqav2          vqa" in printed

    rows = [json.loads(line) for line in (out / "coco-karpathy/predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["42", "43", "44"]
    assert {"id", "prompt", "prediction", "references", "group"} <= set(rows[0])
    captions = json.loads((out / "coco-karpathy/captions_karpathy_results.json").read_text())
    assert [row["image_id"] for row in captions] == [42, 43, 44]
    assert [row["caption"] for row in captions] == [row["prediction"] for row in rows]
    answers = json.loads((out / "vqav2/vqa_OpenEnded_mscoco_val2014_verbo_results.json").read_text())
    assert [set(row) for row in answers] == [{"question_id", "answer"}] * 3
    report = json.loads((out / "vqav2/report.json").read_text())
    assert report["decoding"]["max_new_tokens"] == 16 and report["records"] == 3
    assert (out / "vqav2/report.md").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"coco-karpathy", "vqav2"} and "CIDEr" in summary["coco-karpathy"]["metrics"]

    # A rerun with the same settings finds both finished: it opens no model and prints the same table.
    monkeypatch.setattr("verbovision.cli.evaluate.load_vlm", lambda args: pytest.fail("the model was opened"))
    before = (out / "vqav2/report.json").stat().st_mtime_ns
    assert main(command) == 0
    assert capsys.readouterr().out == printed
    assert (out / "vqav2/report.json").stat().st_mtime_ns == before


def test_eval_benchmark_compare_scores_both_runs_by_the_benchmarks_rules(plain_model_dir, tmp_path, capsys, no_java):
    data = vqav2_dir(coco_karpathy_dir(tmp_path / "data"))
    out, other = tmp_path / "out", tmp_path / "other"
    command = ["eval", str(plain_model_dir), "--benchmark", "coco-karpathy,vqav2", "--data-dir", str(data),
               "--limit", "3", "--out", str(out), "--device", "cpu"]
    assert main(command) == 0
    shutil.copytree(out, other)
    # The other run answered every VQAv2 question with its most common human answer: accuracy 1 on each item.
    answers = {str(a["question_id"]): Counter(x["answer"] for x in a["answers"]).most_common(1)[0][0]
               for a in json.loads((data / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]}
    rows = [json.loads(line) for line in (other / "vqav2/predictions.jsonl").read_text().splitlines()]
    (other / "vqav2/predictions.jsonl").write_text("".join(
        json.dumps({**row, "prediction": answers[row["id"]]}) + "\n" for row in rows))
    capsys.readouterr()

    assert main([*command, "--compare", str(other)]) == 0
    assert "comparison with" in capsys.readouterr().out
    same = json.loads((out / "coco-karpathy/report.json").read_text())["comparison"]["metrics"]
    assert same and all(m["difference"] == 0 and m["p_value"] == 1 for m in same.values())  # the same replies
    vqa = json.loads((out / "vqav2/report.json").read_text())["comparison"]["metrics"]["vqa"]
    assert vqa["theirs"] == 1 and vqa["difference"] == pytest.approx(vqa["ours"] - 1)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--benchmark", "coco-karpathy", "--data", "x.json"], "--data and --benchmark exclude each other"),
    ([], "nothing to evaluate: give --data FILE"),
    (["--benchmark", "coco"], "--benchmark: 'coco' unknown (did you mean 'coco-karpathy'?); use coco-karpathy,"),
    (["--benchmark", "vqa2"], "--benchmark: 'vqa2' unknown (did you mean 'vqav2'?)"),
    (["--benchmark", "vqav2", "--split", "test"], "--split of vqav2: 'test' unknown (did you mean 'test-dev'?)"),
])
def test_eval_benchmark_argument_errors_are_one_line(tmp_path, capsys, arguments, message):
    data_dir = ["--data-dir", str(vqav2_dir(tmp_path))]
    assert main(["eval", "no-model", *arguments, *(data_dir if "--benchmark" in arguments else [])]) == 2
    error = capsys.readouterr().err
    assert error.startswith("verbo: error: ") and message in error and error.count("\n") == 1


def test_a_missing_official_file_is_named_with_where_it_is_published(tmp_path, capsys):
    assert main(["eval", "no-model", "--benchmark", "coco-karpathy", "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'dataset_coco.json'} not found; expected dataset_coco.json in --data-dir, as Karpathy's " \
           "caption_datasets.zip" in error and error.count("\n") == 1

    coco_karpathy_dir(tmp_path)
    (tmp_path / "val2014/COCO_val2014_000000000043.jpg").unlink()
    assert main(["eval", "no-model", "--benchmark", "coco-karpathy", "--data-dir", str(tmp_path)]) == 2
    assert f"coco-karpathy: image {tmp_path / 'val2014/COCO_val2014_000000000043.jpg'} not found; --data-dir should " \
           "hold dataset_coco.json" in capsys.readouterr().err


def test_every_benchmark_says_where_its_files_prompt_and_scoring_come_from():
    for name, benchmark in BENCHMARKS.items():
        assert benchmark.name == name and benchmark.task in ("caption", "vqa") and benchmark.splits
        assert benchmark.files and benchmark.prompt_source and benchmark.metric and benchmark.reference
    with pytest.raises(ConfigError):
        benchmarks_named(" , ")


@pytest.mark.parametrize(("name", "expected"), [
    ("coco-karpathy", "dataset_coco.json"), ("nocaps", "nocaps_val_4500_captions.json"),
    ("flickr30k", "dataset_flickr30k.json"), ("textcaps", "TextCaps_0.1_val.json"),
    ("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json")])
def test_each_benchmark_names_the_file_it_misses(tmp_path, name, expected):
    with pytest.raises(DataError, match=f"{name}: .*{expected} not found; expected {expected} in --data-dir, as "):
        BENCHMARKS[name].read(tmp_path, BENCHMARKS[name].splits[0])


# --------------------------------------------------------------------------------------------- during training


def test_a_stage_scores_its_eval_benchmarks_at_each_validation(tmp_path, shapes_data, no_java):
    from verbovision.config.parse import parse_recipe
    from verbovision.train.run import train_recipe

    from .helpers import stage, tiny_recipe

    data = vqav2_dir(coco_karpathy_dir(tmp_path / "benchmarks"))
    benchmarks = [{"name": "coco-karpathy", "data_dir": str(data), "limit": 2},
                  {"name": "vqav2", "data_dir": str(data)}]
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("s", max_steps=4, eval_every=2,
                                                          eval_benchmarks=benchmarks)]))
    train_recipe(recipe, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    validations = [row for row in rows if "val_loss" in row]
    assert [row["step"] for row in validations] == [2, 4]
    for row in validations:  # logged beside the loss, each a value of its benchmark's own scoring
        assert {"coco-karpathy/CIDEr", "coco-karpathy/Bleu_4", "vqav2/vqa"} <= set(row)
        assert 0 <= row["vqav2/vqa"] <= 1


def test_eval_benchmarks_are_checked_before_training(tmp_path, shapes_data):
    from verbovision.config.parse import parse_recipe
    from verbovision.train.run import train_recipe

    from .helpers import stage, tiny_recipe

    no_validation = stage("s", eval_benchmarks=[{"name": "vqav2", "data_dir": "x"}])
    no_validation["data"] = {"train": no_validation["data"]["train"]}
    with pytest.raises(ConfigError, match=r"stages\.0\.eval_benchmarks: scored at each validation, which needs "
                                          "data.val"):
        parse_recipe(tiny_recipe(shapes_data, [no_validation]))
    misspelt = parse_recipe(tiny_recipe(shapes_data, [stage("s", eval_benchmarks=[{"name": "vqa2", "data_dir": "x"}])]))
    with pytest.raises(ConfigError, match="did you mean 'vqav2'"):
        train_recipe(misspelt, tmp_path / "run")
    assert not (tmp_path / "run/metrics.jsonl").exists()


def test_compare_with_a_file_that_is_not_a_benchmark_run_is_one_line(tmp_path):
    data = coco_karpathy_dir(tmp_path / "data")
    for side, text in (("out", '{"id": "42", "prediction": "a"}\n'), ("other", "not json\n")):
        (tmp_path / side / "coco-karpathy").mkdir(parents=True)
        (tmp_path / side / "coco-karpathy/predictions.jsonl").write_text(text)
    run = BenchmarkRun(benchmarks_named("coco-karpathy"), data, tmp_path / "out", limit=1)
    with pytest.raises(DataError, match="other/coco-karpathy/predictions.jsonl: not the predictions.jsonl of a verbo "
                                        "eval --benchmark run"):
        compare_benchmarks(run, tmp_path / "other")
