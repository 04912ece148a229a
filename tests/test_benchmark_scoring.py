"""The benchmarks of `verbo eval --benchmark` (textvqa, vizwiz, gqa, pope, chair) on fixtures written here in each
benchmark's official file layout: the items and prompts read, the official scores of given replies (each expected
value worked out by hand from the official rule, the reasoning beside it), the submission file, and the error naming
a missing file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from verbovision.errors import DataError
from verbovision.evaluate.benchmarks import chair, gqa, pope, textvqa, vizwiz
from verbovision.evaluate.benchmarks.base import BenchmarkItem
from verbovision.evaluate.vqa import score_vqa, textvqa_accuracy

SHORT = "\nAnswer the question using a single word or phrase."


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 30, 200)).save(path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


# ---- POPE -------------------------------------------------------------------------------------------------------

POPE_CASES = {  # subset -> (label, reply) per question, in file order
    "random": [("yes", "Yes, there is a dog."),           # "Yes there is a dog": no "no" word -> yes: TP
               ("yes", "Yes"),                            # TP
               ("yes", "There is a snowboard. No doubt."),  # only the first sentence is read -> yes: TP
               ("yes", "No."),                            # "No" -> no: FN
               ("no", "Yes."),                            # FP
               ("no", "no"),                              # TN
               ("no", "There is not a car in the image."),  # "not" -> no: TN
               ("no", "None.")],                          # "None" is not the word "No" -> yes: FP
    "popular": [("yes", "Yes"),                           # TP
                ("no", "Not really.")],                   # "Not" (capital) is none of No/no/not -> yes: FP
    "adversarial": [("yes", "No, there is no clock."),    # FN
                    ("no", "No")],                        # TN
}


def _pope_fixture(root: Path) -> dict[str, str]:
    replies = {}
    for subset, cases in POPE_CASES.items():
        rows = []
        for number, (label, reply) in enumerate(cases, 1):
            image = f"COCO_val2014_{number:012d}.jpg"
            _image(root / "val2014" / image)
            rows.append({"question_id": number, "image": image, "text": f"Is there a thing {number} in the image?",
                         "label": label})
            replies[f"{subset}/{number}"] = reply
        _jsonl(root / f"coco_pope_{subset}.json", rows)
    return replies


def test_pope_reads_the_three_subsets_with_llavas_prompt(tmp_path):
    _pope_fixture(tmp_path)
    items = pope.BENCHMARK.read(tmp_path, "test")
    assert [item.id for item in items][:2] == ["random/1", "random/2"] and len(items) == 12
    assert [item.group for item in items] == ["random"] * 8 + ["popular"] * 2 + ["adversarial"] * 2
    first = items[0]
    assert first.prompt == "Is there a thing 1 in the image?" + SHORT
    assert first.image == tmp_path / "val2014" / "COCO_val2014_000000000001.jpg" and first.image.is_file()
    assert first.references == ("yes",)


def test_pope_scores_as_llavas_eval_pope(tmp_path):
    replies = _pope_fixture(tmp_path)
    items = pope.BENCHMARK.read(tmp_path, "test")
    result = pope.BENCHMARK.score(items, replies)
    d = result.details
    # random: TP 3, FP 2, TN 2, FN 1 -> accuracy 5/8, precision 3/5, recall 3/4, F1 2*.6*.75/1.35 = 2/3,
    # yes-ratio 5/8
    assert d["accuracy[random]"] == 0.625 and d["precision[random]"] == 0.6 and d["recall[random]"] == 0.75
    assert d["f1[random]"] == pytest.approx(2 / 3) and d["yes_ratio[random]"] == 0.625
    # popular: TP 1, FP 1 -> accuracy 1/2, precision 1/2, recall 1, F1 2*.5*1/1.5 = 2/3, yes-ratio 1
    assert (d["accuracy[popular]"], d["precision[popular]"], d["recall[popular]"], d["yes_ratio[popular]"]) == (
        0.5, 0.5, 1.0, 1.0)
    assert d["f1[popular]"] == pytest.approx(2 / 3)
    # adversarial: FN 1, TN 1 -> accuracy 1/2, recall 0, yes-ratio 0; nothing answered yes: precision and F1
    # undefined (eval_pope.py divides by zero)
    assert (d["accuracy[adversarial]"], d["recall[adversarial]"], d["yes_ratio[adversarial]"]) == (0.5, 0.0, 0.0)
    assert _nan(d["precision[adversarial]"]) and _nan(d["f1[adversarial]"])
    # overall: the subsets' mean, (0.625 + 0.5 + 0.5) / 3; undefined where a subset's is
    assert result.values["accuracy"] == pytest.approx(1.625 / 3)
    assert result.values["recall"] == pytest.approx(1.75 / 3) and _nan(result.values["precision"])
    # per item: correct or not (7 of 12); subsets of unequal size: the mean of their accuracies (0.5417) is not the
    # per-item mean (7/12), so no per-item interval is claimed for it
    assert sum(result.per_item["accuracy"].values()) == 7 and result.intervals == {}
    random_only = pope.BENCHMARK.score([i for i in items if i.group == "random"], replies)
    low, high = random_only.intervals["accuracy"]
    assert low <= 0.625 <= high


def test_pope_writes_llavas_answer_file(tmp_path):
    replies = _pope_fixture(tmp_path / "data")
    items = pope.BENCHMARK.read(tmp_path / "data", "test")
    path = pope.BENCHMARK.write_submission(items, replies, tmp_path / "out")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[3] == {"question_id": 4, "prompt": "Is there a thing 4 in the image?" + SHORT, "text": "No.",
                       "category": "random"}
    assert [row["category"] for row in rows].count("adversarial") == 2


def test_pope_names_the_missing_file_and_reply(tmp_path):
    replies = _pope_fixture(tmp_path)
    (tmp_path / "coco_pope_popular.json").unlink()
    with pytest.raises(DataError, match=r"coco_pope_popular\.json not found.*AoiDragon/POPE"):
        pope.BENCHMARK.read(tmp_path, "test")
    _pope_fixture(tmp_path)
    items = pope.BENCHMARK.read(tmp_path, "test")
    del replies["popular/2"]
    with pytest.raises(DataError, match=r"no reply for 1 item.*popular/2"):
        pope.BENCHMARK.score(items, replies)


# ---- TextVQA ----------------------------------------------------------------------------------------------------

TEXTVQA_CASES = [  # (question, answers, reply)
    # "Nokia." -> EvalAI processing: lowercase, period dropped -> "nokia"; 3 of 10 answers match: leaving out one
    # of the 3, 2 others match (2/3), leaving out one of the 7, 3 match (1): (3 * 2/3 + 7 * 1) / 10 = 0.9
    ("what brand is the phone?", ["nokia"] * 3 + ["samsung"] * 7, "Nokia."),
    # "The Coca-Cola" -> "the coca cola" ("-" with no space beside it becomes a space) -> article dropped: all 10
    # match -> 1
    ("what drink is advertised?", ["coca cola"] * 10, "The Coca-Cola"),
    # "stop" matches 1 answer: leaving that one out 0 match (0), leaving out any of the other 9, 1 matches (1/3):
    # 9 * 1/3 / 10 = 0.3
    ("what does the sign say?", ["stop"] + ["go"] * 9, "stop"),
]


def _textvqa_fixture(root: Path) -> dict[str, str]:
    rows = []
    for number, (question, answers, _) in enumerate(TEXTVQA_CASES):
        image_id = f"{number:016x}"
        _image(root / "train_images" / f"{image_id}.jpg")
        rows.append({"question_id": 34602 + number, "question": question, "image_id": image_id, "answers": answers,
                     "image_classes": ["Poster"], "set_name": "val"})
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "dataset_version": "0.5.1",
                                                            "dataset_type": "val", "data": rows}))
    # LLaVA's prompts: question_id is the image id; the question as typed in its file (capital here)
    _jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": f"{n:016x}", "image": f"{n:016x}.jpg",
         "text": f"{q.capitalize()}\nReference OCR token: word{n}, 3310{SHORT}", "category": "default"}
        for n, (q, _, _) in enumerate(TEXTVQA_CASES)])
    return {str(34602 + n): reply for n, (_, _, reply) in enumerate(TEXTVQA_CASES)}


def test_textvqa_reads_questions_with_and_without_ocr_tokens(tmp_path):
    _textvqa_fixture(tmp_path)
    items = textvqa.BENCHMARK.read(tmp_path, "val")
    assert [item.id for item in items] == ["34602", "34603", "34604"]
    assert items[0].prompt == "what brand is the phone?" + SHORT and len(items[0].references) == 10
    assert items[2].image == tmp_path / "train_images" / "0000000000000002.jpg" and items[2].image.is_file()
    with_ocr = textvqa.BENCHMARK.read(tmp_path, "val-ocr")
    assert with_ocr[1].prompt == "What drink is advertised?\nReference OCR token: word1, 3310" + SHORT
    (tmp_path / "llava_textvqa_val_v051_ocr.jsonl").write_text("")
    with pytest.raises(DataError, match=r"no prompt for image 0000000000000000 and question 'what brand"):
        textvqa.BENCHMARK.read(tmp_path, "val-ocr")


def test_textvqa_scores_m4c_accuracy_and_writes_the_evalai_file(tmp_path):
    replies = _textvqa_fixture(tmp_path / "data")
    items = textvqa.BENCHMARK.read(tmp_path / "data", "val")
    result = textvqa.BENCHMARK.score(items, replies)
    assert result.per_item["accuracy"] == pytest.approx({"34602": 0.9, "34603": 1.0, "34604": 0.3})
    assert result.values["accuracy"] == pytest.approx(2.2 / 3)  # (0.9 + 1 + 0.3) / 3
    low, high = result.intervals["accuracy"]
    assert 0.3 <= low <= 2.2 / 3 <= high <= 1.0
    path = textvqa.BENCHMARK.write_submission(items, replies, tmp_path / "out")
    assert json.loads(path.read_text()) == [{"question_id": 34602, "answer": "nokia"},
                                            {"question_id": 34603, "answer": "coca cola"},
                                            {"question_id": 34604, "answer": "stop"}]


def test_textvqa_sums_the_items_as_m4c_and_verbo_score_do():
    """The benchmark summed the items with math.fsum, m4c's eval_pred_list (and `verbo score --metrics textvqa`) with
    sum(), left to right: the last bits of the accuracy differed between the two commands for the same replies."""
    answers = ["a", "b", "c", "d"]
    items = [BenchmarkItem(str(i), Path("x.jpg"), "?", tuple(answers[(i * k) % 4] for k in range(1, 11)))
             for i in range(200)]
    replies = {item.id: answers[int(item.id) % 3] for item in items}
    result = textvqa.BENCHMARK.score(items, replies)
    per_item = [textvqa_accuracy(replies[item.id], item.references) for item in items]
    total = 0.0
    for value in per_item:  # sum() before Python 3.12, which the official scripts ran under
        total += value
    assert result.values["accuracy"] == total / len(per_item) != math.fsum(per_item) / len(per_item)
    assert result.values["accuracy"] == score_vqa(replies, {item.id: item.references for item in items},
                                                  kind="textvqa").mean


def test_textvqa_names_the_missing_files(tmp_path):
    _textvqa_fixture(tmp_path)
    (tmp_path / "llava_textvqa_val_v051_ocr.jsonl").unlink()
    assert len(textvqa.BENCHMARK.read(tmp_path, "val")) == 3  # val needs only TextVQA's own files
    with pytest.raises(DataError, match=r"llava_textvqa_val_v051_ocr\.jsonl not found.*LLaVA's evaluation data"):
        textvqa.BENCHMARK.read(tmp_path, "val-ocr")
    (tmp_path / "TextVQA_0.5.1_val.json").unlink()
    with pytest.raises(DataError, match=r"TextVQA_0\.5\.1_val\.json not found.*textvqa\.org"):
        textvqa.BENCHMARK.read(tmp_path, "val")


# ---- VizWiz -----------------------------------------------------------------------------------------------------

VIZWIZ_CASES = [  # (answerable, answer_type, answers, reply)
    # "Soup." -> "soup"; 2 of 10 answers match: leaving out one of them 1 matches (1/3), leaving out one of the
    # other 8, 2 match (2/3): (2/3 + 16/3) / 10 = 0.6
    (1, "other", ["soup"] * 2 + ["tomato soup"] * 8, "Soup."),
    # "Unanswerable" -> "unanswerable", all 10 match: 1; predicted unanswerable, is: TP of unanswerability
    (0, "unanswerable", ["unanswerable"] * 10, "Unanswerable"),
    # "Yes" -> "yes", but the human answers are compared as they are: "Yes" is not "yes": 0
    (1, "yes/no", ["Yes"] * 2 + ["no"] * 8, "Yes"),
    # "Unsuitable!" -> "!" becomes a space, stripped -> "unsuitable"; 3 match: (3 * 2/3 + 7) / 10 = 0.9; predicted
    # answerable, is not: FN
    (0, "unanswerable", ["unanswerable"] * 7 + ["unsuitable"] * 3, "Unsuitable!"),
    # 0; predicted unanswerable, is answerable: FP
    (1, "number", ["2"] * 10, "Unanswerable."),
]


def _vizwiz_fixture(root: Path) -> dict[str, str]:
    rows, tests = [], []
    for number, (answerable, answer_type, answers, _) in enumerate(VIZWIZ_CASES):
        image = f"VizWiz_val_{number:08d}.jpg"
        _image(root / "val" / image)
        rows.append({"image": image, "question": f"What is this {number}?", "answerable": answerable,
                     "answer_type": answer_type,
                     "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]})
        tests.append({"image": f"VizWiz_test_{number:08d}.jpg", "question": f"What is this {number}?"})
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "val.json").write_text(json.dumps(rows))
    (root / "Annotations" / "test.json").write_text(json.dumps(tests))
    return {f"VizWiz_val_{n:08d}.jpg": case[3] for n, case in enumerate(VIZWIZ_CASES)}


def test_vizwiz_reads_val_and_test_with_llavas_prompt(tmp_path):
    _vizwiz_fixture(tmp_path)
    items = vizwiz.BENCHMARK.read(tmp_path, "val")
    assert items[0].id == "VizWiz_val_00000000.jpg" and items[0].image == tmp_path / "val" / items[0].id
    assert items[0].prompt == ("What is this 0?\nWhen the provided information is insufficient, respond with "
                               "'Unanswerable'.\nAnswer the question using a single word or phrase.")
    assert [item.group for item in items] == ["answerable", "unanswerable", "answerable", "unanswerable",
                                              "answerable"]
    assert items[2].references == ("Yes", "Yes") + ("no",) * 8
    test = vizwiz.BENCHMARK.read(tmp_path, "test")
    assert test[1].image == tmp_path / "test" / "VizWiz_test_00000001.jpg" and test[1].references == ()
    with pytest.raises(DataError, match="test split publishes no answers"):
        vizwiz.BENCHMARK.score(test, {item.id: "yes" for item in test})


def test_vizwiz_scores_as_the_vizwiz_api(tmp_path):
    replies = _vizwiz_fixture(tmp_path / "data")
    items = vizwiz.BENCHMARK.read(tmp_path / "data", "val")
    result = vizwiz.BENCHMARK.score(items, replies)
    assert list(result.per_item["accuracy"].values()) == pytest.approx([0.6, 1.0, 0.0, 0.9, 0.0])
    assert result.values["accuracy"] == pytest.approx(0.5)  # 2.5 / 5
    d = result.details
    assert d["accuracy[answerable]"] == pytest.approx(0.2)  # (0.6 + 0 + 0) / 3
    assert d["accuracy[unanswerable]"] == pytest.approx(0.95)  # (1 + 0.9) / 2
    assert d["accuracy[answer_type=unanswerable]"] == pytest.approx(0.95) and d["accuracy[answer_type=other]"] == 0.6
    assert d["accuracy[answer_type=yes/no]"] == 0 and d["accuracy[answer_type=number]"] == 0
    # unanswerable: TP 1 (2nd), FN 1 (4th), FP 1 (5th). F1 = 2 TP / (2 TP + FP + FN) = 2 / 4. AP over the 0/1
    # predictions: at threshold 1 precision 1/2, recall 1/2; at 0 precision 2/5 (all), recall 1:
    # 1/2 * 1/2 + (1 - 1/2) * 2/5 = 0.45
    assert result.values["unanswerable_f1"] == pytest.approx(0.5)
    assert result.values["unanswerable_ap"] == pytest.approx(0.45)
    path = vizwiz.BENCHMARK.write_submission(items, replies, tmp_path / "out")
    assert json.loads(path.read_text()) == [
        {"image": f"VizWiz_val_{n:08d}.jpg", "answer": a}
        for n, a in enumerate(["soup", "unanswerable", "yes", "unsuitable", "unanswerable"])]


def test_vizwiz_contractions_take_the_apis_apostrophes():
    # The VizWiz API's table: "dont" -> "don’t" (U+2019), "cant" -> "can't" (ASCII), as written there; 4 matching
    # answers: 3 match whichever is left out: 1
    assert vizwiz.vizwiz_accuracy("dont", ["don\u2019t"] * 4) == 1.0
    assert vizwiz.vizwiz_accuracy("cant", ["can't"] * 4) == 1.0
    assert vizwiz.vizwiz_accuracy("dont", ["don't"] * 4) == 0.0


def test_vizwiz_names_the_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"Annotations/val\.json not found.*vizwiz\.org"):
        vizwiz.BENCHMARK.read(tmp_path, "val")


# ---- GQA --------------------------------------------------------------------------------------------------------

GQA_CASES = {  # question id -> (structural type, answer, reply, isBalanced)
    "20968379": ("verify", "no", "No.", True),           # "no" == "no": 1 (binary)
    "20968380": ("query", "traffic light", "Traffic light..", True),  # periods stripped, lowercased: 1 (open)
    "20968381": ("query", "man", "the man", True),       # "the man" != "man" (no article dropped): 0 (open)
    "20968382": ("compare", "yes", "Yes, it is.", True),  # "yes, it is" != "yes": 0 (binary)
    "20968383": ("query", "cat", "cat", False),           # not balanced: not a test-dev balanced question
}


def _gqa_fixture(root: Path) -> dict[str, str]:
    questions = {}
    for number, (qid, (structural, answer, _, balanced)) in enumerate(GQA_CASES.items()):
        _image(root / "images" / f"n{number}.jpg")
        questions[qid] = {"imageId": f"n{number}", "question": f"Question {number}?", "answer": answer,
                          "fullAnswer": f"The answer is {answer}.", "isBalanced": balanced,
                          "types": {"structural": structural, "semantic": "attr", "detailed": "x"}}
    (root / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    return {qid: case[2] for qid, case in GQA_CASES.items() if case[3]}


def test_gqa_reads_the_balanced_questions_with_llavas_prompt(tmp_path):
    _gqa_fixture(tmp_path)
    items = gqa.BENCHMARK.read(tmp_path, "testdev")
    assert [item.id for item in items] == ["20968379", "20968380", "20968381", "20968382"]
    assert items[1].prompt == "Question 1?" + SHORT and items[1].references == ("traffic light",)
    assert items[1].image == tmp_path / "images" / "n1.jpg" and items[1].image.is_file()
    assert [item.group for item in items] == ["binary", "open", "open", "binary"]


def test_gqa_scores_exact_match_as_eval_py(tmp_path):
    replies = _gqa_fixture(tmp_path / "data")
    items = gqa.BENCHMARK.read(tmp_path / "data", "testdev")
    result = gqa.BENCHMARK.score(items, replies)
    assert result.per_item["accuracy"] == {"20968379": 1.0, "20968380": 1.0, "20968381": 0.0, "20968382": 0.0}
    assert result.values["accuracy"] == 0.5
    assert result.details == {"accuracy[binary]": 0.5, "accuracy[open]": 0.5}
    path = gqa.BENCHMARK.write_submission(items, replies, tmp_path / "out")
    assert path.name == "testdev_balanced_predictions.json"
    assert json.loads(path.read_text())[1:] == [{"questionId": "20968380", "prediction": "traffic light"},
                                                {"questionId": "20968381", "prediction": "the man"},
                                                {"questionId": "20968382", "prediction": "yes, it is"}]


def test_gqa_names_the_missing_file_and_key(tmp_path):
    with pytest.raises(DataError, match=r"testdev_balanced_questions\.json not found.*GQA"):
        gqa.BENCHMARK.read(tmp_path, "testdev")
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps({"1": {"imageId": "n1", "isBalanced": True}}))
    with pytest.raises(DataError, match=r"question 1: no 'types'"):
        gqa.BENCHMARK.read(tmp_path, "testdev")


# ---- CHAIR ------------------------------------------------------------------------------------------------------

# synonyms.txt's format (a few lines of it, written here): one object a line, its name first
CHAIR_SYNONYMS = ["person, man, woman, people, baby", "horse, pony", "dog, puppy", "toilet", "chair, seat",
                  "bus, minibus"]
CHAIR_IMAGES = {  # image id -> (instance categories, reference caption, reply)
    # truth {person, horse}; "baby dog" is the dog, not a person; the dog is not in the image: 1 of 3 mentions
    # (person, horse, dog) false, the caption hallucinates; both objects covered
    101: (["person", "horse"], "A man riding a horse.", "A man riding a horse next to a baby dog."),
    # truth {toilet, chair} (the chair from the instances and the reference); "toilets" -> toilet; "seat" is no
    # chair where "toilet" is: mentions [toilet], none false; 1 of 2 objects covered
    102: (["toilet"], "A toilet next to a chair.", "Two toilets and the seat."),
    # truth {bus}: the reference's "bus" singularises to "bu" (pattern's rule) and counts for nothing, the
    # instances give it; "Buses" -> bus, "bus" -> "bu" (nothing), "people" -> person, false: 1 of 2
    103: (["bus"], "A red bus on the street.", "Buses and a bus near people."),
}


def _chair_fixture(root: Path) -> dict[str, str]:
    names = ["person", "horse", "dog", "toilet", "chair", "bus"]
    categories = [{"id": n + 1, "name": name, "supercategory": "x"} for n, name in enumerate(names)]
    images, instances, captions = [], [], []
    for image_id, (objects, reference, _) in CHAIR_IMAGES.items():
        file_name = f"COCO_val2014_{image_id:012d}.jpg"
        _image(root / "val2014" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": 4, "height": 4})
        instances += [{"id": len(instances) + 1, "image_id": image_id, "category_id": names.index(o) + 1,
                       "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0} for o in objects]
        captions.append({"id": image_id * 10, "image_id": image_id, "caption": reference})
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(
        {"images": images, "annotations": instances, "categories": categories}))
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images,
                                                                             "annotations": captions}))
    (root / "synonyms.txt").write_text("\n".join(CHAIR_SYNONYMS) + "\n")
    return {str(image_id): case[2] for image_id, case in CHAIR_IMAGES.items()}


def test_chair_reads_the_sampled_images_and_their_objects(tmp_path):
    _chair_fixture(tmp_path)
    items = chair.BENCHMARK.read(tmp_path, "val2014")
    assert [item.id for item in items] == ["101", "102", "103"]  # fewer images than the sample: all of them
    assert {item.prompt for item in items} == {"Please describe this image in detail."}
    assert [item.meta["objects"] for item in items] == [("horse", "person"), ("chair", "toilet"), ("bus",)]
    assert items[0].references == ("A man riding a horse.",) and items[0].image.is_file()


def test_chair_scores_as_the_official_chair_py(tmp_path):
    replies = _chair_fixture(tmp_path / "data")
    items = chair.BENCHMARK.read(tmp_path / "data", "val2014")
    result = chair.BENCHMARK.score(items, replies)
    assert result.per_item["chair_s"] == {"101": 1.0, "102": 0.0, "103": 1.0}
    assert result.per_item["chair_i"] == pytest.approx({"101": 1 / 3, "102": 0.0, "103": 0.5})
    assert result.values["chair_s"] == pytest.approx(2 / 3)  # 2 of 3 captions hallucinate
    assert result.values["chair_i"] == pytest.approx(2 / 6)  # (1 + 0 + 1) false of (3 + 1 + 2) mentions
    assert result.values["coverage"] == pytest.approx(4 / 5)  # (2 + 1 + 1) of (2 + 2 + 1) objects mentioned
    assert result.values["length"] == pytest.approx(7.0)  # (10 + 5 + 6) words / 3
    assert set(result.intervals) == {"chair_s", "length"}  # CHAIR-i, coverage: ratios of sums, not item means
    path = chair.BENCHMARK.write_submission(items, replies, tmp_path / "out")
    assert json.loads(path.read_text())[2] == {"image_id": 103, "caption": "Buses and a bus near people."}


def test_chair_singularises_as_pattern():
    assert [chair.singular(w) for w in ("dogs", "buses", "bus", "glasses", "glass", "knives", "mice", "women",
                                        "ponies", "ties", "collies", "scissors", "sheep")] == [
        "dog", "bus", "bu", "glass", "glas", "knife", "mouse", "woman", "pony", "ty", "collies", "scissors", "sheep"]


def test_chair_names_the_missing_synonyms_and_annotations(tmp_path):
    _chair_fixture(tmp_path)
    (tmp_path / "synonyms.txt").unlink()
    with pytest.raises(DataError, match=r"synonyms\.txt not found.*LisaAnne/Hallucination"):
        chair.BENCHMARK.read(tmp_path, "val2014")
    (tmp_path / "synonyms.txt").write_text("\n".join(CHAIR_SYNONYMS))
    (tmp_path / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(DataError, match=r"captions_val2014\.json not found.*cocodataset\.org"):
        chair.BENCHMARK.read(tmp_path, "val2014")
