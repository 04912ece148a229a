"""CHAIR (Rohrbach et al. 2018, "Object Hallucination in Image Captioning"): how many of the COCO objects a caption
mentions are not in the image.

Files: annotations/instances_val2014.json and annotations/captions_val2014.json (COCO's 2014 annotations), the images
in val2014/, and synonyms.txt: the paper's synonym list, as the official repository publishes it
(github.com/LisaAnne/Hallucination, data/synonyms.txt; one line per COCO object, its words comma-separated, the
object's name first). It is read from --data-dir, not shipped: fetched data is not part of this project.
Items: 500 val2014 images drawn with a fixed seed (the sample size of recent hallucination papers); split "val2014".
Prompt: "Please describe this image in detail." (lmms-eval's coco_cap_chair, as OPERA and later papers), up to
512 new tokens (lmms-eval allows 2048: a caption cut shorter mentions fewer objects).
Scoring: the official utils/chair.py. A caption is lowercased and tokenised, each word singularised, the paper's
two-word names and its rules applied ("baby"/"adult" + animal -> the animal, "passenger jet/train" -> the vehicle,
"bow tie" -> tie, "toilet seat" -> toilet, no "seat" where "toilet" is), and every word of synonyms.txt counted as a
mention of its object. The image's objects: those of its instance annotations and those its five reference captions
mention. CHAIR-s: captions with a mention of an object not in the image / captions; CHAIR-i: such mentions / all
mentions; coverage: objects of the images mentioned / objects of the images (lmms-eval's recall); length: words per
caption (whitespace-separated).
The official code tokenises with nltk.word_tokenize and singularises with pattern.en.singularize (Python 2; pattern
does not install on current Pythons). Here: words are runs of letters and digits (hyphens inside kept), every other
character a token of its own; the singulariser has pattern's rules for the words that can reach the synonym list,
quirks kept ("bus" -> "bu" and "glass" -> "glas" are mentions of nothing, "ties" -> "ty"): it gave pattern 3.6's
result for each word of synonyms.txt and their -s, -es, -ies, -ves, -men and -ice plurals.
Hub: none. lmms-eval's coco_cap_chair reads tsunghanwu/mscoco_chair (coco_cap_chair/coco_cap_chair.yaml, split test:
image, question_id, gt_object), its own sample with each image's objects already listed; the COCO annotations and
synonym list the objects are derived from here are in no hub dataset.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...errors import DataError
from ..metrics import EvalResult
from .base import Benchmark, BenchmarkItem
from .official import entries, entry, official_json
from .replies import mean_with_interval, replies_of, write_rows

SAMPLE = 500
SEED = 0
PROMPT = "Please describe this image in detail."
COCO = "COCO (cocodataset.org, annotations_trainval2014.zip)"
SYNONYMS = "synonyms.txt"
SYNONYMS_PUBLISHED = "CHAIR's repository (github.com/LisaAnne/Hallucination, data/synonyms.txt)"

_TWO_WORD_NAMES = ("motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
                   "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
                   "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
                   "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
                   "stove top oven", "home plate", "train track")
_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
TWO_WORDS = {**{name: name for name in _TWO_WORD_NAMES},
             **{f"{age} {animal}": animal for animal in _ANIMALS for age in ("baby", "adult")},
             **{f"passenger {vehicle}": vehicle for vehicle in ("jet", "train")},
             "bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"}
"""chair.py's double_word_dict: two words read as one ("wine glas": singularised "wine glass")."""

_TOKEN = re.compile(r"[^\W_]+(?:-[^\W_]+)*|\S")
_IRREGULAR = {"children": "child", "men": "man", "people": "person", "feet": "foot", "geese": "goose",
              "teeth": "tooth", "oxen": "ox", "leaves": "leaf", "loaves": "loaf", "axes": "axe", "kine": "cow",
              "moves": "move"}
_UNCHANGED = ("scissors", "bison", "species", "series")
_SUFFIXES = [(re.compile(p), r) for p, r in (
    (r"([ml])ice$", r"\1ouse"), (r"(shoe|o|bus)es$", r"\1"), (r"(x|ch|ss|sh)es$", r"\1"),
    (r"([^aeiouy]|qu)ies$", r"\1y"), (r"([aeo]l)ves$", r"\1f"), (r"([^d]ea)ves$", r"\1f"), (r"arves$", "arf"),
    (r"erves$", "erve"), (r"([nlw]i)ves$", r"\1fe"), (r"([lr])ves$", r"\1f"), (r"([aeo])ves$", r"\1ve"),
    (r"(sive|tive|hive)s$", r"\1"), (r"([^f])ves$", r"\1fe"), (r"([ti])a$", r"\1um"), (r"s$", ""))]


def singular(word: str) -> str:
    """pattern.en.singularize on the words CHAIR can count: unchanged where the word ends one of its uninflected
    words or is a plural "-ie" word of the list, irregular plurals, then the first suffix rule that applies."""
    if any(kept.endswith(word) for kept in _UNCHANGED) or word.endswith(("collies", "doggies")):
        return word
    for plural, single in _IRREGULAR.items():
        if word.endswith(plural):
            return word[: -len(plural)] + single
    for suffix, replacement in _SUFFIXES:
        if suffix.search(word):
            return suffix.sub(replacement, word)
    return word


def read_synonyms(path: Path) -> dict[str, str]:
    """Each word of synonyms.txt -> its object (the line's first word), as chair.py reads the file."""
    if not path.is_file():
        raise DataError(f"chair: {path} not found; put {SYNONYMS_PUBLISHED} in --data-dir")
    objects = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.strip().split(", ")
        objects.update({word: words[0] for word in words})
    return objects


def mentions(caption: str, objects: Mapping[str, str]) -> list[str]:
    """The objects a caption mentions, once per mention, in order (chair.py's caption_to_words' node words)."""
    words = [singular(token) for token in _TOKEN.findall(caption.lower())]
    merged, i = [], 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        merged.append(TWO_WORDS.get(pair, words[i]))
        i += 2 if pair in TWO_WORDS else 1
    if "toilet" in merged and "seat" in merged:  # "the seat of the toilet" is no chair
        merged = [word for word in merged if word != "seat"]
    return [objects[word] for word in merged if word in objects]


def read(data_dir: Path, split: str) -> list[BenchmarkItem]:
    synonyms = Path(data_dir) / SYNONYMS
    objects = read_synonyms(synonyms)
    instances_name, captions_name = "annotations/instances_val2014.json", "annotations/captions_val2014.json"
    instances = official_json("chair", data_dir, instances_name, COCO)
    captions = official_json("chair", data_dir, captions_name, COCO)
    where = str(Path(data_dir) / instances_name)
    files = {entry(image, "id", where, int): entry(image, "file_name", where, str)
             for image in entries(instances, "images", Path(where))}
    category = {entry(c, "id", where): entry(c, "name", where) for c in entries(instances, "categories", Path(where))}
    chosen = sorted(random.Random(SEED).sample(sorted(files), min(SAMPLE, len(files))))
    truth: dict[int, set[str]] = {image_id: set() for image_id in chosen}
    references: dict[int, list[str]] = {image_id: [] for image_id in chosen}
    for annotation in entries(instances, "annotations", Path(where)):
        if annotation.get("image_id") in truth:
            name = category[entry(annotation, "category_id", where)]
            if name not in objects:
                raise DataError(f"{SYNONYMS}: no line for the COCO category {name!r}; use {SYNONYMS_PUBLISHED}")
            truth[annotation["image_id"]].add(objects[name])
    for annotation in entries(captions, "annotations", Path(data_dir) / captions_name):
        if annotation.get("image_id") in truth:
            text = entry(annotation, "caption", captions_name, str)
            references[annotation["image_id"]].append(text)
            truth[annotation["image_id"]].update(mentions(text, objects))
    return [BenchmarkItem(id=str(image_id), image=Path(data_dir) / "val2014" / files[image_id], prompt=PROMPT,
                          references=tuple(references[image_id]),
                          meta={"image_id": image_id, "objects": tuple(sorted(truth[image_id])),
                                "synonyms": str(synonyms)})
            for image_id in chosen]


def score(items: Sequence[BenchmarkItem], replies: Mapping[str, str]) -> EvalResult:
    objects = read_synonyms(Path(items[0].meta["synonyms"])) if items else {}
    captions = dict(zip((item.id for item in items), replies_of("chair", items, replies)))
    said = {key: mentions(caption, objects) for key, caption in captions.items()}
    truth = {item.id: set(item.meta["objects"]) for item in items}
    false = {key: [m for m in said[key] if m not in truth[key]] for key in said}
    found = {key: len(truth[key] & set(said[key])) for key in said}
    per_item = {"chair_s": {key: float(bool(false[key])) for key in said},
                "chair_i": {key: len(false[key]) / len(said[key]) if said[key] else 0.0 for key in said},
                "coverage": {key: found[key] / len(truth[key]) if truth[key] else 0.0 for key in said},
                "length": {key: float(len(caption.split())) for key, caption in captions.items()}}
    chair_s, chair_s_interval = mean_with_interval(per_item["chair_s"])
    length, length_interval = mean_with_interval(per_item["length"])
    # CHAIR-i and coverage are ratios of sums over all captions (chair.py, lmms-eval), not per-item means: no
    # per-item interval
    values = {"chair_s": chair_s, "chair_i": _ratio(sum(map(len, false.values())), sum(map(len, said.values()))),
              "coverage": _ratio(sum(found.values()), sum(map(len, truth.values()))), "length": length}
    return EvalResult(values, intervals={"chair_s": chair_s_interval, "length": length_interval},
                      per_item=per_item)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def write_submission(items: Sequence[BenchmarkItem], replies: Mapping[str, str], folder: Path) -> Path:
    """COCO's caption results format, [{image_id, caption}], what chair.py's captions come from."""
    return write_rows("chair", items, replies, Path(folder) / "chair_captions.json",
                      lambda item, caption: {"image_id": item.meta["image_id"], "caption": caption})


BENCHMARK = Benchmark(
    name="chair", task="caption", splits=("val2014",),
    files="annotations/instances_val2014.json, annotations/captions_val2014.json, val2014/, synonyms.txt "
          "(github.com/LisaAnne/Hallucination data/synonyms.txt)",
    prompt_source="\"Please describe this image in detail.\" (lmms-eval coco_cap_chair)",
    metric=f"CHAIR-s, CHAIR-i, coverage and caption length over {SAMPLE} val2014 images (seed {SEED}), the official "
           "chair.py's object matching with the paper's synonyms",
    reference="LisaAnne/Hallucination utils/chair.py (lmms-eval coco_cap_chair for the prompt and coverage)",
    max_new_tokens=512, read=read, score=score, write_submission=write_submission)
