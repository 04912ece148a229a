"""`verbo eval` and `verbo score`: every metric printed, reports written, the official COCO numbers reproduced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verbovision.cli import main
from verbovision.data import read_records
from verbovision.evaluate import CUT_MARK, load_predictions, score
from verbovision.infer import VLM, DecodeOptions

from .conftest import SAMPLED, SHARED, limit_cutting_some

COCO = SHARED / "reference" / "coco-caption"


def test_eval_prints_every_metric_and_writes_the_folder(lora_run, shapes_data, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "eval"
    code = main(["eval", str(lora_run / "final"), "--data", str(shapes_data / "test/caption_short_en.json"),
                 "--metrics", "bleu,rouge_l,cider,exact_match,wer", "--out", str(out), "--max-new-tokens", "12"])
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("Bleu_4", "ROUGE_L", "CIDEr", "exact_match", "wer", "val_loss", "perplexity"):
        assert name in printed
    report = json.loads((out / "report.json").read_text())
    assert report["records"] == len((out / "predictions.jsonl").read_text().splitlines()) > 0
    assert "CIDEr" in report["ci95"] and "Bleu_4" not in report["ci95"]  # corpus BLEU is not a per-item mean
    assert (out / "metrics.png").stat().st_size > 0 and "metrics.png" in (out / "report.md").read_text()
    # our predictions file scores again with no model and gives the same numbers
    predictions, references = load_predictions(out / "predictions.jsonl")
    assert score(predictions, references, ["cider"]).values["CIDEr"] == pytest.approx(report["metrics"]["CIDEr"])


def test_eval_counts_the_replies_cut_at_max_new_tokens(lora_run, shapes_data, tmp_path, capsys):  # noqa: F811
    data = shapes_data / "test/caption_short_en.json"
    records = [r for r in read_records(data) if r.references]
    whole = VLM(lora_run / "final", device="cpu").generate_details(records, DecodeOptions(64, **SAMPLED))
    limit, cut = limit_cutting_some(whole)

    out = tmp_path / "eval"
    assert main(["eval", str(lora_run / "final"), "--data", str(data), "--metrics", "exact_match", "--out", str(out),
                 "--max-new-tokens", str(limit), "--temperature", "1.0", "--seed", "0"]) == 0
    line = f"truncated: {sum(cut)} of {len(records)} replies hit max_new_tokens={limit}"
    assert line in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["truncation"] == {"max_new_tokens": limit, "replies": len(records), "truncated": sum(cut)}
    rows = [json.loads(row) for row in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["finish_reason"] for row in rows] == ["length" if c else "stop" for c in cut]
    markdown = (out / "report.md").read_text()
    assert line in markdown and markdown.count(CUT_MARK) == 1 + sum(cut)  # the explanation, then each cut reply


@pytest.mark.skipif(not COCO.exists(), reason=f"{COCO} not present (the shared reference data is not shipped)")
def test_score_reproduces_the_official_coco_demo(capsys):
    code = main(["score", str(COCO / "captions_val2014_fakecap_results.json"), "--refs",
                 str(COCO / "captions_val2014_fakecap_refs_tokenized.json"), "--metrics", "bleu,rouge_l,cider"])
    assert code == 0
    printed = {k.strip(): v for k, v in (line.split(":")[:2] for line in capsys.readouterr().out.splitlines())}
    official = json.loads((COCO / "results_pycocoevalcap.json").read_text())
    expected = {**{f"Bleu_{n}": v for n, v in enumerate(official["Bleu"], 1)}, "ROUGE_L": official["ROUGE_L"],
                "CIDEr": official["CIDEr"]}
    for name in expected:
        assert float(printed[name].split()[0]) == pytest.approx(expected[name], abs=1e-6), name


def test_score_llava_answers_with_questions(tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps({"question_id": i, "text": t}) for i, t in enumerate(["Two", "yes."])))
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "answer": a}) for i, a in enumerate(["2", "no"])))
    assert main(["score", str(answers), "--refs", str(questions), "--metrics", "vqa,exact_match"]) == 0
    printed = capsys.readouterr().out
    assert "vqa: 0.500000" in printed and "exact_match: 0.000000" in printed


def test_score_errors_name_the_file(tmp_path):
    bad = tmp_path / "preds.jsonl"
    bad.write_text('{"question_id": 1, "text": "a"}\n')
    assert main(["score", str(bad)]) == 2
    assert main(["score", str(bad), "--metrics", "nope"]) == 2


def test_results_json_shape(tmp_path):
    path = Path(tmp_path / "x.json")
    path.write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]))
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1, "id": 1, "caption": "a"}]}))
    with pytest.raises(Exception, match="more than one caption"):
        load_predictions(path, refs)
