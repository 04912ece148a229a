"""`verbo chat` and the Python chat API: OpenAI-style messages, streaming, stop strings, per-reply limits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
from PIL import Image

from verbovision.data.sources import read_records
from verbovision.errors import DataError
from verbovision.infer.chat import ChatSession
from verbovision.infer.messages import messages_record, prompt_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM

from .helpers import data_uri, image_message

SAMPLED = DecodeOptions(temperature=1.0, seed=3, max_new_tokens=12)
"""Sampling with a seed: varied text, so streams have several pieces, yet reproducible."""


@pytest.fixture(scope="module")
def vlm(model_dir) -> VLM:  # noqa: F811
    return VLM(model_dir, device="cpu")


@pytest.fixture(scope="module")
def images(shapes_data) -> list:
    return sorted((shapes_data / "images").glob("*.png"))[:2]


def test_chat_equals_ask_and_stream_adds_up_to_chat(vlm, images):
    image = Image.open(images[0])
    as_parts = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "Describe the image briefly."}]}]
    assert vlm.chat(as_parts) == vlm.ask(image, "Describe the image briefly.")
    assert vlm.chat(image_message(data_uri(image))) == vlm.chat(as_parts)
    pieces = list(vlm.stream(as_parts, SAMPLED))
    assert len(pieces) > 1 and "".join(pieces) == vlm.chat(as_parts, SAMPLED)


def test_stop_strings_and_per_reply_limits(vlm, images):
    record = prompt_record(images[0], "Describe the image briefly.")
    full = vlm.generate_details([record], SAMPLED)[0]
    assert full.text and full.completion_tokens <= 12 and full.prompt_tokens > 16
    windows = (full.text[i : i + 2] for i in range(len(full.text) // 2, len(full.text) - 1))
    cut = next(w for w in windows if not any(ch.isspace() for ch in w))  # a stop string from the reply's 2nd half
    stopped = vlm.generate_details([record], replace(SAMPLED, stop=(cut,)))[0]
    assert stopped.text == full.text[: full.text.find(cut)].strip() and stopped.finish_reason == "stop"
    # replies of one batch end at their own limits
    limits = [DecodeOptions(max_new_tokens=n) for n in (2, 5)]
    short, longer = vlm.generate_details([record, record], limits)
    assert (short.completion_tokens, short.finish_reason) == (2, "length") and longer.completion_tokens <= 5
    with pytest.raises(ValueError, match="batch_key"):
        vlm.generate_details([record, record], [DecodeOptions(), DecodeOptions(temperature=0.5)])


def test_bad_messages_are_clear_errors():
    with pytest.raises(DataError, match=r"messages\[0\]: role"):
        messages_record([{"role": "robot", "content": "hi"}])
    with pytest.raises(DataError, match="remote images are not fetched"):
        messages_record(image_message("https://example.com/a.png"))
    with pytest.raises(DataError, match=r"messages\[0\]: a message must be an object"):
        messages_record(["hi"])
    with pytest.raises(DataError, match="image part: image NoneType: give a path, a PIL image"):
        messages_record([{"role": "user", "content": [{"type": "image"}]}])


def test_developer_messages_are_system_messages():
    """OpenAI's current API names the system role `developer`."""
    for role in ("developer", "system"):
        record = messages_record([{"role": role, "content": "Be brief."}, {"role": "user", "content": "hi"}])
        assert [(t.role, t.text) for t in record.turns] == [("system", "Be brief."), ("user", "hi"), ("assistant", "")]


def test_session_saves_llava_json_that_reads_back(vlm, images, tmp_path):
    session = ChatSession(vlm, DecodeOptions(max_new_tokens=4), image=images[0], system="Be brief.")
    first = "".join(session.stream("Describe the image briefly."))
    assert session.command(f"/image {images[1]}").startswith("image: ")
    "".join(session.stream("How many shapes are there?"))
    assert "saved 5 messages" in session.command(f"/save {tmp_path / 'chat.json'}")
    [record] = read_records(tmp_path / "chat.json")
    assert [t.role for t in record.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert record.turns[2].text == first and [p.name for p in record.images] == [p.name for p in images]
    session.command("/reset")
    assert len(session.messages) == 1 and session.image_pending


def test_an_image_deleted_mid_conversation_does_not_end_it(vlm, images, tmp_path):
    """An image is read once, when it joins the conversation: deleting (or overwriting) its file later changes
    nothing the model sees, and /save says the file is gone."""
    options = DecodeOptions(max_new_tokens=4)
    copy = tmp_path / "photo.png"
    copy.write_bytes(images[0].read_bytes())
    kept, deleted = ChatSession(vlm, options, image=images[0]), ChatSession(vlm, options, image=copy)
    assert "".join(kept.stream("Describe the image briefly.")) == "".join(deleted.stream("Describe the image briefly."))
    copy.unlink()
    assert "".join(kept.stream("And now?")) == "".join(deleted.stream("And now?"))
    saved = deleted.command(f"/save {tmp_path / 'chat.json'}")
    assert saved == f"saved 4 messages to {tmp_path / 'chat.json'} (gone from disk since: {copy})"
    assert json.loads((tmp_path / "chat.json").read_text())[0]["image"] == str(copy)


def test_save_updates_its_own_file_and_replaces_no_other(vlm, images, tmp_path):
    """/save data/train.json (a slip of the tab key) replaced the dataset with one conversation, silently."""
    session = ChatSession(vlm, DecodeOptions(max_new_tokens=4), image=images[0])
    "".join(session.stream("Describe the image briefly."))
    dataset = tmp_path / "train.json"
    dataset.write_text("[]")
    with pytest.raises(DataError, match=re.escape(f"/save {dataset}: a file this chat did not write; give a new file "
                                                  "name (or delete it first)")):
        session.command(f"/save {dataset}")
    assert dataset.read_text() == "[]"
    assert session.command(f"/save {tmp_path / 'chat.json'}").startswith("saved 2 messages")
    "".join(session.stream("And now?"))
    assert session.command(f"/save {tmp_path / 'chat.json'}").startswith("saved 4 messages")


def test_save_to_a_folder_is_an_error_the_conversation_survives(vlm, images, tmp_path):
    session = ChatSession(vlm, DecodeOptions(max_new_tokens=4), image=images[0])
    "".join(session.stream("Describe the image briefly."))
    message = f"/save {tmp_path}: cannot write (Is a directory); give a file path"
    with pytest.raises(DataError, match=re.escape(message)):
        session.command(f"/save {tmp_path}")
    assert list(tmp_path.parent.glob(f".{tmp_path.name}.*")) == [], "the temporary file stayed"
    assert len(session.messages) == 2


def test_chat_works_as_a_pipe(model_dir, images, tmp_path):  # noqa: F811
    script = "\n".join([
        "Describe the image briefly.",
        f"/image {images[1]}",
        "How many shapes are there?",
        "/image missing.png",
        f"/save {tmp_path / 'chat.json'}",
        "/reset",
        "And now?",
        "/quit",
        "never read",
    ]) + "\n"
    result = subprocess.run([sys.executable, "-m", "verbovision", "chat", str(model_dir), "--image", str(images[0]),
                             "--max-new-tokens", "6"], input=script, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3, "one reply line per message, nothing else on stdout"
    assert "missing.png: image not found" in result.stderr and "conversation cleared" in result.stderr
    saved = json.loads((tmp_path / "chat.json").read_text())[0]
    assert len(saved["conversations"]) == 4 and len(saved["image"]) == 2


def test_a_piped_line_that_is_not_utf8_is_an_error_the_conversation_survives(model_dir):  # noqa: F811
    """A Latin-1 line among UTF-8 ones (stdin reads it with surrogateescape): one error line, not a traceback from
    the tokenizer."""
    script = "Describe the image briefly.\n".encode() + "caf\xe9?\n".encode("latin-1") + b"And now?\n"
    result = subprocess.run([sys.executable, "-m", "verbovision", "chat", str(model_dir), "--max-new-tokens", "4"],
                            input=script, capture_output=True, timeout=300, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.decode().splitlines() if "error" in line.lower()]
    assert errors == ["verbo: error: messages: record 'chat': text is not valid UTF-8 (a lone surrogate); send UTF-8 "
                      "text"], result.stderr
