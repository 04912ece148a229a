"""`verbo predict`: LLaVA questions in, answers out, batched, resumable after a kill, splittable into chunks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from verbovision.cli import main
from verbovision.errors import DataError
from verbovision.infer.messages import prompt_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.predict import AnswerLog, PredictConfig, predict, read_questions
from verbovision.infer.vlm import VLM

from .helpers import SAMPLED, limit_cutting_some


def write_questions(path: Path, shapes_data: Path, n: int) -> list[int]:
    """n questions with images relative to `shapes_data` (every fifth one text-only)."""
    images = sorted((shapes_data / "images").glob("*.png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        row = {"question_id": i, "text": "How many shapes are there?" if i % 2 else "Describe the image briefly."}
        if i % 5:
            row["image"] = str(images[i % len(images)].relative_to(shapes_data))
        rows.append(row)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [row["question_id"] for row in rows]


def answer_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def vlm(model_dir) -> VLM:  # noqa: F811
    return VLM(model_dir, device="cpu")


def test_killed_run_resumes_with_every_question_answered_once(model_dir, shapes_data, tmp_path):  # noqa: F811
    questions = tmp_path / "questions.jsonl"
    ids = write_questions(questions, shapes_data, 40)
    out = tmp_path / "answers.jsonl"
    command = [sys.executable, "-m", "verbovision", "predict", str(model_dir), "--questions", str(questions),
               "--image-folder", str(shapes_data), "--out", str(out), "--max-new-tokens", "8"]
    first = subprocess.Popen([*command, "--batch-size", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    for _ in range(6000):  # until the first batch is written (bounded: ~2 minutes)
        if first.poll() is not None or (out.exists() and out.read_bytes().count(b"\n") >= 2):
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, "killed mid-file: " + first.stderr.read()
    written = len(answer_lines(out))
    assert 2 <= written < len(ids)
    with out.open("a") as f:  # what a kill in the middle of a write would leave
        f.write('{"question_id": 39, "prompt": "Descr')

    second = subprocess.run([*command, "--batch-size", "16"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert f"{written} already answered" in second.stderr and "question/s" in second.stderr
    answers = answer_lines(out)
    assert Counter(a["question_id"] for a in answers) == Counter(ids)
    assert len({a["answer_id"] for a in answers}) == len(ids)
    this_run = [a["finish_reason"] for a in answers[written:]]
    assert f"truncated: {this_run.count('length')} of {len(this_run)} replies hit max_new_tokens=8" in second.stderr
    row = answers[-1]
    assert set(row) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata", "finish_reason"}
    assert row["model_id"] == str(model_dir) and row["metadata"]["max_new_tokens"] == 8


def test_answers_say_which_replies_were_cut_at_max_new_tokens(vlm, shapes_data, tmp_path):
    questions = tmp_path / "q.jsonl"
    write_questions(questions, shapes_data, 10)
    records = [prompt_record(q.image, q.text) for q in read_questions(questions, shapes_data)]
    limit, cut = limit_cutting_some(vlm.generate_details(records, DecodeOptions(64, **SAMPLED)))

    out = tmp_path / "answers.jsonl"
    summary = predict(vlm, PredictConfig(questions, out, shapes_data, options=DecodeOptions(limit, **SAMPLED)))
    assert [a["finish_reason"] for a in answer_lines(out)] == ["length" if c else "stop" for c in cut]
    assert (summary.truncation.truncated, summary.truncation.replies) == (sum(cut), len(cut))
    assert f"truncated: {sum(cut)} of {len(cut)} replies hit max_new_tokens={limit}" in str(summary)


def test_chunks_split_the_questions(vlm, shapes_data, tmp_path):
    questions = tmp_path / "q.jsonl"
    ids = write_questions(questions, shapes_data, 10)
    outs = [tmp_path / f"answers-{k}.jsonl" for k in range(3)]
    for k, out in enumerate(outs):
        config = PredictConfig(questions, out, image_folder=shapes_data, num_chunks=3, chunk_idx=k,
                               batch_size=4, options=DecodeOptions(max_new_tokens=4))
        summary = predict(vlm, config)
        assert summary.answered == len(answer_lines(out)) and not summary.skipped
    chunks = [[a["question_id"] for a in answer_lines(out)] for out in outs]
    assert [len(c) for c in chunks] == [3, 3, 4] and sum(chunks, []) == ids


def test_image_folder_is_also_image_root_as_the_other_commands_name_it(model_dir, shapes_data, tmp_path):
    from verbovision.cli import main

    questions = tmp_path / "q.jsonl"
    ids = write_questions(questions, shapes_data, 3)
    out = tmp_path / "answers.jsonl"
    args = ["--questions", str(questions), "--out", str(out), "--max-new-tokens", "2", "--device", "cpu"]
    assert main(["predict", str(model_dir), *args, "--image-root", str(shapes_data)]) == 0
    assert [a["question_id"] for a in answer_lines(out)] == ids


def test_unreadable_images_are_skipped_and_reported(vlm, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": "a", "image": "broken.png", "text": "What?"}\n'
                         '{"question_id": "b", "text": "Describe the image briefly."}\n')
    summary = predict(vlm, PredictConfig(questions, tmp_path / "out.jsonl", options=DecodeOptions(max_new_tokens=4)))
    assert summary.answered == 1 and "unreadable image" in summary.skipped["a"]
    assert "1 skipped" in str(summary) and [a["question_id"] for a in answer_lines(tmp_path / "out.jsonl")] == ["b"]


def test_questions_the_model_cannot_take_are_skipped_and_reported(vlm, shapes_data, tmp_path):
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": "no-image", "text": "<image>\\nWhat is it?"}\n'
                         f'{{"question_id": "two-marks", "image": "{image}", "text": "<image> or <image>?"}}\n'
                         f'{{"question_id": "fine", "image": "{image}", "text": "What is it?"}}\n')
    summary = predict(vlm, PredictConfig(questions, tmp_path / "out.jsonl", options=DecodeOptions(max_new_tokens=4)))
    assert summary.answered == 1 and [a["question_id"] for a in answer_lines(tmp_path / "out.jsonl")] == ["fine"]
    assert "1 image tokens in the text for 0 images" in summary.skipped["no-image"]
    assert summary.skipped["two-marks"].startswith(f"{questions}: record 'two-marks': 2 image tokens in the text for 1 "
                                                   "images")


def test_answers_path_that_is_a_folder_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "text": "a"}\n')
    assert main(["predict", "no/such-model", "--questions", str(tmp_path / "q.jsonl"), "--out", str(tmp_path)]) == 2
    message = f"--out {tmp_path}: a folder; give the answers file (JSONL) to write"
    assert capsys.readouterr().err == f"verbo: error: {message}\n"


def test_answers_of_another_model_or_decoding_are_not_taken_for_this_runs(vlm, shapes_data, tmp_path, capsys):
    """`verbo predict B --out answers.jsonl` over model A's answers said "0 answered, N already answered", exit 0:
    the file held A's answers as B's. Another model_id or decoding is refused before the model loads."""
    questions, out = tmp_path / "q.jsonl", tmp_path / "answers.jsonl"
    write_questions(questions, shapes_data, 3)
    predict(vlm, PredictConfig(questions, out, shapes_data, model_id="A", options=DecodeOptions(max_new_tokens=3)))
    capsys.readouterr()
    argv = ["predict", "no/such-model", "--questions", str(questions), "--image-folder", str(shapes_data), "--out",
            str(out), "--max-new-tokens", "3"]
    assert main(argv) == 2  # its model_id is "no/such-model"
    assert capsys.readouterr().err == (f"verbo: error: {out}:1: answered with model_id 'A' (now 'no/such-model'): "
                                       "give another --out, or the flags it was answered with to continue it\n")
    with pytest.raises(DataError, match=f"{out}:1: answered with max_new_tokens 3 \\(now 4\\)"):
        predict(vlm, PredictConfig(questions, out, shapes_data, model_id="A", options=DecodeOptions(max_new_tokens=4)))
    same = PredictConfig(questions, out, shapes_data, model_id="A", options=DecodeOptions(max_new_tokens=3))
    done = predict(vlm, same)
    assert (done.already, done.answered) == (3, 0)


def test_questions_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "q.jsonl"  # as Windows editors save UTF-8
    path.write_bytes(b'\xef\xbb\xbf{"question_id": 1, "text": "a"}\r\n{"question_id": 2, "text": "b"}\r\n')
    assert [q.id for q in read_questions(path)] == [1, 2]


def test_a_bad_questions_file_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "q.jsonl").write_text('{"question_id": 1}\n')
    assert main(["predict", "no/such-model", "--questions", str(tmp_path / "q.jsonl"), "--out", "a.jsonl"]) == 2
    assert capsys.readouterr().err == f"verbo: error: {tmp_path / 'q.jsonl'}:1: question 1 has no 'text'\n"


def test_bad_question_files_name_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\n\n{"question_id": 1, "text": "b"}\n')
    with pytest.raises(DataError, match=r"q.jsonl:3: question_id 1 repeats line 1"):
        read_questions(path)
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2}\n')
    with pytest.raises(DataError, match=r"q.jsonl:2: question 2 has no 'text'"):
        read_questions(path)


def test_answer_log_cuts_a_torn_last_line(tmp_path):
    log = AnswerLog(tmp_path / "a.jsonl")
    log.append([{"question_id": 1}, {"question_id": "x"}])
    with open(log.path, "a") as f:
        f.write('{"question_id": 3, "te')
    assert log.answered_ids() == {1, "x"}
    assert log.path.read_text().endswith('"x"}\n')
