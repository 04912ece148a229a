"""coco-karpathy: COCO captions on Karpathy's splits (test by default: 5000 val2014 images, 5 references or more
each), read from his `dataset_coco.json`, scored as pycocoevalcap's COCOEvalCap on the raw sentences.

Prompt: "Describe the image briefly.", lmms-eval's coco_karpathy_test task (lmms_eval/tasks/coco_cap/
coco_karpathy_test.yaml; its COCO 2014 tasks ask the one-sentence prompt instead), 64 new tokens as there.

Hub: none. The dataset of that task, yerevann/coco-karpathy (coco_karpathy_test.yaml), has the split and sentences
but no images, only each image's COCO url, which lmms-eval downloads one by one (coco_cap/utils.py,
coco_doc_to_visual_karpathy); lmms-lab-encoder/COCO-Caption (coco2014_cap_val.yaml) is COCO's val2014, not
Karpathy's split."""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, BenchmarkItem
from .captioning import (CAPTION_TOKENS, KARPATHY_SPLITS, METRIC, REFERENCE, caption_results_writer, prompt_source,
                         read_karpathy, score_captions)
from .official import entry

PROMPT = "Describe the image briefly."


def _read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    return read_karpathy("coco-karpathy", data_dir, "dataset_coco.json", split,
                         lambda image: entry(image, "filepath", "dataset_coco.json"), PROMPT)


BENCHMARK = Benchmark(
    name="coco-karpathy",
    task="caption",
    splits=("test", "val", "restval", "train"),
    files=f"dataset_coco.json ({KARPATHY_SPLITS}), val2014/ and train2014/ (images.cocodataset.org/zips)",
    prompt_source=prompt_source(PROMPT, "coco_cap/coco_karpathy_test.yaml"),
    metric=METRIC,
    reference=REFERENCE,
    max_new_tokens=CAPTION_TOKENS,
    read=_read,
    score=score_captions,
    write_submission=caption_results_writer("captions_karpathy_results.json"),
)
