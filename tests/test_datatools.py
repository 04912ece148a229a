"""`verbo data check / clean / split / convert`, and training on real-world data: mixed batches, long records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from verbovision.cli import make_parser
from verbovision.config.parse import parse_recipe
from verbovision.data.batching import Collator
from verbovision.data.check import DUPLICATE_ID, DUPLICATE_ID_MESSAGE
from verbovision.data.clean import guess_language, normalise_text
from verbovision.data.encoding import Encoder
from verbovision.data.image_checks import dhash
from verbovision.data.records import (
    EMPTY_ANSWER,
    IMAGE_TOKENS,
    MISSING_IMAGE,
    TOO_LONG,
    TOO_SMALL,
    UNREADABLE_IMAGE,
    Record,
    RecordError,
    Turn,
)
from verbovision.data.sources import read_records
from verbovision.errors import DataError
from verbovision.files import read_json
from verbovision.model.store import load_model
from verbovision.train.run import train_recipe

from .helpers import png_bytes, stage, tiny_recipe, write_tar


def verbo_data(*argv: str):
    """Run a `verbo data` subcommand through `verbo`'s parser, its errors raised rather than printed."""
    args = make_parser().parse_args(["data", *map(str, argv)])
    return args.func(args)


def photo(seed: int, size=(96, 72)) -> Image.Image:
    """A smooth random picture (blurred noise): distinct per seed, like photos are."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    return small.resize(size, Image.Resampling.BICUBIC)


def record(rid: str, image: str | None, reply: str, question: str = "Describe the image briefly.") -> dict:
    prompt = f"<image>\n{question}" if image else question
    row = {"id": rid, "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": reply}]}
    return {**row, "image": image} if image else row


@pytest.fixture
def dirty(tmp_path) -> tuple[Path, dict[str, str]]:
    """A LLaVA dataset with known bad records; returns its file and {record id: expected removal reason}."""
    images = tmp_path / "raw" / "images"
    images.mkdir(parents=True)
    for i in range(6):
        photo(i).save(images / f"ok{i}.png")
    photo(0).save(images / "copy-of-ok0.bmp")  # same pixels, another file and format
    photo(1).resize((80, 60)).save(images / "near-ok1.jpg", quality=80)  # resized, recompressed
    photo(9, (30, 24)).save(images / "tiny.png")  # under the one minimum side that check and clean share
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    photo(7).save(images / "whole.jpg")
    (images / "cut.jpg").write_bytes((images / "whole.jpg").read_bytes()[:400])
    rows = [
        record("keep-0", "images/ok0.png", "a  photo\u00a0of  colours "),
        record("keep-1", "images/ok1.png", "cafe\u0301 colours, softly"),  # decomposed é, normalised to NFC
        record("keep-1-again", "images/ok1.png", "another question about the same image", "What is it?"),
        record("keep-2", "images/ok2.png", "Um gato preto no sofá"),
        record("keep-yes", "images/ok2.png", "yes", "Is there a cat?"),  # an answer, not a caption: one word is fine
        record("keep-text", None, "Hello there, friend."),
        record("dup", "images/copy-of-ok0.bmp", "the same photo"),
        record("near", "images/near-ok1.jpg", "the same photo, smaller"),
        record("tiny", "images/tiny.png", "a very small picture"),
        record("corrupt", "images/corrupt.png", "a broken file"),
        record("cut", "images/cut.jpg", "a truncated file"),
        record("missing", "images/nope.png", "missing"),
        record("empty", "images/ok3.png", "   "),
        record("one-word", "images/ok3.png", "photo"),
        record("dots", "images/ok3.png", "...", "What colour is it?"),
        record("long", "images/ok4.png", " ".join(["word"] * 200)),
        record("russian", "images/ok5.png", "Чёрная кошка спит на диване"),
        {"id": "mismatch", "image": "images/ok5.png",
         "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]},
    ]
    path = tmp_path / "raw" / "data.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    expected = {"dup": "duplicate image", "near": "near-duplicate image", "tiny": TOO_SMALL, "corrupt": UNREADABLE_IMAGE,
                "cut": UNREADABLE_IMAGE, "missing": MISSING_IMAGE, "empty": EMPTY_ANSWER, "one-word": "caption too short",
                "dots": "answer without words", "long": "caption too long", "russian": "language",
                "mismatch": IMAGE_TOKENS}
    return path, expected


def test_clean_removes_exactly_the_bad_records_with_reasons(dirty, tmp_path, capsys):
    """With the default limits: a one-word or a 200-word caption goes, a one-word answer to a question stays."""
    path, expected = dirty
    out = tmp_path / "clean"
    verbo_data("clean", path, "--out", out, "--langs", "en,pt")
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["id"]: r["reason"] for r in removed} == expected
    assert "record 'keep-0'" in next(r["detail"] for r in removed if r["id"] == "dup")
    kept = read_records(out / "data.json")
    assert [r.id for r in kept] == ["keep-0", "keep-1", "keep-1-again", "keep-2", "keep-yes", "keep-text"]
    assert kept[0].turns[-1].text == "a photo of colours" and kept[1].turns[-1].text == "caf\u00e9 colours, softly"
    assert all(p.parent == (out / "images").resolve() and p.exists() for r in kept for p in r.images)
    assert len(list((out / "images").iterdir())) == 3  # ok1.png once, though two records use it
    assert "kept 6 of 18 records" in capsys.readouterr().out


@pytest.mark.parametrize("link", [[], ["--link"]])
def test_cleaning_a_cleaned_set_in_place_keeps_its_images(dirty, tmp_path, link):
    path, _ = dirty
    out = tmp_path / "clean"
    verbo_data("clean", path, "--out", out, *link)
    before = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    verbo_data("clean", out / "data.json", "--out", out, *link)  # its images are already where copies would go
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == before
    assert all(p.exists() for r in read_records(out / "data.json") for p in r.images)


def test_cleaning_in_place_never_copies_an_image_over_another_of_the_same_name(tmp_path):
    """A cleaned set cleaned again in place, with a record added whose image, from elsewhere, has the name of one
    already in its images/ folder (and comes first): each record keeps its own picture."""
    out, elsewhere = tmp_path / "clean", tmp_path / "elsewhere"
    (out / "images").mkdir(parents=True)
    elsewhere.mkdir()
    red, blue = (Image.new("RGB", (32, 32), colour) for colour in ("red", "blue"))
    blue.save(out / "images/a.png")
    red.save(elsewhere / "a.png")
    rows = [{"id": "new", "image": str(elsewhere / "a.png"),
             "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]},
            {"id": "old", "image": "images/a.png",
             "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "blue"}]}]
    (out / "data.json").write_text(json.dumps(rows))
    verbo_data("clean", out / "data.json", "--out", out, "--near-duplicates", "-1")
    colours = {r.id: Image.open(r.images[0]).convert("RGB").getpixel((0, 0)) for r in read_records(out / "data.json")}
    assert colours == {"new": (255, 0, 0), "old": (0, 0, 255)}


def test_clean_word_limits_are_flags(dirty, tmp_path):
    path, expected = dirty
    verbo_data("clean", path, "--out", tmp_path / "clean", "--min-words", "1", "--max-words", "400")
    removed = {json.loads(line)["id"] for line in (tmp_path / "clean/removed.jsonl").read_text().splitlines()}
    assert removed == set(expected) - {"one-word", "long", "russian"}


def test_check_counts_problems_by_kind_and_exits_non_zero(dirty, capsys):
    path, _ = dirty
    with pytest.raises(DataError, match="6 of 18 records have problems"):
        verbo_data("check", path)
    out = capsys.readouterr().out
    assert "18 records, 12 usable, 6 with problems" in out
    verbo_data("check", path, "--allow", "--json")
    report = json.loads(capsys.readouterr().out)
    problems = {kind: info["examples"] for kind, info in report["problems"].items()}
    assert problems == {UNREADABLE_IMAGE: ["corrupt", "cut"], MISSING_IMAGE: ["missing"], EMPTY_ANSWER: ["empty"],
                        IMAGE_TOKENS: ["mismatch"], TOO_SMALL: ["tiny"]}
    assert "corrupt.png: unreadable image" in report["problems"][UNREADABLE_IMAGE]["first"]


def test_check_warns_of_duplicate_ids_without_failing(tmp_path, capsys):
    # two records with one id were one in predictions and scores, unflagged
    photo(0).save(tmp_path / "a.png")
    rows = [{"id": rid, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                            {"from": "gpt", "value": "A smooth blur of colour."}]}
            for rid in ("x", "y", "x", "x")]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    verbo_data("check", path)  # the records train: a warning, not a problem
    out = capsys.readouterr().out
    assert "4 records, 4 usable, 0 with problems" in out and "warning: duplicate id" in out and "x (3 records)" in out
    verbo_data("check", path, "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["warnings"] == {DUPLICATE_ID: {"count": 1, "examples": ["x (3 records)"],
                                                 "first": DUPLICATE_ID_MESSAGE}}
    assert report["problems"] == {}


def test_split_is_grouped_by_image_and_seeded(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(30):
        photo(i, (16, 16)).save(images / f"{i}.png")
        rows += [record(f"{i}-{q}", f"images/{i}.png", f"answer {q}", f"question {q}?") for q in range(1 + i % 3)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    verbo_data("split", tmp_path / "d.json", "--out", tmp_path / "a", "--seed", "3")
    verbo_data("split", tmp_path / "d.json", "--out", tmp_path / "b", "--seed", "3")
    splits = {name: read_records(tmp_path / "a" / f"{name}.json") for name in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == len(rows)
    owners = {}
    for name, records in splits.items():
        for r in records:
            assert owners.setdefault(r.images[0], name) == name, f"{r.images[0]} in two splits"
    assert abs(len(splits["train"]) - 0.8 * len(rows)) <= 3 and len(splits["val"]) >= 3
    for name in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{name}.json").read_bytes() == (tmp_path / "b" / f"{name}.json").read_bytes()
    verbo_data("split", tmp_path / "d.json", "--out", tmp_path / "c", "--seed", "4")
    assert (tmp_path / "c/train.json").read_bytes() != (tmp_path / "a/train.json").read_bytes()
    with pytest.raises(DataError, match="--ratios"):
        verbo_data("split", tmp_path / "d.json", "--out", tmp_path / "d", "--ratios", "0.8;0.2")



def test_split_into_a_folder_of_an_earlier_split_names_its_other_files(tmp_path, capsys):
    rows = [record(str(i), None, f"answer {i}", f"question {i}?") for i in range(20)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    verbo_data("split", tmp_path / "d.json", "--out", tmp_path / "s")
    assert "also holds" not in capsys.readouterr().err
    verbo_data("split", tmp_path / "d.json", "--out", tmp_path / "s", "--ratios", "0.9,0.1", "--names", "train,val")
    assert f"verbo: note: {tmp_path / 's'} also holds test.json, not written by this split" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--ratios", "0.5,0.5", "--names", "a,a"], "each split needs a name of its own"),  # one file would hold both
    (["--ratios", "0.5,0.5", "--names", ",b"], "each split needs a name of its own"),
    (["--ratios", "nan,1"], "need one non-negative ratio"),
    (["--ratios", "1,inf"], "need one non-negative ratio"),
])
def test_split_refuses_names_and_ratios_that_would_lose_or_misplace_records(tmp_path, flags, message):
    photo(0).save(tmp_path / "a.png")
    (tmp_path / "d.json").write_text(json.dumps([record(str(i), "a.png", f"answer {i}") for i in range(4)]))
    with pytest.raises(DataError, match=message):
        verbo_data("split", tmp_path / "d.json", "--out", tmp_path / "out", *flags)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["split", "{dir}/train.json", "--out", "{dir}"],
                                     ["convert", "{dir}/train.json", "--out", "{dir}/train.json"]])
def test_split_and_convert_refuse_to_write_over_the_file_they_read(tmp_path, command):
    """`verbo data split data/train.json --out data` replaced the data with its train part (the skipped records
    lost, and a rerun split the part again); convert with --out its input did the same with all but the skipped."""
    rows = [record(str(i), None, f"answer {i}", f"question {i}?") for i in range(20)] + [{"id": "bad"}]
    data = tmp_path / "train.json"
    data.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=f"{data}: --out would write train.json over it, the data being read"):
        verbo_data(*(arg.format(dir=tmp_path) for arg in command))
    assert json.loads(data.read_text()) == rows and sorted(p.name for p in tmp_path.iterdir()) == ["train.json"]


def test_convert_coco_keeps_all_references(tmp_path, capsys):
    photo(0).save(tmp_path / "a.jpg")
    (tmp_path / "captions.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 1, "caption": "one"}, {"image_id": 1, "caption": "two"}]}))
    verbo_data("convert", tmp_path / "captions.json", "--to", "llava", "--out", tmp_path / "out/llava.json")
    assert "skipped 1 (empty answer), e.g. 2" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "out/llava.json").read_text())
    assert row["image"] == "../a.jpg" and row["references"] == ["one", "two"]
    assert read_records(tmp_path / "out/llava.json")[0].references == ["one", "two"]


def test_convert_to_a_jsonl_name_writes_one_record_a_line(tmp_path):
    """`--out x.jsonl` once wrote one JSON list into it, which JSONL readers (ours too) read as invalid lines."""
    photo(0).save(tmp_path / "a.png")
    (tmp_path / "d.json").write_text(json.dumps([record(str(i), "a.png", f"answer {i}") for i in range(3)]))
    verbo_data("convert", tmp_path / "d.json", "--out", tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["conversations"][-1]["value"] for line in lines] == ["answer 0", "answer 1", "answer 2"]
    assert [r.turns[-1].text for r in read_records(tmp_path / "out.jsonl")] == ["answer 0", "answer 1", "answer 2"]


def test_convert_webdataset_extracts_members(tmp_path):

    write_tar(tmp_path / "s.tar", {"k/0.png": png_bytes(), "k/0.txt": b"blue", "k/1.png": png_bytes(), "k/1.txt": b"also"})
    verbo_data("convert", tmp_path / "s.tar", "--out", tmp_path / "wds.json")
    records = read_records(tmp_path / "wds.json")
    assert [p.name for r in records for p in r.images] == ["0.png", "1.png"]
    assert records[0].images[0].parent.name == "wds_images" and records[0].turns[-1].text == "blue"


def test_hashes_and_language_guess():
    assert dhash(photo(1)) != dhash(photo(2))
    assert bin(dhash(photo(1)) ^ dhash(photo(1).resize((50, 40)))).count("1") <= 4
    assert [guess_language(t) for t in ("a cat on the sofa", "um gato no sofá", "кошка", "一只猫", "1 2 3")] == \
        ["en", "pt", "ru", "zh", None]
    assert normalise_text("  a\u200b  b \r\n\r\n\r\n c\t ") == "a b\n\nc"


# ---------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, shapes_data) -> tuple[Path, Path]:
    """A tiny run whose every batch mixes image and text-only records; returns (run folder, data folder)."""
    root = tmp_path_factory.mktemp("mixed")
    data = root / "data"
    shutil.copytree(shapes_data, data)
    records = json.loads((data / "train/caption_short_en.json").read_text())[:6]
    text_only = [record(f"text-{i}", None, f"the answer is {i}", "What is the answer?") for i in range(4)]
    (data / "train/mixed.json").write_text(json.dumps(records + text_only))
    recipe = parse_recipe(tiny_recipe(data, [stage(
        "mixed", data={"train": ["train/mixed.json"]}, batch_size=10, max_steps=3,
        train={"vision": "full", "connector": "full", "language": "full"})]))
    train_recipe(recipe, root / "run")
    return root / "run", data


def test_batches_mixing_text_only_and_image_records_train(mixed_run):
    run, data = mixed_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(np.isfinite(losses))
    assert not read_json(run / "run.json")["skipped"]["mixed"]
    model, processor = load_model(run / "final", device="cpu")
    encoder = Encoder(processor, "chat")
    examples = [encoder.encode(r) for r in read_records(data / "train/mixed.json")]
    batch = Collator(encoder)(examples).batch
    assert batch["pixel_values"].shape[0] == 6 and batch["input_ids"].shape[0] == 10  # [n_images, 3, H, W], [B, T]
    labels = batch.pop("labels")
    logits = model(**batch).logits  # [B, T, V]
    assert logits.shape[:2] == labels.shape and bool(logits.isfinite().all())


def test_too_long_records_are_truncated_after_images_or_dropped(mixed_run):
    run, data = mixed_run
    _, processor = load_model(run / "final", device="cpu")
    long_reply = " ".join(["circle"] * 80)
    image_record = Record("long", [data / "images/000000.png"],
                          [Turn("user", "<image>\nDescribe."), Turn("assistant", long_reply)], "test")
    full = Encoder(processor, "chat", max_length=4096).encode(image_record)
    n_image = len(Encoder(processor).image_tokens.fixed)
    limit = next(i for i, label in enumerate(full.labels) if label != -100) + 5
    cut = Encoder(processor, "chat", max_length=limit, truncation="truncate").encode(image_record)
    assert cut.input_ids == full.input_ids[:limit] and cut.labels == full.labels[:limit]
    assert cut.input_ids.count(processor.image_token_id) == n_image and any(x != -100 for x in cut.labels)
    with pytest.raises(RecordError, match="exceed max_length") as dropped:
        Encoder(processor, "chat", max_length=limit).encode(image_record)
    assert dropped.value.kind == TOO_LONG
    with pytest.raises(RecordError, match="image tokens end at") as through_images:
        Encoder(processor, "chat", max_length=n_image // 2, truncation="truncate").encode(image_record)
    assert through_images.value.kind == TOO_LONG


def test_check_with_model_flags_too_long_records(mixed_run, tmp_path, capsys):
    run, data = mixed_run
    rows = json.loads((data / "train/mixed.json").read_text())
    rows[0]["conversations"][1]["value"] = " ".join(["circle"] * 300)
    (data / "train/long.json").write_text(json.dumps(rows))
    verbo_data("check", data / "train/long.json", "--model", run / "final", "--max-length", "200", "--allow")
    out = capsys.readouterr().out
    assert f"{TOO_LONG}" in out and rows[0]["id"] in out and "10 records, 9 usable" in out
    # --template takes every layout the generating commands' --template takes (a GIT or ViT-GPT2 captioner's caption)
    verbo_data("check", data / "train/long.json", "--model", run / "final", "--max-length", "200", "--template",
               "caption", "--allow")
    out = capsys.readouterr().out
    assert f"{TOO_LONG}" in out and rows[0]["id"] in out
    with pytest.raises(DataError, match="--max-length and --template say how --model would encode"):  # not ignored
        verbo_data("check", data / "train/long.json", "--max-length", "200", "--allow")
