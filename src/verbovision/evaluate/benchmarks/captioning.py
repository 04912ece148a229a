"""What the captioning benchmarks share: lmms-eval's caption prompts, Karpathy's split files, COCO caption scoring,
and the COCO results file (`[{image_id, caption}]`) caption servers and `verbo score` take."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ...files import write_json
from ..metrics import EvalResult, score
from .base import BenchmarkItem
from .official import entries, entry, official_json

ONE_SENTENCE = "Provide a one-sentence caption for the provided image."
"""lmms-eval's caption prompt for COCO 2014, NoCaps, Flickr30k and TextCaps."""
CAPTION_TOKENS = 64
"""lmms-eval's max_new_tokens for COCO, Flickr30k and TextCaps captions."""
METRICS = ("bleu", "meteor", "rouge_l", "cider")
METRIC = ("BLEU-1..4, METEOR (with Java; else skipped), ROUGE-L, CIDEr-D over the PTB-tokenized references, "
          "as COCOEvalCap")
REFERENCE = "pycocoevalcap's COCOEvalCap (tylin/coco-caption); SPICE left out, as lmms-eval leaves it out"
KARPATHY_SPLITS = "Karpathy's caption_datasets.zip (cs.stanford.edu/people/karpathy/deepimagesent)"


def prompt_source(prompt: str, task_file: str) -> str:
    """Where a caption prompt comes from (README, report): lmms-eval's task file, greedy decoding as there."""
    return f'"{prompt}": lmms-eval, lmms_eval/tasks/{task_file} (doc_to_text), greedy as there'


def read_karpathy(benchmark: str, data_dir: Path, name: str, split: str, image_folder: Callable[[dict], str],
                  prompt: str) -> list[BenchmarkItem]:
    """The images of one split of a Karpathy dataset file, in its order, each with its raw sentences.

    `image_folder(image)`: the folder under `data_dir` holding the image (COCO's `filepath`, Flickr's one folder).
    The id is COCO's (`cocoid`) where the file gives one, else the file name's stem (Flickr's photo id), an integer
    where it is digits, as COCO results files give image ids."""
    path = Path(data_dir) / name
    data = official_json(benchmark, data_dir, name, KARPATHY_SPLITS)
    items = []
    for i, image in enumerate(entries(data, "images", path), 1):
        where = f"{path}: image {i}"
        if entry(image, "split", where) != split:
            continue
        file_name = entry(image, "filename", where, str)
        image_id = image.get("cocoid", Path(file_name).stem)
        image_id = int(image_id) if str(image_id).isdigit() else image_id
        references = tuple(entry(sentence, "raw", where, str) for sentence in entry(image, "sentences", where, list))
        items.append(BenchmarkItem(str(image_id), Path(data_dir) / image_folder(image) / file_name, prompt,
                                   references, meta={"image_id": image_id}))
    return items


def score_captions(items: Sequence[BenchmarkItem], replies: Mapping[str, str]) -> EvalResult:
    """COCOEvalCap's scores of one caption per image, images taken in the benchmark's order (CIDEr-D's document
    frequencies come from these items' references)."""
    return score({item.id: replies[item.id] for item in items}, {item.id: list(item.references) for item in items},
                 METRICS)


def caption_results_writer(file_name: str):
    """A Benchmark.write_submission writing COCO caption results, `[{image_id, caption}]`, to `folder/file_name`."""

    def write(items: Sequence[BenchmarkItem], replies: Mapping[str, str], folder: Path) -> Path:
        path = Path(folder) / file_name
        write_json(path, [{"image_id": item.meta["image_id"], "caption": replies[item.id]} for item in items])
        return path

    return write
