"""Deterministic synthetic vision-language datasets in LLaVA format.

Two generators write an ``images/`` folder, one LLaVA JSON list per split, task and language
(``{split}/{task}_{lang}.json``), a ``scenes.jsonl`` with the ground truth of every image and a
``dataset_info.json`` summary:

* :func:`synth_shapes` - one to three coloured shapes on white, each in its own column, with short
  and detailed captions and single-turn VQA in English and Portuguese. The scenes are kept
  deliberately clean so that a tiny model trained from scratch on a CPU learns them in minutes.
* :func:`synth_geometry` - a triangle ABC with two of its angles labelled; the question asks for
  one angle and the answer reasons to a number (Geo170K style), and a caption names what the
  figure shows (image-text pairs for aligning a connector, as LLaVA-CC3M-Pretrain does).

Everything derives from ``seed``. Each image has its own RNG seeded from (generator, seed, index),
so the same seed gives byte-identical files, the English records do not change when Portuguese is
added, and a larger ``n`` starts with the same scenes as a smaller one (only the split assignment
depends on ``n``)."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from .records import CAPTION_PROMPT
from .synth_dataset import (
    BACKGROUND,
    SUPERSAMPLE,
    Point,
    Record,
    assign_splits,
    dataset_settings,
    empty_tables,
    llava_record,
    prepare_dir,
    write_dataset,
    write_image,
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 80, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
# Half-extent of an object's bounding box as a fraction of the image width. Three large objects
# must fit side by side in three equal columns without touching, which caps "large" at ~0.16.
SIZES: dict[str, float] = {"large": 0.15, "small": 0.10}
COLUMNS = ("left", "middle", "right")


_EDGE_GAP = 0.01  # fraction of the width kept free at each column edge, so neighbours never touch
_MAX_V_JITTER = 0.2  # fraction of the height an object's centre may move up or down


@dataclass(frozen=True)
class SceneObject:
    """One shape of a synthetic scene; coordinates are in output-image pixels."""

    shape: str
    colour: str
    size: str
    column: str
    cx: float
    cy: float
    radius: float


def _sample_object(rng: random.Random, column: int, image_size: int) -> SceneObject:
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    size = rng.choice(list(SIZES))
    radius = SIZES[size] * image_size
    col_width = image_size / len(COLUMNS)
    gap = _EDGE_GAP * image_size
    # Keeping the whole bounding box inside the column is what guarantees no overlap and an
    # unambiguous position answer.
    cx = rng.uniform(column * col_width + gap + radius, (column + 1) * col_width - gap - radius)
    v_range = min(_MAX_V_JITTER * image_size, image_size / 2 - gap - radius)
    cy = image_size / 2 + rng.uniform(-v_range, v_range)
    return SceneObject(shape, colour, size, COLUMNS[column], round(cx, 2), round(cy, 2), round(radius, 2))


def _sample_shapes_scene(rng: random.Random, image_size: int) -> list[SceneObject]:
    """1-3 objects in distinct columns, listed left to right (the canonical caption order)."""
    columns = sorted(rng.sample(range(len(COLUMNS)), rng.randint(1, 3)))
    return [_sample_object(rng, column, image_size) for column in columns]


def _centred(points: list[Point]) -> list[Point]:
    """Shift an outline so its bounding box is centred on the origin (stars are top-heavy)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    dx, dy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return [(x - dx, y - dy) for x, y in points]


def _star_outline(points: int = 5, inner: float = 0.5) -> list[Point]:
    # A fatter star than the regular one (inner ratio 0.38) keeps its arms visible at small sizes.
    step = math.pi / points
    return [
        ((1 if k % 2 == 0 else inner) * math.cos(-math.pi / 2 + k * step),
         (1 if k % 2 == 0 else inner) * math.sin(-math.pi / 2 + k * step))
        for k in range(2 * points)
    ]


_HALF_HEIGHT = math.sqrt(3) / 2
# Outlines within the unit box [-1, 1]^2; circles are drawn as ellipses instead.
_UNIT_OUTLINES: dict[str, list[Point]] = {
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0.0, -_HALF_HEIGHT), (1.0, _HALF_HEIGHT), (-1.0, _HALF_HEIGHT)],
    "star": _centred(_star_outline()),
}


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: int) -> None:
    cx, cy, r = obj.cx * scale, obj.cy * scale, obj.radius * scale
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx + x * r, cy + y * r) for x, y in _UNIT_OUTLINES[obj.shape]], fill=fill)


def _render_shapes(objects: Sequence[SceneObject], image_size: int) -> Image.Image:
    canvas = Image.new("RGB", (image_size * SUPERSAMPLE,) * 2, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        _draw_object(draw, obj, SUPERSAMPLE)
    return canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)


def _agree(masculine: str, feminine: str | None = None) -> dict[str, str]:
    """Adjective forms by grammatical gender; invariable words give one form."""
    return {"m": masculine, "f": feminine or masculine}


@dataclass(frozen=True)
class _Lexicon:
    nouns: dict[str, tuple[str, str]]  # shape (or "object") -> (noun, gender)
    colours: dict[str, dict[str, str]]  # colour -> gender -> adjective
    sizes: dict[str, dict[str, str]]
    indefinite: dict[str, str]  # gender -> article
    definite: dict[str, str]
    word_order: tuple[str, ...]  # slots of a noun phrase
    conjunction: str
    positions: dict[str, str]  # column -> phrase used in captions
    position_answers: dict[str, str]  # column -> VQA answer
    count_words: dict[int, str]  # number of shapes, agreeing with the word for "shape"
    yes_no: tuple[str, str]
    short_prompt: str
    detailed_prompt: str
    # Detailed templates; {listing}, {sentences} and {count} are filled in. Both tuples must have
    # the same length because the template index is drawn once per image for all languages.
    detailed_one: tuple[str, ...]
    detailed_many: tuple[str, ...]
    questions: dict[str, str]  # VQA kind -> question template with {subject}


_LEXICONS: dict[str, _Lexicon] = {
    "en": _Lexicon(
        nouns={s: (s, "m") for s in (*SHAPES, "object")},
        colours={c: _agree(c) for c in COLOURS},
        sizes={s: _agree(s) for s in SIZES},
        indefinite=_agree("a"),
        definite=_agree("the"),
        word_order=("article", "size", "colour", "noun"),
        conjunction="and",
        positions={"left": "on the left", "middle": "in the middle", "right": "on the right"},
        position_answers={c: c for c in COLUMNS},
        count_words={1: "one", 2: "two", 3: "three"},
        yes_no=("yes", "no"),
        short_prompt=CAPTION_PROMPT,
        detailed_prompt="Describe the image in detail.",
        detailed_one=("There is one shape: {listing}.", "The image shows {listing}."),
        detailed_many=(
            "There are {count} shapes. {sentences}",
            "The image shows {count} shapes: {listing}.",
        ),
        questions={
            "count": "How many shapes are there?",
            "colour": "What colour is {subject}?",
            "shape": "What shape is {subject}?",
            "position": "Where is {subject}?",
            "present": "Is there {subject}?",
            "absent": "Is there {subject}?",
        },
    ),
    "pt": _Lexicon(
        nouns={
            "circle": ("círculo", "m"),
            "square": ("quadrado", "m"),
            "triangle": ("triângulo", "m"),
            "star": ("estrela", "f"),
            "object": ("objeto", "m"),
        },
        colours={
            "red": _agree("vermelho", "vermelha"),
            "green": _agree("verde"),
            "blue": _agree("azul"),
            "yellow": _agree("amarelo", "amarela"),
            "purple": _agree("roxo", "roxa"),
            "orange": _agree("laranja"),
        },
        sizes={"large": _agree("grande"), "small": _agree("pequeno", "pequena")},
        indefinite=_agree("um", "uma"),
        definite=_agree("o", "a"),
        word_order=("article", "noun", "colour", "size"),
        conjunction="e",
        positions={"left": "à esquerda", "middle": "no meio", "right": "à direita"},
        position_answers={"left": "à esquerda", "middle": "no meio", "right": "à direita"},
        count_words={1: "uma", 2: "duas", 3: "três"},  # "forma" is feminine
        yes_no=("sim", "não"),
        short_prompt="Descreva a imagem brevemente.",
        detailed_prompt="Descreva a imagem em detalhes.",
        detailed_one=("Há uma forma: {listing}.", "A imagem mostra {listing}."),
        detailed_many=("Há {count} formas. {sentences}", "A imagem mostra {count} formas: {listing}."),
        questions={
            "count": "Quantas formas há?",
            "colour": "De que cor é {subject}?",
            "shape": "Que forma tem {subject}?",
            "position": "Onde está {subject}?",
            "present": "Há {subject}?",
            "absent": "Há {subject}?",
        },
    ),
}
SUPPORTED_LANGS = tuple(_LEXICONS)


def _noun_phrase(
    lex: _Lexicon, noun: str, *, definite: bool, colour: str | None = None, size: str | None = None
) -> str:
    word, gender = lex.nouns[noun]
    slots = {
        "article": (lex.definite if definite else lex.indefinite)[gender],
        "noun": word,
        "colour": lex.colours[colour][gender] if colour else "",
        "size": lex.sizes[size][gender] if size else "",
    }
    return " ".join(slots[slot] for slot in lex.word_order if slots[slot])


def _describe(lex: _Lexicon, obj: SceneObject) -> str:
    return _noun_phrase(lex, obj.shape, definite=False, colour=obj.colour, size=obj.size)


def _join(items: Sequence[str], conjunction: str) -> str:
    """'x', 'x and y', 'x, y and z' (no Oxford comma)."""
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _short_caption(lex: _Lexicon, objects: Sequence[SceneObject]) -> str:
    return _join([_describe(lex, o) for o in objects], lex.conjunction)


def _detailed_caption(lex: _Lexicon, objects: Sequence[SceneObject], template: int) -> str:
    listing = _join([f"{_describe(lex, o)} {lex.positions[o.column]}" for o in objects], lex.conjunction)
    sentences = " ".join(f"{_capitalise(lex.positions[o.column])}, {_describe(lex, o)}." for o in objects)
    templates = lex.detailed_one if len(objects) == 1 else lex.detailed_many
    return templates[template].format(
        listing=listing, sentences=sentences, count=lex.count_words[len(objects)]
    )


@dataclass(frozen=True)
class _Question:
    """A language-independent question, rendered once per language so EN and PT stay parallel."""

    kind: str  # count | colour | shape | position | present | absent
    shape: str = ""
    colour: str = ""
    column: str = ""
    count: int = 0


def _plan_questions(objects: Sequence[SceneObject], rng: random.Random) -> list[_Question]:
    """One question per kind, skipping kinds whose subject would be ambiguous in this scene."""
    shapes = Counter(o.shape for o in objects)
    colours = Counter(o.colour for o in objects)
    pairs = Counter((o.shape, o.colour) for o in objects)
    questions = [_Question("count", count=len(objects))]
    candidates = {
        "colour": [o for o in objects if shapes[o.shape] == 1],
        "shape": [o for o in objects if colours[o.colour] == 1],
        "position": [o for o in objects if pairs[o.shape, o.colour] == 1],
        "present": list(objects),
    }
    for kind, eligible in candidates.items():
        if eligible:
            o = rng.choice(eligible)
            questions.append(_Question(kind, o.shape, o.colour, o.column))
    # One "present" and one "absent" question per image keeps yes/no exactly balanced.
    absent = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in pairs]
    shape, colour = rng.choice(absent)
    questions.append(_Question("absent", shape, colour))
    return questions


def _render_question(lex: _Lexicon, q: _Question) -> tuple[str, str]:
    """Return (question, answer) in the lexicon's language."""
    subject = ""
    match q.kind:
        case "count":
            answer = str(q.count)
        case "colour":
            subject = _noun_phrase(lex, q.shape, definite=True)
            answer = lex.colours[q.colour][lex.nouns[q.shape][1]]  # agrees with the asked noun
        case "shape":
            subject = _noun_phrase(lex, "object", definite=True, colour=q.colour)
            answer = lex.nouns[q.shape][0]
        case "position":
            subject = _noun_phrase(lex, q.shape, definite=True, colour=q.colour)
            answer = lex.position_answers[q.column]
        case "present" | "absent":
            subject = _noun_phrase(lex, q.shape, definite=False, colour=q.colour)
            answer = lex.yes_no[q.kind == "absent"]
        case _:
            raise ValueError(f"unknown question kind {q.kind!r}")
    return lex.questions[q.kind].format(subject=subject), answer


def _shapes_records(
    index: int, image: str, objects: Sequence[SceneObject], lang: str, template: int,
    questions: Sequence[_Question],
) -> dict[str, list[Record]]:
    """All records of one image in one language, keyed by task."""
    lex = _LEXICONS[lang]
    stem = f"shapes-{index:06d}"
    vqa = []
    for q in questions:
        question, answer = _render_question(lex, q)
        vqa.append(llava_record(f"{stem}-vqa-{q.kind}-{lang}", image, question, answer))
    return {
        "caption_short": [
            llava_record(f"{stem}-short-{lang}", image, lex.short_prompt, _short_caption(lex, objects))
        ],
        "caption_detailed": [
            llava_record(f"{stem}-detailed-{lang}", image, lex.detailed_prompt,
                    _detailed_caption(lex, objects, template))
        ],
        "vqa": vqa,
    }


def synth_shapes(
    out: str | Path,
    n: int = 3000,
    seed: int = 0,
    langs: Sequence[str] = ("en", "pt"),
    image_size: int = 64,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict:
    """Write a coloured-shapes captioning/VQA dataset to ``out`` and return its summary.

    Files: ``images/NNNNNN.png``, ``scenes.jsonl``, ``{split}/caption_short_{lang}.json``,
    ``{split}/caption_detailed_{lang}.json``, ``{split}/vqa_{lang}.json`` and
    ``dataset_info.json``.
    """
    langs = _check_langs(langs)
    settings = dataset_settings("shapes", seed, n, image_size, splits, langs=langs)
    root = prepare_dir(out, settings)
    split_of = assign_splits(n, splits, random.Random(f"shapes-splits:{seed}"))
    records = empty_tables([f"{task}_{lang}" for lang in langs
                             for task in ("caption_short", "caption_detailed", "vqa")])
    scenes = []
    detailed_templates = len(_LEXICONS["en"].detailed_many)
    for index in range(n):
        rng = random.Random(f"shapes:{seed}:{index}")
        objects = _sample_shapes_scene(rng, image_size)
        image = write_image(root, index, _render_shapes(objects, image_size))
        template = rng.randrange(detailed_templates)
        questions = _plan_questions(objects, rng)
        split = split_of[index]
        scenes.append({"image": image, "split": split, "objects": [asdict(o) for o in objects]})
        for lang in langs:
            for task, recs in _shapes_records(index, image, objects, lang, template, questions).items():
                records[split][f"{task}_{lang}"].extend(recs)
    return write_dataset(root, settings, scenes, records)


def _check_langs(langs: Sequence[str]) -> list[str]:
    if isinstance(langs, str):  # "en,pt" straight from a command line
        langs = langs.split(",")
    chosen = list(dict.fromkeys(lang.strip() for lang in langs if lang.strip()))
    unknown = [lang for lang in chosen if lang not in _LEXICONS]
    if not chosen or unknown:
        raise ValueError(f"langs must be a non-empty subset of {SUPPORTED_LANGS}, got {list(langs)}")
    return chosen
