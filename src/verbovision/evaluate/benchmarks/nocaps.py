"""nocaps: NoCaps val (4500 Open Images photos, 10 references each), read from `nocaps_val_4500_captions.json`
(COCO caption format, each image with its `domain`), images under `val/` as nocaps publishes them
(s3.amazonaws.com/nocaps/val/, each image's coco_url). Scored as pycocoevalcap's COCOEvalCap over all images, and
over each domain's images on their own (in-domain, near-domain, out-domain) as the nocaps evaluation reports them:
a domain's CIDEr-D takes its document frequencies from that domain's references. SPICE, which nocaps also reports,
is left out as lmms-eval leaves it out.

Prompt: "Provide a one-sentence caption for the provided image.", lmms-eval's nocaps_val task
(lmms_eval/tasks/nocaps/_default_template_nocaps_yaml), greedy; 64 new tokens as lmms-eval's COCO and Flickr30k
tasks (its nocaps task allows 1024 for the same one sentence; replies cut at 64 are counted in the report).

Hub: none. lmms-eval's lmms-lab-encoder/NoCaps (nocaps/nocaps_val.yaml, split validation: image, image_coco_url,
image_file_name, image_id, image_open_images_id, annotations_captions, ...) has no image's domain, which the
per-domain scores need."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import DataError
from ..metrics import EvalResult
from .base import Benchmark, BenchmarkItem
from .captioning import (CAPTION_TOKENS, METRIC, ONE_SENTENCE, REFERENCE, caption_results_writer, prompt_source,
                         score_captions)
from .official import entries, entry, official_json

PUBLISHED = "nocaps (nocaps.org/download: nocaps_val_4500_captions.json, images from s3.amazonaws.com/nocaps/val/)"
DOMAINS = ("in-domain", "near-domain", "out-domain")


def _read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    name = "nocaps_val_4500_captions.json"
    path = Path(data_dir) / name
    data = official_json("nocaps", data_dir, name, PUBLISHED)
    captions: dict[object, list[str]] = {}
    for i, annotation in enumerate(entries(data, "annotations", path), 1):
        where = f"{path}: annotation {i}"
        image_id, caption = entry(annotation, "image_id", where, int), entry(annotation, "caption", where, str)
        captions.setdefault(image_id, []).append(caption)
    items = []
    for i, image in enumerate(entries(data, "images", path), 1):
        where = f"{path}: image {i}"
        image_id = entry(image, "id", where, int)
        if image_id not in captions:
            raise DataError(f"{where}: image id {image_id} has no caption among the annotations")
        items.append(BenchmarkItem(str(image_id), Path(data_dir) / "val" / entry(image, "file_name", where, str),
                                   ONE_SENTENCE, tuple(captions[image_id]), entry(image, "domain", where, str),
                                   {"image_id": image_id}))
    return items


def _score(items: Sequence[BenchmarkItem], replies: Mapping[str, str]) -> EvalResult:
    """Every metric over all images; per domain, CIDEr-D among the values (the number nocaps papers report) and the
    other metrics among the details, e.g. `CIDEr[domain=out-domain]`, `Bleu_4[domain=out-domain]`."""
    result = score_captions(items, replies)
    for domain in DOMAINS:
        part = [item for item in items if item.group == domain]
        if not part:  # a --limit sample may miss a domain
            continue
        scores = score_captions(part, replies)
        for metric, value in scores.values.items():
            label = f"{metric}[domain={domain}]"
            if metric != "CIDEr":
                result.details[label] = value
                continue
            result.values[label], result.per_item[label] = value, scores.per_item[metric]
            if metric in scores.intervals:
                result.intervals[label] = scores.intervals[metric]
    return result


BENCHMARK = Benchmark(
    name="nocaps",
    task="caption",
    splits=("val",),
    files=f"nocaps_val_4500_captions.json and val/ ({PUBLISHED})",
    prompt_source=prompt_source(ONE_SENTENCE, "nocaps/_default_template_nocaps_yaml"),
    metric=f"{METRIC}; overall and per domain (in-domain, near-domain, out-domain), each domain scored on its own",
    reference=f"{REFERENCE}, per domain as the nocaps evaluation (EvalAI) reports it",
    max_new_tokens=CAPTION_TOKENS,
    read=_read,
    score=_score,
    write_submission=caption_results_writer("nocaps_val_results.json"),
)
