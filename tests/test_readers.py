"""Readers and image loading: every format (real samples + files written here), malformed input, odd images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from verbovision.data.convert import convert_data
from verbovision.data.images import BytesImage, FileSlice, open_image
from verbovision.data.readers import detect_format, scan
from verbovision.data.records import (
    BAD_CONVERSATION,
    EMPTY_ANSWER,
    IMAGE_TOKENS,
    INVALID_JSON,
    MISSING_IMAGE,
    NOT_UTF8,
    UNREADABLE_IMAGE,
    RecordError,
    SkipLog,
)
from verbovision.config.sources import Source
from verbovision.data.rows import Columns, ReadOptions, source_options
from verbovision.data.sources import read_records
from verbovision.errors import DataError

from .helpers import kinds, png_bytes, write_jsonl, write_tar

FORMATS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "formats"
needs_samples = pytest.mark.skipif(not FORMATS_DIR.exists(),
                                   reason=f"real format samples not available ({FORMATS_DIR} is absent)")
CAPTIONS = {"pt": "Um gato preto dorme no sofá, ao lado da janela.", "ru": "Чёрная кошка спит на диване у окна.",
            "zh": "一只黑猫睡在窗边的沙发上。"}


def png(path: Path, colour=(200, 40, 40), size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# ---------------------------------------------------------------------------------------------------- real samples


@needs_samples
def test_llava_multi_turn_sample():
    records = read_records(FORMATS_DIR / "llava/llava_v1_5_mix665k_first2_quoted.json")
    assert [r.id for r in records] == ["000000033471", "000000052846"]
    first = records[0]
    assert [t.role for t in first.turns] == ["user", "assistant"] * 3
    assert first.turns[0].text.startswith("<image>\n") and first.images[0].name == "000000033471.jpg"
    assert first.images[0].parent.name == "train2017"
    assert first.references == ["The bus is driving down the street, which is crowded with people and other vehicles."]


@needs_samples
@pytest.mark.parametrize("name", ["llava_cc3m_pretrain_595k_chat_first1_quoted.json",
                                  "llava_pretrain_blip_laion_cc_sbu_558k_first1_quoted.json"])
def test_llava_image_token_after_text(name):
    (record,) = read_records(FORMATS_DIR / "llava" / name)
    assert record.turns[0].text.endswith("\n<image>") and record.turns[0].text.count("<image>") == 1
    assert len(record.images) == 1


@needs_samples
def test_llava_documented_example_error_names_line_and_column(tmp_path):
    # The documented example is a ```json block: take it as a user would paste it into a file.
    block = (FORMATS_DIR / "llava/llava_docs_Finetune_Custom_Data_example.txt").read_text().split("```json\n")[1]
    path = tmp_path / "custom.json"
    path.write_text(block.split("```")[0])
    with pytest.raises(DataError) as error:
        read_records(path)
    assert f"{path}:14:5: invalid JSON: Expecting value (trailing comma at line 13 column 8)" == str(error.value)


@needs_samples
def test_extra_keys_are_ignored():
    records = read_records(FORMATS_DIR / "gllava_geo170k/mulberry_comcts_demo_geo3k_llava_format.first3.json")
    assert [r.turns[-1].text for r in records] == ["Answer:D", "Answer:A", "Answer:C"]


@needs_samples
def test_instruction_output_jsonl_reads_as_pairs():
    path = FORMATS_DIR / "llava/llava_playground_coco2014_val_gpt4_qa_30x3.head6.jsonl"
    assert detect_format(path) == "pairs"
    records = read_records(path)
    assert len(records) == 6 and records[0].id == "000000525439"
    assert records[0].turns[0].text == "<image>\nWhat is the position of the skateboard in the image?"
    assert records[0].turns[1].text.startswith("The skateboard in the image is in an upside-down position")


@needs_samples
def test_caption_lists_become_references():
    records = read_records(FORMATS_DIR / "llava/llava_caps_boxes_coco2014_val_80.head3.jsonl")
    assert [len(r.references) for r in records] == [5, 5, 5]
    assert records[0].turns[-1].text == records[0].references[0] == "A donut shop is full of different flavors of donuts."


@needs_samples
def test_coco_sample_reports_images_without_captions_and_orphan_captions():
    items = list(scan(FORMATS_DIR / "coco_captions/coco_captions_2014_structure_quoted.json"))
    problems = {(i.record_id, i.kind) for i in items if isinstance(i, RecordError)}
    # the quoted header lists two val2014 images but quotes captions of train2014 images
    assert {("391895", EMPTY_ANSWER), ("522418", EMPTY_ANSWER), ("322141", MISSING_IMAGE)} <= problems
    assert len(items) == 2 + 5


@needs_samples
def test_hf_imagefolder_samples():
    single = read_records(FORMATS_DIR / "hf_imagefolder_example")
    assert [r.turns[-1].text for r in single] == ["This is a golden retriever playing with a ball", "A german shepherd",
                                                 "One chihuahua"]
    assert single[0].id == "train/0000.png" and open_image(single[0].images[0]).size == (32, 24)
    multi = read_records(FORMATS_DIR / "hf_imagefolder_multicap")
    assert [r.references for r in multi][0] == ["caption a 0", "caption b 0"]
    assert multi[0].turns[-1].text == "caption a 0"


# ---------------------------------------------------------------------------------------------------- written files


def test_llava_jsonl_several_images_text_only_and_extra_keys(tmp_path):
    png(tmp_path / "a.png"), png(tmp_path / "b.png")
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "two", "image": ["a.png", "b.png"], "extra": 1,
         "conversations": [{"from": "human", "value": "Compare <image> and <image>."}, {"from": "gpt", "value": "Same."}]},
        {"id": "two-no-marks", "image": ["a.png", "b.png"],
         "conversations": [{"from": "human", "value": "Compare."}, {"from": "gpt", "value": "Same."}]},
        {"id": "text", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
    ])
    assert detect_format(path) == "llava"
    two, unmarked, text = read_records(path)
    assert [p.name for p in two.images] == ["a.png", "b.png"]
    assert unmarked.turns[0].text == "<image>\n<image>\nCompare."
    assert text.images == [] and text.turns[0].text == "Hi?"


def test_llava_turns_written_with_role_and_content(tmp_path):
    """Turns as {role, content} (the chat-message keys) once failed every record: the role was read, the text only
    from 'value'."""
    png(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": 7, "image": "a.png", "conversations": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nDescribe."},
        {"role": "assistant", "content": "A red square."}]}])
    (record,) = read_records(path)
    assert record.id == "7" and [p.name for p in record.images] == ["a.png"]
    assert [(t.role, t.text) for t in record.turns] == [("system", "Be brief."), ("user", "<image>\nDescribe."),
                                                        ("assistant", "A red square.")]


def test_conversations_take_their_images_from_images_or_the_file_name_column(tmp_path):
    """A conversation row read its image from "image" only: Hugging Face datasets' "images" list, and an imagefolder
    row's file_name, were dropped without a word, and the record trained as text only."""
    datasets = pytest.importorskip("datasets")
    turns = [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A red square."}]
    turn = {"from": datasets.Value("string"), "value": datasets.Value("string")}
    features = datasets.Features({"images": datasets.List(datasets.Image()), "conversations": [turn]})
    datasets.Dataset.from_dict({"images": [[Image.new("RGB", (40, 30), (200, 40, 40))]], "conversations": [turns]},
                               features=features).to_parquet(tmp_path / "d.parquet")
    png(tmp_path / "folder" / "a.png")
    write_jsonl(tmp_path / "folder" / "metadata.jsonl", [{"file_name": "a.png", "conversations": turns}])
    for path in (tmp_path / "d.parquet", tmp_path / "folder"):
        (record,) = read_records(path)
        assert len(record.images) == 1 and record.turns[0].text == "<image>\nWhat is it?", path
        assert open_image(record.images[0]).getpixel((0, 0)) == (200, 40, 40)


def test_csv_and_tsv_with_configured_columns(tmp_path):
    png(tmp_path / "img" / "x.png")
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "q", "a"])
        writer.writerow(["img/x.png", "What colour?", "red"])
    (tmp_path / "d.tsv").write_text("picture\tdescription\nimg/x.png\ta red square\n", encoding="utf-8")
    (qa,) = read_records(tmp_path / "d.csv", options=ReadOptions(columns=Columns("path", "a", "q")))
    assert [t.text for t in qa.turns] == ["<image>\nWhat colour?", "red"] and qa.images[0].exists()
    (cap,) = read_records(tmp_path / "d.tsv", options=ReadOptions(columns=Columns("picture", "description"),
                                                                   prompt="Legende:"))
    assert [t.text for t in cap.turns] == ["<image>\nLegende:", "a red square"]
    # A named column the file lacks: one error for the file, listing its columns (not one problem per record).
    with pytest.raises(DataError, match=r"d.tsv: no caption/answer column 'caption' \(columns: description, picture\); "
                                        "name it with --text-column"):
        kinds(tmp_path / "d.tsv", columns=Columns("picture", "caption"))


def test_nan_is_a_missing_text_not_the_word_nan(tmp_path):
    # pandas writes a missing value as NaN: json.dumps of its rows, or a float column of a parquet file
    lines = ['{"image": "a.png", "caption": NaN}', '{"image": "a.png", "caption": "A red square.", "question": NaN}',
             '{"image": "a.png", "caption": 4}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    first, second, third = scan(tmp_path / "d.jsonl")
    assert isinstance(first, RecordError) and first.kind == EMPTY_ANSWER
    assert [t.text for t in second.turns] == ["<image>\nDescribe the image briefly.", "A red square."]
    assert third.turns[-1].text == "4"


def test_coco_annotations_with_image_folder(tmp_path):
    png(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg")
    annotations = tmp_path / "annotations" / "captions_val2014.json"
    annotations.parent.mkdir()
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"}],
        "annotations": [{"image_id": 1, "id": 10, "caption": "A red square."},
                        {"image_id": 1, "id": 11, "caption": "Something red."}]}))
    assert detect_format(annotations) == "coco"
    (record,) = read_records(annotations)
    assert record.id == "1" and record.images[0] == (tmp_path / "val2014/COCO_val2014_000000000001.jpg").resolve()
    assert record.references == ["A red square.", "Something red."] and record.turns[-1].text == "A red square."
    assert record.turns[0].text == "<image>\nDescribe the image briefly."


def test_blank_coco_captions_stay_references_but_are_never_the_reply(tmp_path):
    """pycocoevalcap scores against every caption of an image, a blank one too (it shortens BLEU's closest reference
    length, lowers CIDEr's mean over the references): `verbo eval` must keep them to give its scores. An image with
    only blank captions has nothing to train on or score against."""
    png(tmp_path / "a.png")
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}],
        "annotations": [{"image_id": 1, "caption": " "}, {"image_id": 1, "caption": "A red square."},
                        {"image_id": 1, "caption": ""}, {"image_id": 2, "caption": ""}]}))
    record, blank = scan(annotations)
    assert record.references == [" ", "A red square.", ""] and record.turns[-1].text == "A red square."
    assert blank.kind == EMPTY_ANSWER and str(blank).endswith("record '2': image a.png has no captions but blank ones")
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": [{"filename": "a.png", "cocoid": 7, "split": "test",
                                                "sentences": [{"raw": ""}, {"raw": "Red."}]}]}))
    assert [r.references for r in read_records(karpathy)] == [["", "Red."]]
    # LLaVA JSON written by `verbo data convert` keeps them too
    convert_data(annotations, tmp_path / "llava.json")
    assert [r.references for r in read_records(tmp_path / "llava.json")] == [[" ", "A red square.", ""]]


def test_karpathy_split(tmp_path):
    png(tmp_path / "val2014" / "x.jpg")
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [{"filepath": "val2014", "filename": "x.jpg", "cocoid": 7, "split": "test",
                                            "sentences": [{"raw": "A red square."}, {"raw": "Red."}]}]}))
    (record,) = read_records(path)
    assert record.id == "7" and record.references == ["A red square.", "Red."] and record.images[0].exists()


def test_a_recipe_source_reads_the_karpathy_splits_it_names(tmp_path):
    """Karpathy's files hold train, restval, val and test images together: a recipe source reading all of them would
    train on the test images, so it names its splits; `verbo data` commands read them all."""
    png(tmp_path / "x.jpg")
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [{"filename": "x.jpg", "cocoid": i, "split": split,
                                            "sentences": [{"raw": f"Picture {i}."}]}
                                           for i, split in enumerate(["train", "restval", "val", "test"])]}))
    assert [r.id for r in read_records(path)] == ["0", "1", "2", "3"]
    source = source_options(Source(str(path), split="train,restval"), tmp_path)
    assert [r.id for r in read_records(path, options=source)] == ["0", "1"]
    with pytest.raises(DataError, match=r"holds the splits train, restval, val, test; name the ones this source reads "
                                        r"with its split key \(split: train,restval to train"):
        list(read_records(path, options=source_options(Source(str(path)), tmp_path)))
    with pytest.raises(DataError, match=r"split 'tran': the file's splits are train, restval, val, test$"):
        list(read_records(path, options=source_options(Source(str(path), split="tran"), tmp_path)))


@pytest.mark.parametrize("document,message", [
    ({"images": [{"id": 1}], "annotations": []}, r"images\[0\] has no 'file_name'"),
    ({"images": [{"id": 1, "file_name": "a.png"}, ["a.png"]], "annotations": []},
     r"images\[1\] is list, not a JSON object"),
    ({"images": [{"id": 1, "file_name": 7}], "annotations": []}, r"images\[0\]: 'file_name' must be a file name"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"caption": "A cat."}]},
     r"annotations\[0\] has no 'image_id'"),
    ({"images": [{"cocoid": 1, "sentences": [{"raw": "A cat."}]}]}, r"images\[0\] has no 'filename'"),
    ({"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], "annotations": []},
     r"images\[1\] has id 1, as images\[0\] does"),  # a.png was dropped, b.png given its captions
])
def test_coco_entries_without_their_keys_name_the_entry(tmp_path, document, message):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=rf"captions.json: {message}"):
        read_records(path)


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_webdataset_shards_stream(tmp_path, suffix, mode):
    shard = write_tar(tmp_path / f"shard-000{suffix}", {
        "s/000.jpg": png_bytes(fmt="JPEG"), "s/000.txt": " a blue square \n".encode(),
        "s/001.png": png_bytes((0, 200, 0)),
        "s/001.json": json.dumps({"question": "Colour?", "answer": "verde"}, ensure_ascii=False).encode(),
        "s/002.png": png_bytes(),  # no caption
        "s/003.txt": "text only".encode(),
        "s/004.left.png": png_bytes((200, 0, 0)), "s/004.right.png": png_bytes((0, 0, 200)),
        "s/004.txt": "a red square left of a blue one".encode(),
    }, mode)
    assert detect_format(shard) == "webdataset" and detect_format(tmp_path) == "webdataset"
    items = list(scan(shard))
    first, second = items[0], items[1]
    assert first.id == "s/000" and first.turns[-1].text == "a blue square"
    assert [t.text for t in second.turns] == ["<image>\nColour?", "verde"]
    assert isinstance(items[2], RecordError) and items[2].kind == EMPTY_ANSWER
    assert items[3].images == [] and items[3].turns[-1].text == "text only"
    source_type = FileSlice if suffix == ".tar" else BytesImage
    assert isinstance(first.images[0], source_type)
    assert open_image(second.images[0]).getpixel((0, 0)) == (0, 200, 0)
    pair = items[4]  # both images of the sample, in member order (the first alone was kept before)
    assert [open_image(image).getpixel((0, 0)) for image in pair.images] == [(200, 0, 0), (0, 0, 200)]
    assert pair.turns[-1].text == "a red square left of a blue one"


def test_hf_dataset_on_disk_and_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": images, "caption": [CAPTIONS["pt"], CAPTIONS["zh"]]}, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(tmp_path / "dict")
    ds.save_to_disk(tmp_path / "single")
    ds.to_parquet(tmp_path / "d.parquet")
    for path, ids in [(tmp_path / "dict", ["train/0", "train/1", "test/0"]), (tmp_path / "single", ["0", "1"]),
                      (tmp_path / "d.parquet", ["0", "1"])]:
        assert detect_format(path) == "hf", path
        records = read_records(path)
        assert [r.id for r in records] == ids
        assert records[0].turns[-1].text == CAPTIONS["pt"] and records[1].turns[-1].text == CAPTIONS["zh"]
        assert open_image(records[1].images[0]).getpixel((0, 0)) == (0, 0, 255)
        # a saved dataset's images stay in its Arrow files, read when needed; parquet's are compressed: in memory
        assert isinstance(records[1].images[0], BytesImage if path.suffix == ".parquet" else FileSlice)


def split_datasets(root: Path) -> list[Path]:
    """The same train (captions a, b) and test (c) splits as a saved DatasetDict, parquet files named after their
    split (as the hub's data/ folders have them) and an imagefolder with train/ and test/ folders."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (40, 30), "red")] * 3, "caption": ["a", "b", "c"]},
                                    features=features)
    datasets.DatasetDict({"train": ds.select([0, 1]), "test": ds.select([2])}).save_to_disk(root / "dict")
    ds.select([0, 1]).to_parquet(root / "data/train-00000-of-00001.parquet")
    ds.select([2]).to_parquet(root / "data/test-00000-of-00001.parquet")
    for split, captions in (("train", "ab"), ("test", "c")):
        for caption in captions:
            png(root / "folder" / split / f"{caption}.png")
        rows = [{"file_name": f"{c}.png", "text": c} for c in captions]
        write_jsonl(root / "folder" / split / "metadata.jsonl", rows)
    return [root / "dict", root / "data", root / "folder"]


def test_a_recipe_source_reads_the_splits_it_names(tmp_path):
    """The split key of a source on a saved DatasetDict, a folder of split parquet files or an imagefolder of split
    folders was ignored: `split: test` read the train records too, and a source naming none trained on the test
    split."""
    for path in split_datasets(tmp_path):
        assert sorted(r.turns[-1].text for r in read_records(path)) == ["a", "b", "c"]  # `verbo data`: all of them
        source = source_options(Source(str(path), split="test"), tmp_path)
        assert [r.turns[-1].text for r in read_records(path, options=source)] == ["c"], path
        with pytest.raises(DataError, match=r"holds the splits (train, test|test, train); read one: give its "):
            list(read_records(path, options=source_options(Source(str(path)), tmp_path)))
        with pytest.raises(DataError, match=r"split 'tst': the file's splits are (train, test|test, train)$"):
            list(read_records(path, options=source_options(Source(str(path), split="tst"), tmp_path)))


def test_imagefolder_metadata_files_deeper_than_one_folder_are_read(tmp_path):
    """train/part1/metadata.jsonl and train/part2/metadata.jsonl were left out without a word (only metadata files
    at most one folder down were looked for), where `datasets` reads them all."""
    for part, caption in (("part1", "a"), ("part2", "b")):
        png(tmp_path / "train" / part / "x.png")
        write_jsonl(tmp_path / "train" / part / "metadata.jsonl", [{"file_name": "x.png", "text": caption}])
    png(tmp_path / "test" / "y.png")
    write_jsonl(tmp_path / "test" / "metadata.jsonl", [{"file_name": "y.png", "text": "c"}])
    assert [(r.id, r.turns[-1].text) for r in read_records(tmp_path)] == [
        ("test/y.png", "c"), ("train/part1/x.png", "a"), ("train/part2/x.png", "b")]
    source = source_options(Source(str(tmp_path), split="train"), tmp_path)
    assert [r.turns[-1].text for r in read_records(tmp_path, options=source)] == ["a", "b"]


def test_imagefolder_split_folders_may_be_links(tmp_path):
    """A split folder linked from elsewhere is read (it was when only one folder down was looked at), and a link back
    up the tree is no endless walk."""
    png(tmp_path / "real" / "x.png")
    write_jsonl(tmp_path / "real" / "metadata.jsonl", [{"file_name": "x.png", "text": "linked"}])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train").symlink_to(tmp_path / "real")
    (tmp_path / "data" / "loop").symlink_to(tmp_path / "data")
    assert [(r.id, r.turns[-1].text) for r in read_records(tmp_path / "data")] == [("train/x.png", "linked")]


def test_imagefolder_rows_are_named_by_their_id_column(tmp_path):
    """An imagefolder row was named by its image even when it had a question_id or image_id column, as every other
    format's rows are named: two questions on one image shared an id, and predictions lost the dataset's ids."""
    png(tmp_path / "a.png")
    write_jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "a.png", "question_id": 11, "question": "What colour?", "answer": "red"},
        {"file_name": "a.png", "question_id": 12, "question": "What shape?", "answer": "square"},
        {"file_name": "a.png", "answer": "a red square"}])
    assert [r.id for r in read_records(tmp_path)] == ["11", "12", "a.png"]


def test_imagefolder_with_two_metadata_files_in_a_folder_is_refused(tmp_path):
    # every image was read twice, once from each file
    png(tmp_path / "train/a.png")
    (tmp_path / "train/metadata.csv").write_text("file_name,text\na.png,A red square.\n")
    write_jsonl(tmp_path / "train/metadata.jsonl", [{"file_name": "a.png", "text": "A red square."}])
    with pytest.raises(DataError, match=r"train: metadata.csv, metadata.jsonl both describe this folder's images"):
        read_records(tmp_path, "imagefolder")


def test_an_imagefolder_row_without_a_file_name_is_a_record_with_no_image(tmp_path):
    # it was a text-only caption record, trained with no image; every imagefolder row is an image
    png(tmp_path / "a.png")
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "A red square."},
                                              {"file_name": None, "text": "A lost square."},
                                              {"file_name": "", "text": "A nameless square."}])
    items = list(scan(tmp_path, ReadOptions(format="imagefolder")))
    assert [item.kind if isinstance(item, RecordError) else "ok" for item in items] == ["ok", MISSING_IMAGE,
                                                                                      MISSING_IMAGE]
    assert "no image: file_name is empty" in str(items[1])
    # pairs keep their text-only rows, by design
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,A red square.\n,Only text.\n")
    assert kinds(tmp_path / "pairs.csv") == ["ok", "ok"]


def test_a_split_folder_without_its_files_is_named(tmp_path):
    # it gave no records, without a word: a DatasetDict of 2 read as its other split alone
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": "a.png"}], "caption": ["A red square."]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(tmp_path / "dict")
    (tmp_path / "dict/test/state.json").unlink()
    with pytest.raises(DataError, match=r"dict/test: no state.json or .parquet files"):
        read_records(tmp_path / "dict")


def test_arrow_images_are_byte_ranges_across_batches_with_gaps_and_paths(tmp_path):
    # An Arrow stream file as `save_to_disk` writes it, in record batches of 3: embedded images are indexed by their
    # byte range in the file (named by their row in the file), a row without an image has none, and a row whose image
    # is only a path (bytes null) keeps that path, relative to the file's folder.
    pa = pytest.importorskip("pyarrow")
    png(tmp_path / "beside.png", colour=(0, 200, 0))
    blobs = [png_bytes((40 * i, 0, 0)) for i in range(5)]
    cells = [{"bytes": b, "path": None} for b in blobs] + [None, {"bytes": None, "path": "beside.png"}]
    table = pa.table({"image": cells, "caption": [f"caption {i}" for i in range(7)]})
    with pa.ipc.new_stream(tmp_path / "data.arrow", table.schema) as writer:
        for batch in table.to_batches(max_chunksize=3):
            writer.write_batch(batch)
    records = read_records(tmp_path / "data.arrow")
    assert [r.turns[-1].text for r in records] == [f"caption {i}" for i in range(7)]
    slices = [r.images[0] for r in records[:5]]
    assert all(isinstance(s, FileSlice) for s in slices)
    assert [s.read() for s in slices] == blobs
    assert str(slices[4]).endswith("data.arrow:row 4 image")  # the file's row 4: the second batch's row 1
    assert records[5].images == []
    assert records[6].images == [(tmp_path / "beside.png").resolve()]
    assert open_image(records[6].images[0]).getpixel((0, 0)) == (0, 200, 0)


def test_format_override(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "x.png", "caption": "hi"}])
    assert kinds(path) == ["ok"]
    assert kinds(path, format="llava") == [BAD_CONVERSATION]
    with pytest.raises(DataError, match="format 'nope' unknown"):
        list(scan(path, ReadOptions(format="nope")))


# ---------------------------------------------------------------------------------------------------- malformed input

GOOD = {"id": "good", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
MALFORMED = [
    ('{"id": "cut", "conversations": [', INVALID_JSON),
    ('["a list"]', INVALID_JSON),
    ({"id": "no-turns", "conversations": []}, BAD_CONVERSATION),
    ({"id": "no-from", "conversations": [{"value": "x"}, {"from": "gpt", "value": "y"}]}, BAD_CONVERSATION),
    ({"id": "gpt-first", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
     BAD_CONVERSATION),
    ({"id": "two-humans", "conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"},
                                            {"from": "gpt", "value": "z"}]}, BAD_CONVERSATION),
    ({"id": "no-reply", "conversations": [{"from": "human", "value": "x"}]}, BAD_CONVERSATION),
    ({"id": "tokens", "image": "a.png", "conversations": [{"from": "human", "value": "<image> <image>"},
                                                          {"from": "gpt", "value": "y"}]}, IMAGE_TOKENS),
    ({"id": "token-no-image", "conversations": [{"from": "human", "value": "<image> what?"},
                                                {"from": "gpt", "value": "y"}]}, IMAGE_TOKENS),
    ({"id": "empty", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "  "}]},
     EMPTY_ANSWER),
    ({**GOOD, "id": "number-image", "image": 5}, UNREADABLE_IMAGE),
    ({**GOOD, "id": "numbers-image", "image": ["a.png", 2.5]}, UNREADABLE_IMAGE),
    # JSON's escape of half an emoji: no text (the tokenizer's TypeError stopped training at it)
    ('{"id": "half-emoji", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "\\ud83d"}]}',
     NOT_UTF8),
]


def test_malformed_records_each_give_their_kind_and_good_ones_survive(tmp_path):
    rows = [GOOD]
    for case, _ in MALFORMED:
        rows += [case, {**GOOD, "id": f"good-{len(rows)}"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with open(path, "ab") as f:  # a Latin-1 line among UTF-8 ones
        f.write(json.dumps({**GOOD, "id": "latin1"}).replace("A.", "caf\xe9").encode("latin-1") + b"\n")
    items = list(scan(path, ReadOptions(format="llava")))
    problems = [i.kind for i in items if isinstance(i, RecordError)]
    assert problems == [kind for _, kind in MALFORMED] + [NOT_UTF8]
    assert [i.id for i in items if not isinstance(i, RecordError)] == ["good"] + [f"good-{2 * i + 1}"
                                                                                  for i in range(len(MALFORMED))]
    skips = SkipLog()
    assert len(read_records(path, "llava", skips)) == len(MALFORMED) + 1 and len(skips) == len(MALFORMED) + 1
    with pytest.raises(RecordError, match="line 2 column"):
        read_records(path, "llava")


def test_whole_file_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.json: data file not found"):
        read_records(tmp_path / "missing.json")
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="obj.json: COCO annotations need"):
        read_records(tmp_path / "obj.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the format of this folder"):
        read_records(tmp_path / "empty")
    (tmp_path / "bad.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(DataError, match="bad.tar: unreadable tar shard"):
        read_records(tmp_path / "bad.tar")


@pytest.mark.parametrize("name,text", [
    ("d.json", json.dumps([GOOD])), ("d.jsonl", json.dumps(GOOD)), ("d.tsv", "image\tcaption\na.png\tA cat.\n"),
    ("captions.json", json.dumps({"images": [], "annotations": []})),
])
def test_utf16_files_are_named_as_such(tmp_path, name, text):
    # Excel's "Unicode text" and Windows editors write UTF-16: it read as invalid JSON, or as columns "\udcff\udcfei m a g e"
    (tmp_path / name).write_text(text, encoding="utf-16")
    with pytest.raises(DataError, match=rf"{name}: UTF-16 text; re-save it as UTF-8"):
        read_records(tmp_path / name, "coco" if name == "captions.json" else None)


@pytest.mark.parametrize("lang", sorted(CAPTIONS))
def test_unicode_captions_survive_read_convert_read(tmp_path, lang):
    from verbovision.data.convert import convert_data

    png(tmp_path / "x.png")
    text = CAPTIONS[lang]
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["image", "question", "caption"], ["x.png", f"{text}?", text]])
    (record,) = read_records(tmp_path / "d.csv")
    convert_data(tmp_path / "d.csv", tmp_path / "out" / "d.json")
    raw = (tmp_path / "out" / "d.json").read_bytes()
    assert text.encode("utf-8") in raw  # written as UTF-8, not \u escapes
    (again,) = read_records(tmp_path / "out" / "d.json")
    assert [t.text for t in again.turns] == [t.text for t in record.turns] == [f"<image>\n{text}?", text]
    assert again.images == record.images


# ---------------------------------------------------------------------------------------------------- images


def _saved(image: Image.Image, path: Path, **kw) -> Path:
    image.save(path, **kw)
    return path


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _saved(image, tmp_path / "r.jpg", exif=exif)
    assert open_image(path).size == (20, 40)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    result = open_image(_saved(rgba, tmp_path / "t.png"))
    assert result.mode == "RGB" and result.getpixel((1, 1)) == (255, 255, 255) and result.getpixel((0, 0)) == (255, 0, 0)
    la = Image.new("LA", (4, 4), (0, 0))
    assert open_image(_saved(la, tmp_path / "la.png")).getpixel((0, 0)) == (255, 255, 255)
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((1, 1))
    assert open_image(_saved(palette, tmp_path / "p.png", transparency=palette.getpixel((1, 1)))).getpixel((1, 1)) \
        == (255, 255, 255)


def test_grey_16bit_cmyk_and_palette_convert_to_rgb(tmp_path):
    grey16 = Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16))
    assert open_image(_saved(grey16, tmp_path / "g16.png")).getpixel((0, 0)) == (127, 127, 127)  # PIL alone clips to white
    assert open_image(_saved(Image.new("L", (4, 4), 77), tmp_path / "g.png")).getpixel((0, 0)) == (77, 77, 77)
    cmyk = open_image(_saved(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "c.jpg"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0))[0] > 200 and cmyk.getpixel((0, 0))[1] < 60
    palette = Image.new("RGB", (4, 4), (0, 0, 255)).convert("P")
    assert open_image(_saved(palette, tmp_path / "p.gif")).getpixel((0, 0)) == (0, 0, 255)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    assert open_image(path).getpixel((0, 0)) == (255, 0, 0)


def test_decompression_bomb_is_refused_by_its_header(tmp_path):
    path = _saved(Image.new("L", (3000, 2000)), tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big.png: unreadable image \(decompression bomb refused: 3000x2000"):
        open_image(path, max_pixels=1_000_000)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 2_000_000  # PIL's own refusal (over twice its limit) becomes the same clear error
    try:
        with pytest.raises(DataError, match=r"big.png: unreadable image \(decompression bomb refused"):
            open_image(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


@pytest.mark.parametrize("tolerant_global", [False, True])
def test_truncated_jpeg_is_reported_not_loaded_grey(tmp_path, tolerant_global):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = _saved(noise, tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    ImageFile.LOAD_TRUNCATED_IMAGES = tolerant_global
    try:
        with pytest.raises(DataError, match=r"cut.jpg: unreadable image \(image file is truncated"):
            open_image(tmp_path / "cut.jpg")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_and_garbage_images_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.png: image not found"):
        open_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.png: unreadable image"):
        open_image(tmp_path / "junk.png")
    with pytest.raises(DataError, match="d.parquet:3: unreadable image"):
        open_image(BytesImage("d.parquet:3", b"junk"))


def test_fast_decode_keeps_at_least_the_model_side(tmp_path):
    path = _saved(Image.new("RGB", (640, 480), "red"), tmp_path / "big.jpg")
    assert open_image(path, min_side=100).size == (160, 120)  # 1/4 scale; 1/8 would be under 100 px
    assert open_image(path, min_side=300).size == (640, 480)  # 1/2 would be 240 px high
    assert open_image(_saved(Image.new("RGB", (640, 480)), tmp_path / "big.png"), min_side=100).size == (640, 480)


def test_records_without_ids_are_numbered_from_0_in_every_format(tmp_path, capsys):
    from verbovision.cli import main

    Image.new("RGB", (40, 40), "red").save(tmp_path / "a.png")
    rows = [{"image": "a.png", "caption": f"a red square number {i}"} for i in range(3)]
    rows[2]["image"] = "missing.png"
    (tmp_path / "d.json").write_text(json.dumps(rows))
    write_jsonl(tmp_path / "d.jsonl", [rows[0], "", rows[1], "{not json", rows[2]])  # a blank line is no record
    with open(tmp_path / "d.csv", "w", newline="") as f:
        csv.DictWriter(f, ["image", "caption"]).writeheader()
        csv.DictWriter(f, ["image", "caption"]).writerows(rows)
    for name, ids in (("d.json", ["0", "1"]), ("d.csv", ["0", "1"]), ("d.jsonl", ["0", "1"])):
        skips = SkipLog()
        records = read_records(tmp_path / name, skips=skips, options=ReadOptions(check_image_files=True))
        assert [r.id for r in records] == ids, name
        assert skips.as_dict()[MISSING_IMAGE]["examples"][0].startswith(f"{len(ids) + (name == 'd.jsonl')}: "), name
    items = list(scan(tmp_path / "d.jsonl"))
    assert items[2].record_id == "2" and "line 4 column 2: invalid JSON" in str(items[2])  # its line, for an editor
    assert main(["data", "check", str(tmp_path / "d.csv"), "--allow"]) == 0
    assert "e.g. 2" in capsys.readouterr().out


def test_an_image_given_as_a_url_is_named_as_one(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"image": "https://example.com/cats/1.jpg", "caption": "a cat"}])
    (problem,) = list(scan(path, ReadOptions(check_image_files=True)))
    assert problem.kind == MISSING_IMAGE and str(problem).endswith(
        "https://example.com/cats/1.jpg: a URL; images are read from local files: download them and give their "
        "folder as image_root (--image-root)")
