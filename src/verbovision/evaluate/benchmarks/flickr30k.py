"""flickr30k: Flickr30k captions on Karpathy's test split (1000 images, 5 references each), read from his
`dataset_flickr30k.json`, images under `flickr30k-images/`; scored as pycocoevalcap's COCOEvalCap.

Prompt: "Provide a one-sentence caption for the provided image.", lmms-eval's flickr30k_test task
(lmms_eval/tasks/flickr30k/utils.py, flickr_doc_to_text), 64 new tokens as there. Submission: COCO caption
results, image ids the photos' Flickr ids (the file names' stems), as lmms-eval writes them.

Hub: none. lmms-eval's lmms-lab-encoder/flickr30k (flickr30k/flickr30k_test.yaml, split test: image, caption,
sentids, img_id, filename) holds all 31,783 Flickr30k images in its one split, without Karpathy's split."""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, BenchmarkItem
from .captioning import (CAPTION_TOKENS, KARPATHY_SPLITS, METRIC, ONE_SENTENCE, REFERENCE, caption_results_writer,
                         prompt_source, read_karpathy, score_captions)

IMAGES = "flickr30k-images"


def _read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    return read_karpathy("flickr30k", data_dir, "dataset_flickr30k.json", split, lambda image: IMAGES, ONE_SENTENCE)


BENCHMARK = Benchmark(
    name="flickr30k",
    task="caption",
    splits=("test", "val", "train"),
    files=f"dataset_flickr30k.json ({KARPATHY_SPLITS}), {IMAGES}/ (the Flickr30k images, shannon.cs.illinois.edu/"
          "DenotationGraph)",
    prompt_source=prompt_source(ONE_SENTENCE, "flickr30k/utils.py"),
    metric=METRIC,
    reference=REFERENCE,
    max_new_tokens=CAPTION_TOKENS,
    read=_read,
    score=score_captions,
    write_submission=caption_results_writer("flickr30k_karpathy_results.json"),
)
