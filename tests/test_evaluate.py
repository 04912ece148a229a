"""`verbo eval` and `verbo score`: every metric printed, reports written, the official COCO numbers reproduced."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from verbovision.cli import main
from verbovision.data.rows import json_document
from verbovision.data.sources import read_records
from verbovision.evaluate.metrics import score
from verbovision.evaluate.report import CUT_MARK
from verbovision.evaluate.scoring import load_predictions
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.train.distributed import Processes

from .helpers import SAMPLED, SHARED, limit_cutting_some

COCO = SHARED / "reference" / "coco-caption"


def test_eval_prints_every_metric_and_writes_the_folder(lora_run, shapes_data, tmp_path, capsys,  # noqa: F811
                                                        monkeypatch):
    # Its reference loss (val_loss) is the training loss, computed without the training processes' runtime.
    monkeypatch.setattr(Processes, "__init__", lambda self: pytest.fail("verbo eval set up training processes"))
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
    inputs = load_predictions(out / "predictions.jsonl")
    assert score(inputs.predictions, inputs.references, ["cider"]).values["CIDEr"] == pytest.approx(
        report["metrics"]["CIDEr"])


def test_eval_on_coco_annotations_writes_coco_results(plain_model_dir, shapes_data, tmp_path, capsys):
    """PRODUCT.md: predictions in COCO's results format for captions; `verbo score` reads them back with the
    annotations and gives the evaluation's numbers."""
    rows = json.loads((shapes_data / "val/caption_short_en.json").read_text())[:4]
    annotations = tmp_path / "captions_val.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 7 + i, "file_name": Path(row["image"]).name} for i, row in enumerate(rows)],
        "annotations": [{"id": i, "image_id": 7 + i, "caption": row["conversations"][1]["value"]}
                        for i, row in enumerate(rows)]}))
    out = tmp_path / "eval"
    assert main(["eval", str(plain_model_dir), "--data", str(annotations), "--image-root", str(shapes_data / "images"),
                 "--metrics", "cider", "--out", str(out), "--max-new-tokens", "12", "--device", "cpu"]) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    results = json.loads((out / "captions_results.json").read_text())
    assert results == [{"image_id": 7 + i, "caption": row["prediction"]} for i, row in enumerate(predictions)]
    assert any(row["caption"] for row in results)
    capsys.readouterr()
    assert main(["score", str(out / "captions_results.json"), "--refs", str(annotations), "--metrics", "cider"]) == 0
    rescored = capsys.readouterr().out
    cider = json.loads((out / "report.json").read_text())["metrics"]["CIDEr"]
    assert float(re.search(r"CIDEr\s*:\s*(\S+)", rescored).group(1)) == pytest.approx(cider)
    # other data keeps predictions.jsonl alone
    assert main(["eval", str(plain_model_dir), "--data", str(shapes_data / "val/caption_short_en.json"),
                 "--metrics", "cider", "--out", str(tmp_path / "llava"), "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert not (tmp_path / "llava/captions_results.json").exists()


def test_eval_on_coco_scores_against_blank_captions_as_pycocoevalcap(plain_model_dir, shapes_data, tmp_path, capsys):
    """pycocoevalcap keeps a blank reference caption (CIDEr-D averages over it, BLEU takes it as the closest length
    to a short reply): `verbo eval` scores as `verbo score` does on the same annotations, and as our scorer does on the
    references given with the blank ones."""
    rows = json.loads((shapes_data / "val/caption_short_en.json").read_text())[:4]
    captions = [row["conversations"][1]["value"] for row in rows]
    annotations = _write(tmp_path / "captions_val.json", {
        "images": [{"id": i, "file_name": Path(row["image"]).name} for i, row in enumerate(rows)],
        "annotations": [{"image_id": i, "caption": text} for i, caption in enumerate(captions)
                        for text in (caption, "")]})
    out = tmp_path / "eval"
    assert main(["eval", str(plain_model_dir), "--data", str(annotations), "--image-root", str(shapes_data / "images"),
                 "--metrics", "bleu,cider", "--out", str(out), "--max-new-tokens", "12", "--device", "cpu"]) == 0
    predictions = {row["id"]: row["prediction"] for row in map(json.loads, (out / "predictions.jsonl").open())}
    with_blank = score(predictions, {str(i): [caption, ""] for i, caption in enumerate(captions)}, ["bleu", "cider"])
    without = score(predictions, {str(i): [caption] for i, caption in enumerate(captions)}, ["bleu", "cider"])
    assert with_blank.values["Bleu_1"] != without.values["Bleu_1"], "the replies do not tell the two apart"
    evaluated = json.loads((out / "report.json").read_text())["metrics"]
    assert {name: evaluated[name] for name in with_blank.values} == with_blank.values
    capsys.readouterr()
    assert main(["score", str(out / "captions_results.json"), "--refs", str(annotations), "--metrics", "bleu"]) == 0
    assert float(re.search(r"Bleu_1\s*:\s*(\S+)", capsys.readouterr().out).group(1)) == with_blank.values["Bleu_1"]


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


def test_an_unreadable_image_fails_eval_before_the_model_loads(shapes_data, tmp_path, capsys):
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    (tmp_path / "cut.png").write_text("<html>rate limited</html>")  # a download that saved an error page
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"image": str(image), "text": "a shape"}) + "\n"
                    + json.dumps({"image": "cut.png", "text": "a shape"}) + "\n")
    assert main(["eval", "no/such-model", "--data", str(data), "--out", str(tmp_path / "e")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"verbo: error: {data}: record '1': {tmp_path / 'cut.png'}: unreadable image (")
    assert error.endswith("; fix or drop it (verbo data clean drops unreadable images)\n")


def test_records_that_share_an_id_fail_eval_before_the_model_loads(shapes_data, tmp_path, capsys):
    """Scores are kept by id: two records with one id were scored as one (the last reply) while both were written
    and counted in `records`."""
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": "q", "image": str(image), "question": question, "answer": answer}) + "\n"
                            for question, answer in [("How many?", "2"), ("What colour?", "red")]))
    assert main(["eval", "no/such-model", "--data", str(data), "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == (f"verbo: error: {data}: 1 record id(s) belong to more than one record, e.g. "
                                       "'q' (2 records); scores are kept by id, so give each record its own (verbo "
                                       "data check lists them)\n")


def test_a_karpathy_file_of_several_splits_fails_eval_before_the_model_loads(tmp_path, capsys):
    """dataset_coco.json holds train, restval, val and test images: --data scored them all, training images too."""
    images = [{"filename": f"{split}.jpg", "cocoid": i, "split": split, "sentences": [{"raw": "a red circle"}]}
              for i, split in enumerate(["test", "train", "test", "restval"])]
    data = _write(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"})
    assert main(["eval", "no/such-model", "--data", str(data), "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == (f"verbo: error: {data}: Karpathy's file holds the splits test, train, restval; "
                                       "--data scores every record, training images too: score its test split "
                                       f"with --benchmark coco-karpathy (or flickr30k) --data-dir {tmp_path}\n")


def test_eval_parses_a_coco_file_once(shapes_data, tmp_path, capsys, monkeypatch):
    """The Karpathy split check is the reader's: a large annotation file (dataset_coco.json) is not parsed twice."""
    from verbovision.data import formats

    parsed = []
    monkeypatch.setattr(formats, "json_document", lambda path: parsed.append(path) or json_document(path))
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    data = _write(tmp_path / "captions.json", {"images": [{"id": 1, "file_name": str(image)}],
                                               "annotations": [{"image_id": 1, "caption": "a shape"}]})
    assert main(["eval", str(tmp_path / "no-model"), "--data", str(data), "--out", str(tmp_path / "e")]) == 2
    assert "no-model" in capsys.readouterr().err and parsed == [data]


def test_vqa_accuracy_on_single_answer_data_fails_eval_before_the_model_loads(shapes_data, capsys, tmp_path):
    """The references tell before any reply is generated that VQA accuracy cannot credit one answer; the check once
    came after generating every reply, which it then threw away."""
    data = shapes_data / "val/vqa_en.json"
    assert main(["eval", "no/such-model", "--data", str(data), "--metrics", "exact_match,vqa",
                 "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"verbo: error: {data}: vqa: item 'shapes-") and "has 1 reference answer(s)" in err


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


# --- official VQAv2 and TextVQA files ---------------------------------------------------------------------------
# Expected values derived by hand from vqaEval.py's rules (see tests/test_metrics.py for the rules one by one).

VQA_META = {"info": {"description": "test"}, "license": {"name": "test"}, "data_subtype": "val2014",
            "data_type": "mscoco"}


def _annotation(qid: int, answers: list[str], answer_type: str, question_type: str) -> dict:
    return {"question_id": qid, "image_id": 100 + qid, "question_type": question_type, "answer_type": answer_type,
            "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(answers, 1)]}


@pytest.fixture
def vqa_files(tmp_path) -> dict[str, Path]:
    """VQAv2 questions, annotations and results files, shaped as the official ones."""
    annotations = [_annotation(1, ["4"] * 10, "number", "how many"),
                   _annotation(2, ["Giraffe"] * 10, "other", "what is"),
                   _annotation(3, ["2"] * 3 + ["3"] * 7, "number", "how many"),
                   _annotation(4, ["yes"] * 9 + ["no"], "yes/no", "is the")]
    questions = [{"image_id": 100 + a["question_id"], "question": "?", "question_id": a["question_id"]}
                 for a in annotations]
    results = [{"question_id": 4, "answer": "Yes"}, {"question_id": 2, "answer": "giraffe"},
               {"question_id": 3, "answer": "two"}, {"question_id": 1, "answer": "four."}]
    files = {"annotations": tmp_path / "v2_mscoco_val2014_annotations.json",
             "questions": tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json",
             "results": tmp_path / "vqa_results.json"}
    files["annotations"].write_text(json.dumps({**VQA_META, "annotations": annotations}))
    files["questions"].write_text(json.dumps({**VQA_META, "task_type": "Open-Ended", "questions": questions}))
    files["results"].write_text(json.dumps(results))
    return files


def _printed(capsys) -> dict[str, str]:
    return dict(line.strip().split(": ", 1) for line in capsys.readouterr().out.splitlines())


def test_score_reads_official_vqav2_files(vqa_files, tmp_path, capsys):
    assert main(["score", str(vqa_files["results"]), "--refs", str(vqa_files["annotations"]), "--metrics", "vqa",
                 "--out", str(tmp_path / "report")]) == 0
    printed = _printed(capsys)
    # q1 "four." vs ten "4" and q2 "giraffe" vs ten "Giraffe": the answers agree, raw strings differ: 0.
    # q3 "two" -> "2": 3 of 10 match: (3 x 2/3 + 7 x 1) / 10 = 0.9. q4 "Yes" -> "yes": 9 match: 1.0.
    # Summed in the annotations' order: (0 + 0 + 0.9 + 1.0) / 4 = 0.475; vqaEval.py: round(100 * 1.9 / 4, 2).
    assert printed["records"] == "4"
    assert printed["vqa"].split()[0] == "0.475"
    assert printed["vqa (vqaEval.py %)"] == "47.5"
    assert printed["vqa[answer_type=number]"] == "0.45" and printed["vqa[answer_type=number] (vqaEval.py %)"] == "45.0"
    assert printed["vqa[answer_type=other]"] == "0.0" and printed["vqa[answer_type=yes/no]"] == "1.0"
    assert printed["vqa[question_type=how many]"] == "0.45" and printed["vqa[question_type=is the]"] == "1.0"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["metrics"]["vqa"] == 0.475 and report["details"]["vqa (vqaEval.py %)"] == 47.5
    rows = [json.loads(line) for line in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [1, 2, 3, 4]  # vqaEval.py's order, not the results file's


def test_score_a_subset_of_the_annotations(vqa_files, capsys):
    vqa_files["results"].write_text(json.dumps([{"question_id": 3, "answer": "two"}]))
    assert main(["score", str(vqa_files["results"]), "--refs", str(vqa_files["annotations"]), "--metrics",
                 "vqa"]) == 0
    printed = _printed(capsys)
    assert printed["records"] == "1" and printed["vqa"].split()[0] == "0.9" and printed["vqa (vqaEval.py %)"] == "90.0"
    # the questions left out are said, not only counted (vqaEval.py's loadRes refuses such a results file)
    total = len(json.loads(vqa_files["annotations"].read_text())["annotations"])
    assert printed["note"] == (f"{total - 1} of the {total} items of {vqa_files['annotations']} have no prediction: "
                               "they are not scored ('records' counts the scored ones)")


def test_score_textvqa_data_with_llava_answers(tmp_path, capsys):
    data = {"dataset_name": "textvqa", "dataset_type": "val", "dataset_version": "0.5.1", "data": [
        {"question_id": 10, "question": "what brand?", "image_id": "a1", "answers": ["Nokia"] * 10},
        {"question_id": 11, "question": "what drink?", "image_id": "a2", "answers": ["coca cola"] * 2 + ["coke"] * 8}]}
    refs = tmp_path / "TextVQA_0.5.1_val.json"
    refs.write_text(json.dumps(data))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q, "prompt": "?", "text": t, "answer_id": "x",
                                           "model_id": "m", "metadata": {}}) + "\n"
                               for q, t in [(11, "COCA COLA."), (10, "nokia")]))
    assert main(["score", str(answers), "--refs", str(refs), "--metrics", "textvqa,vqa"]) == 0
    printed = _printed(capsys)
    # textvqa lowercases first: "nokia" matches all 10: 1.0; "coca cola" 2 of 10: (1/3 + 1/3 + 8 x 2/3) / 10 = 0.6.
    # vqa compares raw strings when the answers agree: "nokia" vs ten "Nokia" is 0.
    assert printed["textvqa"].split()[0] == "0.8" and printed["vqa"].split()[0] == "0.3"


def test_score_llavas_textvqa_answers_which_name_the_image(tmp_path, capsys):
    """LLaVA's TextVQA answers carry the image id as question_id (eval_textvqa.py matches them by image and the
    question in the prompt); they were refused as "question_id 'a2' has no answers"."""
    refs = _write(tmp_path / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 10, "question": "What brand?", "image_id": "a1", "answers": ["Nokia"] * 10},
        {"question_id": 11, "question": "What drink?", "image_id": "a2", "answers": ["coca cola"] * 2 + ["coke"] * 8},
        {"question_id": 12, "question": "what year?", "image_id": "a2", "answers": ["1999"] * 10}]})
    instruction = "\nAnswer the question using a single word or phrase."
    rows = [("a2", "what drink?\nReference OCR token: coca, cola" + instruction, "COCA COLA."),
            ("a1", "Reference OCR token: nokia\nWhat brand?" + instruction, "nokia"),
            ("a2", "What year?" + instruction, "1999")]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q, "prompt": p, "text": t, "answer_id": "x", "model_id": "m",
                                           "metadata": {}}) + "\n" for q, p, t in rows))
    assert main(["score", str(answers), "--refs", str(refs), "--metrics", "textvqa", "--out", str(tmp_path / "o")]) == 0
    assert _printed(capsys)["textvqa"].split()[0] == repr((0.6 + 1.0 + 1.0) / 3)
    scored = [json.loads(line) for line in (tmp_path / "o/predictions.jsonl").read_text().splitlines()]
    assert [(row["id"], row["prediction"]) for row in scored] == [(10, "nokia"), (11, "COCA COLA."), (12, "1999")]
    answers.write_text(json.dumps({"question_id": "a2", "prompt": "What month?" + instruction, "text": "may"}))
    assert main(["score", str(answers), "--refs", str(refs), "--metrics", "textvqa"]) == 2
    assert capsys.readouterr().err.endswith("question_id 'a2' has no answers in " + str(refs) + " (it names an image, "
                                            "as LLaVA's TextVQA answers do, but its prompt's question 'what month?' is "
                                            "none of that image's)\n")


def test_score_llava_answers_with_answer_records(tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps({"question_id": i, "text": t}) for i, t in enumerate(["Two", "yes."])))
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "answers": a, "text": "a question"})
                                   for i, a in enumerate([["2"] * 10, [{"answer": "no"}] * 9 + [{"answer": "yes"}]])))
    assert main(["score", str(answers), "--refs", str(questions), "--metrics", "vqa,exact_match"]) == 0
    printed = _printed(capsys)
    # "Two" vs ten "2": the answers agree, raw strings differ: 0. "yes." -> "yes" matches the last of 10 answers:
    # leaving out one of the first 9 leaves 1 match (1/3), leaving out the last none: 9 x 1/3 / 10 = 0.3. Mean 0.15.
    assert printed["vqa"].split()[0] == "0.15" and printed["exact_match"].split()[0] == "0.5"


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


ONE_ANSWER = [{"question_id": 1, "answer": "4"}]


@pytest.mark.parametrize("predictions, refs, metrics, message", [
    (ONE_ANSWER, "questions", "vqa", "a VQAv2 questions file holds no answers"),
    (ONE_ANSWER, [{"question_id": 1, "text": "How many?"}], "vqa",
     "record 1 (question_id 1): no 'answer' or 'answers'"),
    (ONE_ANSWER, [{"question_id": 1, "answer": "4"}], "vqa", "has 1 reference answer(s)"),
    ([{"question_id": 1, "answer": "4"}, {"question_id": 2}], "annotations", "vqa",
     "record 2: expected 'answer' (a string), found none"),
    ([{"question_id": 1, "answer": 4}], "annotations", "vqa", "record 1: expected 'answer' (a string), found 4"),
    ([{"question_id": 99, "answer": "4"}], "annotations", "vqa", "record 1: question_id 99 has no answers in"),
    ([{"question_id": "1", "answer": "4"}], "annotations", "vqa", "(it has 1: ids must have the same JSON type)"),
    (ONE_ANSWER + ONE_ANSWER, "annotations", "vqa", "record 2: question_id 1 has more than one answer"),
    ("not json", "annotations", "vqa", ":1: invalid JSON"),
    ('"a string"', "annotations", "vqa", "expected a list of predictions, found str"),
    ([], "annotations", "vqa", "expected a list of predictions, found nothing"),
    ([{"image": "x"}], "annotations", "vqa", "record 1: unrecognised predictions format"),
    (ONE_ANSWER, {"annotations": [{"question_id": 1, "answer_type": "number", "question_type": "how many"}]},
     "vqa", "annotation 1 (question_id 1): expected 'answers'"),
    (ONE_ANSWER, {"annotations": [{"question_id": 1, "answers": [], "answer_type": "n", "question_type": "h"}]},
     "vqa", "expected a non-empty list of reference strings, found []"),
    (ONE_ANSWER, {"annotations": [{"question_id": 1, "answers": [{"answer": "4", "answer_id": 1}] * 2,
                                   "answer_type": "number", "question_type": "how many"}]},
     "vqa", "answers 1 and 2 differ only in their text"),
    (ONE_ANSWER, {"annotations": [{"question_id": 1, "answers": [{"answer": "4", "answer_id": i} for i in (1, 2)],
                                   "question_type": "how many"}]}, "vqa", "expected 'answer_type' (a string)"),
    (ONE_ANSWER, {"annotations": [{"image_id": 1, "caption": "a dog"}]}, "vqa", "COCO caption annotations score"),
    (ONE_ANSWER, {"data": [{"question_id": 1, "question": "?", "image_id": "a"}]}, "textvqa",
     "TextVQA's test split has none"),
    (ONE_ANSWER, {"something": 1}, "vqa", "unrecognised references format"),
    ([{"id": "a", "prediction": "x", "references": []}], None, "exact_match",
     "expected a non-empty list of reference strings"),
    ([{"id": "a", "prediction": "x", "references": ["x"]}] * 2, None, "exact_match", "record 2: id 'a' appears twice"),
    (ONE_ANSWER, {"annotations": [_annotation(1, ["4"] * 10, "number", "how many")] * 2}, "vqa",
     "annotation 2 (question_id 1): question_id 1 appears twice"),
    ([{"image_id": 1, "caption": "a dog"}], {"images": [{"id": 2}], "annotations": [
        {"image_id": 1, "id": 1, "caption": "a dog"}, {"image_id": 2, "id": 2, "caption": "a cat"}]}, "bleu",
     "image_id [1] not in its 'images' list"),
])
def test_score_input_errors_are_one_line(vqa_files, tmp_path, capsys, predictions, refs, metrics, message):
    path = _write(tmp_path / "predictions.json", predictions)
    refs_path = vqa_files[refs] if isinstance(refs, str) else refs and _write(tmp_path / "refs.json", refs)
    argv = ["score", str(path), "--metrics", metrics] + (["--refs", str(refs_path)] if refs_path else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("verbo: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert str(path) in err or str(refs_path) in err  # the file at fault is named


def test_scores_that_are_low_for_a_reason_the_values_do_not_show_come_with_a_note(tmp_path, capsys):
    """Chinese captions scored BLEU 3e-16 and CIDEr 0 with no word said: the official tokenizer splits words at
    spaces only, so each caption is one word. Likewise predictions that are all empty scored 0 unremarked."""
    rows = [("一只狗在草地上跑", ["一只狗在草地上奔跑", "狗在草地上跑"]), ("一只猫坐在桌子上", ["猫坐在桌子上"]),
            ("", ["a red circle"]), ("两个 人 在 海边", ["两个 人 在 海滩 上 散步"])]  # split into words: no note
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": i, "prediction": p, "references": r}, ensure_ascii=False) + "\n"
                                   for i, (p, r) in enumerate(rows)), encoding="utf-8")
    assert main(["score", str(predictions), "--metrics", "bleu,cider", "--out", str(tmp_path / "out")]) == 0
    notes = ["1 of 4 predictions are empty (e.g. id 2)",
             "5 of 9 predictions and references write words without spaces between them (Chinese, Japanese, "
             "Thai...): BLEU, ROUGE-L, CIDEr-D and WER split words at spaces, as the official scorers do, so a run "
             "of such text counts as one word and only whole runs match; put spaces between the words (or "
             "characters) of both sides before scoring"]
    assert capsys.readouterr().out.splitlines()[-2:] == [f"note: {note}" for note in notes]
    assert json.loads((tmp_path / "out/report.json").read_text())["notes"] == notes
    assert f"- note: {notes[1]}" in (tmp_path / "out/report.md").read_text()
    # exact_match compares whole answers: spaces do not matter to it
    assert main(["score", str(predictions), "--metrics", "exact_match"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"note: {notes[0]}"


def test_rescoring_an_evaluation_into_its_folder_keeps_its_predictions(tmp_path, capsys):
    """`verbo score eval/x/predictions.jsonl --metrics ... --out eval/x` rewrote predictions.jsonl with id, prediction
    and references only: the image, prompt and finish_reason verbo eval wrote were lost."""
    rows = [{"id": "a", "image": "/data/a.png", "prompt": "<image>\nWhat is it?", "prediction": "a cat",
             "finish_reason": "length", "references": ["a cat"]},
            {"id": "b", "image": "/data/b.png", "prompt": "<image>\nWhat is it?", "prediction": "a dog",
             "finish_reason": "stop", "references": ["a dog", "the dog"]}]
    predictions = tmp_path / "eval/predictions.jsonl"
    predictions.parent.mkdir()
    text = "".join(json.dumps(row) + "\n" for row in rows)
    predictions.write_text(text)
    assert main(["score", str(predictions), "--metrics", "exact_match", "--out", str(tmp_path / "eval")]) == 0
    assert predictions.read_text() == text
    # a reply cut at the token limit is never silent, here neither
    assert capsys.readouterr().out.splitlines()[-1] == ('note: 1 of the 2 predictions were cut at max_new_tokens '
                                                        '(finish_reason "length"): generate again with a higher limit '
                                                        'for whole replies')
    assert f"a cat {CUT_MARK}" in (tmp_path / "eval/report.md").read_text()


def test_rescoring_an_evaluation_into_its_folder_keeps_what_only_its_model_gave(tmp_path, capsys):
    """... and its report.json lost the loss and perplexity of the references, and which model and data it was:
    those need the model to compute again."""
    (tmp_path / "eval").mkdir()
    predictions = _write(tmp_path / "eval/predictions.jsonl", {"id": "1", "prediction": "a cat",
                                                               "references": ["a cat"]})
    evaluation = {"model": "runs/qs/final", "data": "test.json", "metrics": {"Bleu_1": 1.0, "val_loss": 2.5,
                                                                           "perplexity": 12.18}}
    (tmp_path / "eval/report.json").write_text(json.dumps(evaluation))
    assert main(["score", str(predictions), "--metrics", "exact_match", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval/report.json").read_text())
    assert report["metrics"] == {"exact_match": 1.0, "val_loss": 2.5, "perplexity": 12.18}
    assert (report["model"], report["data"], report["predictions"]) == ("runs/qs/final", "test.json", str(predictions))
    assert "val_loss: 2.5" in capsys.readouterr().out
    assert main(["score", str(predictions), "--metrics", "exact_match", "--out", str(tmp_path / "other")]) == 0
    assert "val_loss" not in json.loads((tmp_path / "other/report.json").read_text())["metrics"]


def test_cider_of_one_item_comes_with_a_note(tmp_path, capsys):
    """pycocoevalcap's CIDEr-D of a single image is 0 even for a prediction equal to its reference: say so."""
    predictions = _write(tmp_path / "predictions.jsonl", {"id": "1", "prediction": "a cat", "references": ["a cat"]})
    assert main(["score", str(predictions), "--metrics", "cider"]) == 0
    printed = capsys.readouterr().out
    assert "CIDEr: 0.0" in printed and printed.splitlines()[-1].startswith("note: CIDEr-D of one item is 0 whatever")


def test_score_reads_files_that_start_with_a_byte_order_mark(tmp_path, capsys):
    predictions = tmp_path / "predictions.jsonl"  # as Windows editors save UTF-8
    predictions.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "1", "prediction": "a cat",
                                                          "references": ["a cat"]}).encode() + b"\r\n")
    assert main(["score", str(predictions), "--metrics", "exact_match"]) == 0
    assert "exact_match: 1.0" in capsys.readouterr().out


def test_score_unreadable_files(tmp_path, capsys):
    binary = tmp_path / "results.json"
    binary.write_bytes(b"\xff\xfe[]")
    for argv in (["score", str(binary)], ["score", str(tmp_path)], ["score", str(tmp_path / "missing.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(argv[1]) in err


def test_score_errors_name_the_file(tmp_path):
    bad = tmp_path / "preds.jsonl"
    bad.write_text('{"question_id": 1, "text": "a"}\n')
    assert main(["score", str(bad)]) == 2
    assert main(["score", str(bad), "--metrics", "nope"]) == 2


@pytest.mark.parametrize("command", ["score", "eval"])
def test_an_empty_metrics_list_is_refused(tmp_path, capsys, command):
    """--metrics "" (an empty shell variable) once printed only the record count and exited 0: no score at all."""
    predictions = _write(tmp_path / "predictions.jsonl", {"id": "1", "prediction": "a cat", "references": ["a cat"]})
    argv = ["score", str(predictions)] if command == "score" else \
        ["eval", str(tmp_path / "no-model"), "--data", str(predictions), "--out", str(tmp_path / "eval")]
    assert main([*argv, "--metrics", " , "]) == 2
    err = capsys.readouterr().err
    assert err.startswith("verbo: error: --metrics ' , ': no metric named; choose from bleu,") and err.count("\n") == 1


def test_results_json_shape(tmp_path):
    path = Path(tmp_path / "x.json")
    path.write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]))
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1, "id": 1, "caption": "a"}]}))
    with pytest.raises(Exception, match="more than one caption"):
        load_predictions(path, refs)


# --- METEOR: the official Java program where Java is, a one-line reason where it is not ----------------------


def _verbo_score(predictions: Path, env: dict) -> dict[str, str]:
    result = subprocess.run([sys.executable, "-m", "verbovision", "score", str(predictions), "--metrics",
                             "bleu,meteor"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return dict(line.strip().split(": ", 1) for line in result.stdout.splitlines())


def test_meteor_runs_where_java_is_and_says_why_not_where_it_is_not(tmp_path):
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
    assert '"pycocoevalcap==1.2"' in dependencies  # the README's install has it, not only the dev extras
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": i, "prediction": p, "references": [r, "a photo"]}) + "\n"
                                   for i, (p, r) in enumerate([("a red circle on the left", "a red circle on the left"),
                                                               ("two blue squares", "two blue squares")])))
    printed = _verbo_score(predictions, os.environ.copy())
    if shutil.which("java"):
        assert "meteor" not in printed and float(printed["METEOR"].split()[0]) > 0.9  # the predictions equal a reference
    else:
        assert printed["meteor"].startswith("skipped: java not found") and "METEOR" not in printed
    no_java = _verbo_score(predictions, {**os.environ, "PATH": str(tmp_path)})  # a PATH without java
    assert no_java["meteor"] == ("skipped: java not found: METEOR runs the official Java program; install a Java "
                                 "runtime (e.g. OpenJDK: apt install default-jre) to compute it")
    assert "METEOR" not in no_java and float(no_java["Bleu_4"].split()[0]) > 0.9
