"""`--compare`: the paired bootstrap test between two models' predictions on the same items."""

from __future__ import annotations

import json

import numpy as np
import pytest

from verbovision.cli import main
from verbovision.evaluate.compare import RESAMPLES, compare, paired_bootstrap
from verbovision.evaluate.metrics import score

from .helpers import built_model, write_jsonl

REFERENCES = {f"q{i}": [answer] for i, answer in enumerate(["red", "blue", "two", "yes", "circle", "no", "3", "star"])}


def test_identical_predictions_differ_by_nothing():
    predictions = {"q0": "red", "q1": "green", "q2": "two", "q3": "no", "q4": "circle", "q5": "no", "q6": "4",
                   "q7": "a star"}
    result = score(predictions, REFERENCES, ["exact_match", "rouge_l", "cider"])
    comparison = compare(result, score(predictions, REFERENCES, ["exact_match", "rouge_l", "cider"]), "itself")
    assert [d.metric for d in comparison.differences] == ["ROUGE_L", "CIDEr", "exact_match"]
    for d in comparison.differences:
        assert (d.difference, d.interval, d.p_value, d.significant) == (0.0, (0.0, 0.0), 1.0, False)
    assert comparison.items == len(REFERENCES)


def test_right_on_every_item_against_wrong_on_every_item():
    right = score({k: v[0] for k, v in REFERENCES.items()}, REFERENCES, ["exact_match"])
    wrong = score({k: "nothing" for k in REFERENCES}, REFERENCES, ["exact_match"])
    [d] = compare(right, wrong, "wrong").differences
    # Every per-item difference is 1, so is every resampled mean: none reaches 0. The p-value is then the chance that
    # the 8 differences all take one sign by chance, 2 / 2^8, not the bootstrap's 2 * (0 + 1) / (10,000 + 1).
    assert (d.ours, d.theirs, d.difference, d.interval) == (1.0, 0.0, 1.0, (1.0, 1.0))
    assert d.p_value == 2 / 2 ** 8 and d.significant
    [d] = compare(wrong, right, "right").differences
    assert (d.difference, d.interval, d.p_value) == (-1.0, (-1.0, -1.0), 2 / 2 ** 8)


def test_few_differing_items_are_never_significant():
    """One item right against wrong gave p = 0.0002, 'significant': every resample repeats that one difference."""
    for n in (1, 5):
        (low, high), p = paired_bootstrap(np.ones(n))
        assert (low, high) == (1.0, 1.0) and p == 2 / 2 ** n >= 0.0625
    _, p = paired_bootstrap(np.ones(1000))
    assert p == 2 / (RESAMPLES + 1)  # with many items the bootstrap's own p-value holds


def test_one_item_of_two_differing_is_no_evidence():
    # Resampling the differences {+1, 0} draws both items the 0 one in a quarter of the resamples (mean 0) and the
    # +1 one in another quarter (mean 1): the interval spans [0, 1]. The p-value, twice that quarter, is raised to
    # that of one differing item: 1.
    (low, high), p = paired_bootstrap(np.array([1.0, 0.0]))
    assert (low, high) == (0.0, 1.0) and p == 1.0
    _, p = paired_bootstrap(np.array([1.0, 0.0] * 8))
    assert p == pytest.approx(0.0, abs=0.01)


def test_bleu_is_not_compared_and_says_why():
    references = {"a": ["a red circle on the left"], "b": ["two blue squares"], "c": ["a star"]}
    predictions = {"a": "a red circle", "b": "two blue squares and a star", "c": "a star"}
    result = score(predictions, references, ["bleu", "exact_match"])
    comparison = compare(result, result, "itself")
    assert [d.metric for d in comparison.differences] == ["exact_match"]
    assert set(comparison.not_compared) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"}
    assert "summed n-gram counts" in comparison.not_compared["Bleu_4"]


def _comparison(folder) -> dict:
    return json.loads((folder / "report.json").read_text())["comparison"]


def test_trained_model_differs_significantly_from_untrained_and_not_from_itself(model_dir, shapes_data, tmp_path,
                                                                                capsys):
    data = str(shapes_data / "train/caption_short_en.json")
    flags = ["--data", data, "--metrics", "bleu,rouge_l,exact_match", "--max-new-tokens", "4"]
    assert main(["eval", str(built_model(tmp_path, shapes_data)), *flags, "--out", str(tmp_path / "untrained")]) == 0
    assert main(["eval", str(model_dir), *flags, "--out", str(tmp_path / "trained")]) == 0
    untrained = [json.loads(line)["prediction"] for line in (tmp_path / "untrained/predictions.jsonl").open()]
    trained = [json.loads(line)["prediction"] for line in (tmp_path / "trained/predictions.jsonl").open()]
    assert set(untrained) == {""} and "" not in trained  # what makes ROUGE-L differ on every item

    capsys.readouterr()
    assert main(["eval", str(model_dir), *flags, "--out", str(tmp_path / "vs"), "--compare",
                 str(tmp_path / "untrained")]) == 0
    assert f"comparison with {tmp_path / 'untrained'} on {len(trained)} items" in capsys.readouterr().out
    comparison = _comparison(tmp_path / "vs")
    rouge = comparison["metrics"]["ROUGE_L"]
    assert rouge["significant"] and rouge["interval"][0] > 0 and rouge["p_value"] < 0.001
    assert "Bleu_4" in comparison["not_compared"] and "val_loss" in comparison["not_compared"]
    assert "## Comparison" in (tmp_path / "vs/report.md").read_text()

    assert main(["eval", str(model_dir), *flags, "--out", str(tmp_path / "again"), "--compare",
                 str(tmp_path / "trained")]) == 0
    for d in _comparison(tmp_path / "again")["metrics"].values():
        assert (d["difference"], d["interval"], d["p_value"]) == (0.0, [0.0, 0.0], 1.0)


def _ours(path, answers: dict):
    return write_jsonl(path, [{"id": k, "prediction": v, "references": REFERENCES[k]} for k, v in answers.items()])


def test_score_compares_prediction_files(tmp_path, capsys):
    mine = _ours(tmp_path / "mine.jsonl", {k: v[0] for k, v in REFERENCES.items()})
    theirs = _ours(tmp_path / "theirs.jsonl", {k: "no" for k in REFERENCES})
    assert main(["score", str(mine), "--metrics", "exact_match", "--compare", str(theirs)]) == 0
    assert f"comparison with {theirs} on {len(REFERENCES)} items" in capsys.readouterr().out
    assert main(["score", str(mine), "--metrics", "exact_match", "--compare", str(theirs), "--out",
                 str(tmp_path / "out")]) == 0
    d = _comparison(tmp_path / "out")["metrics"]["exact_match"]
    # "no" is right on one item of the 8
    assert (d["ours"], d["theirs"], d["difference"]) == (1.0, 0.125, 0.875) and d["significant"]


def test_coco_results_compare_with_an_evaluation_folder_of_the_same_images(tmp_path, capsys):
    """`verbo score results.json --refs annotations.json --compare eval/x` failed with "our predictions carry their
    references; drop --refs" (the --refs are PREDICTIONS'), and verbo eval's ids, strings ("7"), were other items
    than COCO's numbers (7)."""
    captions = {7: ["a red circle", "one red circle"], 8: ["two blue squares"], 9: ["a green star"]}
    annotations = tmp_path / "captions_val.json"
    annotations.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg"} for i in captions],
                                       "annotations": [{"image_id": i, "id": 10 * i + k, "caption": c}
                                                       for i, caps in captions.items() for k, c in enumerate(caps)]}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": i, "caption": caps[0]} for i, caps in captions.items()]))
    evaluation = tmp_path / "eval"  # as verbo eval writes it for COCO annotations: ids as strings
    evaluation.mkdir()
    write_jsonl(evaluation / "predictions.jsonl", [{"id": str(i), "image": f"{i}.jpg", "prediction": "a shape",
                                                   "references": caps} for i, caps in captions.items()])
    assert main(["score", str(results), "--refs", str(annotations), "--metrics", "exact_match", "--compare",
                 str(evaluation), "--out", str(tmp_path / "out")]) == 0
    d = _comparison(tmp_path / "out")["metrics"]["exact_match"]
    assert (d["ours"], d["theirs"], d["difference"]) == (1.0, 0.0, 1.0)
    assert f"comparison with {evaluation} on 3 items" in capsys.readouterr().out


@pytest.mark.parametrize(("other", "message"), [
    ({"q0": "red", "q1": "blue", "q9": "x"}, "not the same items as this evaluation: 6 only here"),
    ("folder", "no predictions.jsonl in this folder"),
])
def test_other_items_are_refused_in_one_line(tmp_path, capsys, other, message):
    mine = _ours(tmp_path / "mine.jsonl", {k: v[0] for k, v in REFERENCES.items()})
    if other == "folder":
        path = tmp_path / "empty"
        path.mkdir()
    else:
        references = {**REFERENCES, "q9": ["x"]}
        path = write_jsonl(tmp_path / "other.jsonl", [{"id": k, "prediction": v, "references": references[k]}
                                                       for k, v in other.items()])
    assert main(["score", str(mine), "--metrics", "exact_match", "--compare", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
