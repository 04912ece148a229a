"""Tests for verbovision.synth: layout, determinism, splits, language and pixel sanity.

The expected captions are rebuilt here from independent vocabulary tables rather than from the
module's own, so a mistake in the generator's tables cannot hide itself.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from verbovision.data.synth import COLOURS, synth_shapes
from verbovision.errors import DataError
from verbovision.data.synth_geometry import synth_geometry

N = 30
SHAPES_SIZE = 64
GEO_SIZE = 128
SPLITS = ("train", "val", "test")

EN_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
PT_NOUNS = {"circle": ("círculo", "m"), "square": ("quadrado", "m"), "triangle": ("triângulo", "m"),
            "star": ("estrela", "f")}
PT_COLOURS = {"red": ("vermelho", "vermelha"), "green": ("verde", "verde"), "blue": ("azul", "azul"),
              "yellow": ("amarelo", "amarela"), "purple": ("roxo", "roxa"), "orange": ("laranja", "laranja")}
PT_SIZES = {"large": ("grande", "grande"), "small": ("pequeno", "pequena")}
PT_FEMININE_ONLY = {"vermelha", "amarela", "roxa", "pequena"}
PT_MASCULINE_ONLY = {"vermelho", "amarelo", "roxo", "pequeno"}

EN_ITEM = r"a (?:large|small) (?:red|green|blue|yellow|purple|orange) (?:circle|square|triangle|star)"
PT_ITEM = (r"(?:um (?:círculo|quadrado|triângulo) (?:vermelho|verde|azul|amarelo|roxo|laranja) "
           r"(?:grande|pequeno)|uma estrela (?:vermelha|verde|azul|amarela|roxa|laranja) (?:grande|pequena))")


def _list_grammar(item: str, conjunction: str) -> re.Pattern[str]:
    return re.compile(rf"^{item}(?: {conjunction} {item}|, {item} {conjunction} {item})?$")


EN_SHORT = _list_grammar(EN_ITEM, "and")
PT_SHORT = _list_grammar(PT_ITEM, "e")
EN_POS = r"(?:on the left|in the middle|on the right)"
PT_POS = r"(?:à esquerda|no meio|à direita)"
EN_DETAILED = re.compile(
    rf"^(?:There is one shape: {EN_ITEM} {EN_POS}\."
    rf"|The image shows {EN_ITEM} {EN_POS}\."
    rf"|There are (?:two|three) shapes\."
    rf"(?: (?:On the left|In the middle|On the right), {EN_ITEM}\.){{2,3}}"
    rf"|The image shows (?:two|three) shapes: "
    rf"{EN_ITEM} {EN_POS}(?:, {EN_ITEM} {EN_POS})? and {EN_ITEM} {EN_POS}\.)$"
)
PT_DETAILED = re.compile(
    rf"^(?:Há uma forma: {PT_ITEM} {PT_POS}\."
    rf"|A imagem mostra {PT_ITEM} {PT_POS}\."
    rf"|Há (?:duas|três) formas\.(?: (?:À esquerda|No meio|À direita), {PT_ITEM}\.){{2,3}}"
    rf"|A imagem mostra (?:duas|três) formas: "
    rf"{PT_ITEM} {PT_POS}(?:, {PT_ITEM} {PT_POS})? e {PT_ITEM} {PT_POS}\.)$"
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _scenes(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "scenes.jsonl").read_text(encoding="utf-8").splitlines()]


def _records(root: Path, name: str) -> dict[str, list[dict]]:
    """split -> records of ``{split}/{name}.json``."""
    return {split: _load_json(root / split / f"{name}.json") for split in SPLITS}


def _all_record_files(root: Path) -> list[Path]:
    return sorted(p for split in SPLITS for p in (root / split).glob("*.json"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _reply(record: dict) -> str:
    return record["conversations"][1]["value"]


def _question(record: dict) -> str:
    return record["conversations"][0]["value"].removeprefix("<image>\n")


def _scene_by_image(root: Path) -> dict[str, dict]:
    return {f"../{s['image']}": s for s in _scenes(root)}


def _pt_phrase(obj: dict) -> str:
    noun, gender = PT_NOUNS[obj["shape"]]
    g = 0 if gender == "m" else 1
    article = ("um", "uma")[g]
    return f"{article} {noun} {PT_COLOURS[obj['colour']][g]} {PT_SIZES[obj['size']][g]}"


def _en_phrase(obj: dict) -> str:
    return f"a {obj['size']} {obj['colour']} {obj['shape']}"


def _join(items: list[str], conjunction: str) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    synth_shapes(root, n=N, seed=0, image_size=SHAPES_SIZE)
    return root


@pytest.fixture(scope="module")
def geometry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("geometry")
    synth_geometry(root, n=N, seed=0, image_size=GEO_SIZE)
    return root


# ---------------------------------------------------------------------------------------------
# determinism and layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("generate", [synth_shapes, synth_geometry])
def test_same_seed_gives_identical_files(tmp_path, generate):
    generate(tmp_path / "a", n=N, seed=3)
    generate(tmp_path / "b", n=N, seed=3)
    generate(tmp_path / "c", n=N, seed=4)
    a, b, c = (_tree_bytes(tmp_path / d) for d in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["scenes.jsonl"] != c["scenes.jsonl"]
    assert sum(a[k] != c[k] for k in a if k.startswith("images/")) > N // 2
    # Pixels, not just bytes: PNG encoding could in principle differ for identical pixels.
    first = "images/000000.png"
    pixels = [np.asarray(Image.open(tmp_path / d / first)) for d in "ab"]
    assert np.array_equal(*pixels)


def test_english_does_not_depend_on_other_languages(tmp_path):
    synth_shapes(tmp_path / "en", n=N, seed=1, langs=("en",))
    synth_shapes(tmp_path / "both", n=N, seed=1, langs=("en", "pt"))
    en, both = _tree_bytes(tmp_path / "en"), _tree_bytes(tmp_path / "both")
    assert not any("_pt" in name for name in en)
    assert any("_pt" in name for name in both)
    assert all(both[name] == data for name, data in en.items() if name != "dataset_info.json")


@pytest.mark.parametrize("generate, expected", [
    (synth_shapes, {"caption_short_en", "caption_detailed_en", "vqa_en",
                    "caption_short_pt", "caption_detailed_pt", "vqa_pt"}),
    (synth_geometry, {"caption_en", "geoqa_en"}),
])
def test_layout_and_dataset_info(tmp_path, generate, expected):
    summary = generate(tmp_path, n=N, seed=0)
    for split in SPLITS:
        assert {p.stem for p in (tmp_path / split).glob("*.json")} == expected
    assert len(list((tmp_path / "images").glob("*.png"))) == N
    assert _load_json(tmp_path / "dataset_info.json") == summary
    assert summary["n"] == N and summary["seed"] == 0 and summary["version"]
    assert summary["generator"].endswith(generate.__name__.removeprefix("synth_"))
    for name, count in summary["files"].items():
        if name.endswith(".json"):
            assert len(_load_json(tmp_path / name)) == count
    # Atomic writes leave no temporary files behind.
    assert not [p for p in tmp_path.rglob(".*")]


def test_a_dataset_of_other_settings_is_not_written_over(tmp_path):
    """Synthesizing into the folder of an earlier dataset with other settings wrote over its images and left its
    other tables (another language's, of another seed and split) beside the new ones, describing other images."""
    synth_shapes(tmp_path, n=N, seed=0)
    before = _tree_bytes(tmp_path)
    with pytest.raises(DataError, match=r"seed 0 \(now 1\), n 30 \(now 10\), langs en,pt \(now en\)"):
        synth_shapes(tmp_path, n=10, seed=1, langs=("en",))
    assert _tree_bytes(tmp_path) == before
    assert synth_shapes(tmp_path, n=N, seed=0)["n"] == N  # the same settings again: written again, as they were
    assert _tree_bytes(tmp_path) == before


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        synth_shapes(tmp_path, n=3, langs=("en", "fr"))
    with pytest.raises(ValueError):
        synth_shapes(tmp_path, n=3, splits=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError):
        synth_geometry(tmp_path, n=3, splits=(0.9, 0.2, -0.1))


@pytest.mark.parametrize("fixture", ["shapes", "geometry"])
def test_splits_partition_images(request, fixture):
    root: Path = request.getfixturevalue(fixture)
    scenes = _scenes(root)
    split_of = {f"../{s['image']}": s["split"] for s in scenes}
    assert len(split_of) == N
    counts = Counter(split_of.values())
    for split, ratio in zip(SPLITS, (0.8, 0.1, 0.1)):
        assert abs(counts[split] - ratio * N) <= 1
    seen: dict[str, set[str]] = {split: set() for split in SPLITS}
    for path in _all_record_files(root):
        split = path.parent.name
        for record in _load_json(path):
            assert split_of[record["image"]] == split
            seen[split].add(record["image"])
    assert sum(len(images) for images in seen.values()) == N  # every image used, in one split only


@pytest.mark.parametrize("fixture, size", [("shapes", SHAPES_SIZE), ("geometry", GEO_SIZE)])
def test_records_are_well_formed(request, fixture, size):
    root: Path = request.getfixturevalue(fixture)
    ids = []
    opened: set[Path] = set()
    for path in _all_record_files(root):
        for record in _load_json(path):
            ids.append(record["id"])
            human, gpt = record["conversations"]
            assert (human["from"], gpt["from"]) == ("human", "gpt")
            assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
            assert "<image>" not in gpt["value"] and gpt["value"]
            image_path = (path.parent / record["image"]).resolve()
            if image_path not in opened:
                with Image.open(image_path) as image:
                    assert image.mode == "RGB" and image.size == (size, size)
                opened.add(image_path)
    assert len(ids) == len(set(ids))
    assert len(opened) == N


# ---------------------------------------------------------------------------------------------
# shapes: scenes and pixels
# ---------------------------------------------------------------------------------------------


def test_objects_sit_in_distinct_columns_without_overlap(shapes):
    column_width = SHAPES_SIZE / 3
    for scene in _scenes(shapes):
        objects = scene["objects"]
        assert 1 <= len(objects) <= 3
        assert len({o["column"] for o in objects}) == len(objects)
        assert [o["cx"] for o in objects] == sorted(o["cx"] for o in objects)
        for o in objects:
            column = ("left", "middle", "right").index(o["column"])
            left, right = o["cx"] - o["radius"], o["cx"] + o["radius"]
            assert column * column_width <= left and right <= (column + 1) * column_width
            assert 0 <= o["cy"] - o["radius"] and o["cy"] + o["radius"] <= SHAPES_SIZE


def test_object_colours_appear_at_their_centres(shapes):
    one_object_scenes = 0
    for scene in _scenes(shapes):
        pixels = np.asarray(Image.open(shapes / scene["image"]), dtype=int)
        for o in scene["objects"]:
            centre = pixels[int(o["cy"]), int(o["cx"])]
            assert np.abs(centre - np.array(COLOURS[o["colour"]])).max() <= 30, (scene["image"], o)
        if len(scene["objects"]) == 1:
            one_object_scenes += 1
            (o,) = scene["objects"]
            ink_columns = np.nonzero((pixels < 240).any(axis=2).any(axis=0))[0]
            column = ("left", "middle", "right").index(o["column"])
            left, right = column * SHAPES_SIZE / 3, (column + 1) * SHAPES_SIZE / 3
            assert left <= ink_columns.min() and ink_columns.max() < right
    assert one_object_scenes > 0


# ---------------------------------------------------------------------------------------------
# shapes: language
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang, phrase, conjunction", [("en", _en_phrase, "and"), ("pt", _pt_phrase, "e")])
def test_short_captions_are_canonical(shapes, lang, phrase, conjunction):
    scenes = _scene_by_image(shapes)
    records = [r for rs in _records(shapes, f"caption_short_{lang}").values() for r in rs]
    assert len(records) == N and len({r["image"] for r in records}) == N
    for record in records:
        objects = sorted(scenes[record["image"]]["objects"], key=lambda o: o["cx"])
        assert _reply(record) == _join([phrase(o) for o in objects], conjunction)


@pytest.mark.parametrize("name, grammar", [
    ("caption_short_en", EN_SHORT), ("caption_short_pt", PT_SHORT),
    ("caption_detailed_en", EN_DETAILED), ("caption_detailed_pt", PT_DETAILED),
])
def test_captions_match_grammar(shapes, name, grammar):
    records = [r for rs in _records(shapes, name).values() for r in rs]
    assert len(records) == N
    for record in records:
        assert grammar.match(_reply(record)), _reply(record)


def test_prompts(shapes):
    expected = {
        "caption_short_en": "Describe the image briefly.",
        "caption_detailed_en": "Describe the image in detail.",
        "caption_short_pt": "Descreva a imagem brevemente.",
        "caption_detailed_pt": "Descreva a imagem em detalhes.",
    }
    for name, prompt in expected.items():
        assert {_question(r) for rs in _records(shapes, name).values() for r in rs} == {prompt}


def test_detailed_captions_mention_count_and_positions(shapes):
    scenes = _scene_by_image(shapes)
    positions = {"left": "left", "middle": "middle", "right": "right"}
    counts = {1: "one", 2: "two", 3: "three"}
    for record in (r for rs in _records(shapes, "caption_detailed_en").values() for r in rs):
        objects = scenes[record["image"]]["objects"]
        text = _reply(record)
        if len(objects) > 1:
            assert f"{counts[len(objects)]} shapes" in text
        for o in objects:
            assert _en_phrase(o) in text and positions[o["column"]] in text


def test_portuguese_gender_agreement(shapes):
    captions = [_reply(r) for name in ("caption_short_pt", "caption_detailed_pt")
                for rs in _records(shapes, name).values() for r in rs]
    vqa = [r for rs in _records(shapes, "vqa_pt").values() for r in rs]
    stars = 0
    for text in captions + [_question(r) for r in vqa]:
        words = re.findall(r"\w+", text.lower())
        for before, word, after in zip(["", *words], words, [*words[1:], ""]):
            if word == "estrela":
                stars += 1
                assert before in {"uma", "a"} and after not in PT_MASCULINE_ONLY, text
            elif word in {"círculo", "quadrado", "triângulo", "objeto"}:
                assert before in {"um", "o"} and after not in PT_FEMININE_ONLY, text
    assert stars > 0
    for text in captions:
        for colour, size in re.findall(r"estrela (\w+) (\w+)", text):
            assert colour in {f for _, f in PT_COLOURS.values()} and size in {"grande", "pequena"}
    # A colour answer agrees with the noun it was asked about: "De que cor é a estrela?" -> "vermelha".
    for record in vqa:
        if match := re.match(r"^De que cor é (o|a) \w+\?$", _question(record)):
            gender = 0 if match[1] == "o" else 1
            assert _reply(record) in {forms[gender] for forms in PT_COLOURS.values()}, record


# ---------------------------------------------------------------------------------------------
# shapes: VQA
# ---------------------------------------------------------------------------------------------

EN_QUESTIONS = [
    (re.compile(r"^How many shapes are there\?$"), "count"),
    (re.compile(r"^What colour is the (\w+)\?$"), "colour"),
    (re.compile(r"^What shape is the (\w+) object\?$"), "shape"),
    (re.compile(r"^Where is the (\w+) (\w+)\?$"), "position"),
    (re.compile(r"^Is there a (\w+) (\w+)\?$"), "exists"),
]


def _expected_en_answer(kind: str, args: tuple[str, ...], objects: list[dict]) -> str:
    if kind == "count":
        return str(len(objects))
    if kind == "colour":
        (matching,) = [o for o in objects if o["shape"] == args[0]]  # asked only when unique
        return matching["colour"]
    if kind == "shape":
        (matching,) = [o for o in objects if o["colour"] == args[0]]
        return matching["shape"]
    colour, shape = args
    matching = [o for o in objects if (o["colour"], o["shape"]) == (colour, shape)]
    if kind == "position":
        (only,) = matching
        return only["column"]
    return "yes" if matching else "no"


def test_english_vqa_answers_follow_from_the_scene(shapes):
    scenes = _scene_by_image(shapes)
    kinds, answers = Counter(), Counter()
    for record in (r for rs in _records(shapes, "vqa_en").values() for r in rs):
        question = _question(record)
        kind, args = next((k, m.groups()) for pattern, k in EN_QUESTIONS if (m := pattern.match(question)))
        assert _reply(record) == _expected_en_answer(kind, args, scenes[record["image"]]["objects"]), record
        kinds[kind] += 1
        answers[_reply(record)] += 1
    assert kinds["count"] == N and kinds["exists"] == 2 * N
    assert all(kinds[k] > 0 for k in ("colour", "shape", "position"))
    assert answers["yes"] == answers["no"] == N


def test_portuguese_vqa_parallels_english(shapes):
    translations = {"yes": "sim", "no": "não"}
    translations |= {"left": "à esquerda", "middle": "no meio", "right": "à direita"}
    translations |= {en: noun for en, (noun, _) in PT_NOUNS.items()}
    en = {r["id"].removesuffix("-en"): r for rs in _records(shapes, "vqa_en").values() for r in rs}
    pt = {r["id"].removesuffix("-pt"): r for rs in _records(shapes, "vqa_pt").values() for r in rs}
    assert en.keys() == pt.keys()
    for key, record in en.items():
        en_answer, pt_answer = _reply(record), _reply(pt[key])
        if en_answer in EN_COLOURS:
            assert pt_answer in PT_COLOURS[en_answer]
        else:
            assert pt_answer == translations.get(en_answer, en_answer)
    pt_questions = {_question(r) for r in pt.values()}
    assert "Quantas formas há?" in pt_questions
    assert any(q.startswith("De que cor é ") for q in pt_questions)


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------


def test_geometry_answers(geometry):
    scenes = _scene_by_image(geometry)
    asked = Counter()
    for record in (r for rs in _records(geometry, "geoqa_en").values() for r in rs):
        scene = scenes[record["image"]]
        angles, x = scene["angles"], scene["asked"]
        assert sum(angles.values()) == 180 and all(20 <= a <= 110 and a % 5 == 0 for a in angles.values())
        assert record["answer"] == str(angles[x])
        assert _reply(record).endswith(f"Answer: {angles[x]}")
        assert _question(record).rstrip("?.").endswith(f"angle {x}")
        given = [v for v in "ABC" if v != x]
        for vertex in given:  # the reasoning quotes the two given angles, then subtracts them
            assert f"ngle {vertex} = {angles[vertex]}°" in _reply(record)
        subtraction = f"angle {x} = 180° - {angles[given[0]]}° - {angles[given[1]]}° = {angles[x]}°"
        assert subtraction in _reply(record)
        assert set(scene["angle_labels"]) == set(angles) - {x}
        asked[x] += 1
    assert len(asked) == 3


def test_geometry_captions_name_the_marked_angles(geometry):
    scenes = _scene_by_image(geometry)
    captions = [r for rs in _records(geometry, "caption_en").values() for r in rs]
    assert len(captions) == N
    for record in captions:
        scene = scenes[record["image"]]
        marked = [v for v in "ABC" if v != scene["asked"]]
        assert _question(record) == "Describe the figure."
        assert _reply(record) == (f"Triangle ABC, with angle {marked[0]} marked {scene['angles'][marked[0]]}° and "
                                  f"angle {marked[1]} marked {scene['angles'][marked[1]]}°; angle {scene['asked']} "
                                  "is not marked.")


def test_geometry_figure_has_ink_at_vertices_and_labels(geometry):
    for scene in _scenes(geometry):
        pixels = np.asarray(Image.open(geometry / scene["image"]).convert("L"), dtype=int)
        for x, y in [*scene["vertices"].values(), *scene["angle_labels"].values()]:
            patch = pixels[max(0, int(y) - 3): int(y) + 4, max(0, int(x) - 3): int(x) + 4]
            assert patch.min() < 128, scene
        assert (pixels[:2] > 250).all() and (pixels[:, :2] > 250).all()  # margins stay blank
