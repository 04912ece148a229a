"""textcaps: TextCaps val (captions that read the text in the image), read from `TextCaps_0.1_val.json`: one row per
caption, each with its image's five `reference_strs`, so one item per image_id, in the order images first appear;
images are TextVQA's, under `train_images/` (TextCaps val draws from TextVQA's train images). Scored as
pycocoevalcap's COCOEvalCap, as TextCaps' evaluation (mmf) and lmms-eval score it.

Prompt: "Provide a one-sentence caption for the provided image.", lmms-eval's textcaps_val task
(lmms_eval/tasks/textcaps/utils.py, textcaps_doc_to_text), 64 new tokens as there.

Hub: lmms-lab-encoder/TextCaps (lmms-lab/TextCaps until lmms-eval moved its datasets), the dataset of lmms-eval's
textcaps_val task (lmms_eval/tasks/textcaps/textcaps_val.yaml: split val): one row per image, columns question_id,
question, image, image_id, image_classes, flickr_original_url, flickr_300k_url, image_width, image_height, set_name,
image_name, image_path, caption_id, caption_str, reference_strs, as the dataset card lists them. Written back as
TextCaps_0.1_val.json (each row but its image, one record per image) and train_images/<image_id>.jpg."""

from __future__ import annotations

from pathlib import Path

from ...files import write_json
from .base import Benchmark, BenchmarkItem, HubDataset, HubTable
from .captioning import (CAPTION_TOKENS, METRIC, ONE_SENTENCE, REFERENCE, caption_results_writer, prompt_source,
                         score_captions)
from .hub import rows_saving_images
from .official import entries, entry, official_json

PUBLISHED = "TextCaps (textvqa.org/textcaps/dataset; images: TextVQA's train_val_images.zip)"
IMAGES = "train_images"


def _read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    name = "TextCaps_0.1_val.json"
    path = Path(data_dir) / name
    items: dict[str, BenchmarkItem] = {}
    for i, row in enumerate(entries(official_json("textcaps", data_dir, name, PUBLISHED), "data", path), 1):
        where = f"{path}: data record {i}"
        image_id = entry(row, "image_id", where, str)
        if image_id not in items:
            references = tuple(entry(row, "reference_strs", where, list))
            items[image_id] = BenchmarkItem(image_id, Path(data_dir) / IMAGES / f"{image_id}.jpg", ONE_SENTENCE,
                                            references, meta={"image_id": image_id})
    return list(items.values())


def _write_from_hub(folder: Path, split: str, tables) -> None:
    """lmms-eval's TextCaps rows as TextCaps_0.1_val.json and the TextVQA train_images/ they caption."""
    rows = rows_saving_images(tables[0], folder / IMAGES, HUB.id)
    write_json(folder / "TextCaps_0.1_val.json", {"dataset_type": "val", "dataset_name": "textcaps",
                                                  "dataset_version": "0.1", "data": rows})


HUB = HubDataset("lmms-lab-encoder/TextCaps", {"val": "val"},
                 (HubTable(None, ("image_id", "reference_strs", "image")),), _write_from_hub)


BENCHMARK = Benchmark(
    name="textcaps",
    task="caption",
    splits=("val",),
    files=f"TextCaps_0.1_val.json and {IMAGES}/ ({PUBLISHED})",
    prompt_source=prompt_source(ONE_SENTENCE, "textcaps/utils.py"),
    metric=METRIC,
    reference=f"{REFERENCE}; references: each image's reference_strs",
    max_new_tokens=CAPTION_TOKENS,
    read=_read,
    score=score_captions,
    write_submission=caption_results_writer("textcaps_val_results.json"),
    hub=HUB,
)
