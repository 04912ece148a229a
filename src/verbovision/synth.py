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
depends on ``n``).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
from bisect import bisect_right
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from .data import CAPTION_PROMPT, DATA_IMAGE_TOKEN, Turn
from .data import Record as ParsedRecord
from .datatools import llava_row

__all__ = [
    "COLOURS", "COLUMNS", "SHAPES", "SIZES", "SUPPORTED_LANGS",
    "SceneObject", "synth_geometry", "synth_shapes",
]

GENERATOR_VERSION = "1.0"
SPLIT_NAMES = ("train", "val", "test")

# Shapes are drawn at this multiple of the output size and downsampled with LANCZOS, so that edges
# are anti-aliased and a 6 px star still looks like a star.
_SUPERSAMPLE = 4

Point = tuple[float, float]
Record = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Shapes: scene model
# --------------------------------------------------------------------------------------------

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
_BACKGROUND = (255, 255, 255)
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


# --------------------------------------------------------------------------------------------
# Shapes: rendering
# --------------------------------------------------------------------------------------------


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
    canvas = Image.new("RGB", (image_size * _SUPERSAMPLE,) * 2, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        _draw_object(draw, obj, _SUPERSAMPLE)
    return canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------------------
# Shapes: language
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Shapes: VQA
# --------------------------------------------------------------------------------------------


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
        vqa.append(_record(f"{stem}-vqa-{q.kind}-{lang}", image, question, answer))
    return {
        "caption_short": [
            _record(f"{stem}-short-{lang}", image, lex.short_prompt, _short_caption(lex, objects))
        ],
        "caption_detailed": [
            _record(f"{stem}-detailed-{lang}", image, lex.detailed_prompt,
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
    root = _prepare_dir(out)
    split_of = _assign_splits(n, splits, random.Random(f"shapes-splits:{seed}"))
    records = _empty_tables([f"{task}_{lang}" for lang in langs
                             for task in ("caption_short", "caption_detailed", "vqa")])
    scenes = []
    detailed_templates = len(_LEXICONS["en"].detailed_many)
    for index in range(n):
        rng = random.Random(f"shapes:{seed}:{index}")
        objects = _sample_shapes_scene(rng, image_size)
        image = _write_image(root, index, _render_shapes(objects, image_size))
        template = rng.randrange(detailed_templates)
        questions = _plan_questions(objects, rng)
        split = split_of[index]
        scenes.append({"image": image, "split": split, "objects": [asdict(o) for o in objects]})
        for lang in langs:
            for task, recs in _shapes_records(index, image, objects, lang, template, questions).items():
                records[split][f"{task}_{lang}"].extend(recs)
    return _write_dataset(root, "shapes", seed, n, image_size, splits, scenes, records, langs=langs)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------

VERTICES = ("A", "B", "C")
_ANGLE_STEP, _ANGLE_MIN, _ANGLE_MAX = 5, 20, 110
# Sizes as fractions of the image size.
_GEO_MARGIN = 0.15  # kept free around the triangle for the vertex letters
_GEO_LINE_WIDTH = 1 / 64
_GEO_LETTER_SIZE = 0.11
_GEO_ANGLE_SIZE = 0.085
_GEO_LETTER_OFFSET = 0.07  # from the vertex to the centre of its letter
_GEO_LABEL_PAD = 0.015  # free space between an angle label and the sides or the other label
_GEO_LABEL_STEP = 0.005  # resolution of the search along the bisector
_GEO_CAPTION_PROMPT = "Describe the figure."
_GEO_QUESTIONS = (
    "As shown in the figure, find the measure of angle {x}.",
    "In triangle ABC shown in the figure, what is the measure of angle {x}?",
    "As shown in the figure, how many degrees is angle {x}?",
)

Box = tuple[float, float, float, float]  # left, top, right, bottom


@dataclass(frozen=True)
class _Triangle:
    angles: dict[str, int]  # vertex -> degrees
    vertices: dict[str, Point]  # vertex -> output-image pixels
    labels: dict[str, Point]  # vertex -> centre of its angle label; the asked angle has none
    asked: str
    question: int  # index into _GEO_QUESTIONS


@dataclass(frozen=True)
class _GeometryStyle:
    """Fonts at drawing resolution, and label extents around their centre in output pixels."""

    image_size: int
    letter_font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    angle_font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    label_extents: dict[int, Box]

    @classmethod
    def create(cls, image_size: int) -> _GeometryStyle:
        scale = image_size * _SUPERSAMPLE
        angle_font = ImageFont.load_default(size=round(_GEO_ANGLE_SIZE * scale))
        extents = {
            degrees: tuple(x / _SUPERSAMPLE for x in angle_font.getbbox(_angle_label(degrees), anchor="mm"))
            for degrees in range(_ANGLE_MIN, _ANGLE_MAX + 1, _ANGLE_STEP)
        }
        letter_font = ImageFont.load_default(size=round(_GEO_LETTER_SIZE * scale))
        return cls(image_size, letter_font, angle_font, extents)


def _angle_label(degrees: int) -> str:
    return f"{degrees}°"


def _sample_angles(rng: random.Random) -> dict[str, int]:
    values = range(_ANGLE_MIN, _ANGLE_MAX + 1, _ANGLE_STEP)
    while True:
        a, b = rng.choice(values), rng.choice(values)
        if _ANGLE_MIN <= 180 - a - b <= _ANGLE_MAX:
            return {"A": a, "B": b, "C": 180 - a - b}


def _layout_triangle(angles: dict[str, int], rng: random.Random, image_size: int) -> dict[str, Point]:
    """Vertices with the given angles, randomly rotated and mirrored, scaled to fill the image."""
    a, b, c = (math.radians(angles[v]) for v in VERTICES)
    ac = math.sin(b) / math.sin(c)  # law of sines with |AB| = 1
    points = [(0.0, 0.0), (1.0, 0.0), (ac * math.cos(a), -ac * math.sin(a))]
    theta = rng.uniform(0, 2 * math.pi)
    mirror = rng.choice((1, -1))
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    points = [(mirror * (x * cos_t - y * sin_t), x * sin_t + y * cos_t) for x, y in points]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    scale = image_size * (1 - 2 * _GEO_MARGIN) / max(max(xs) - min(xs), max(ys) - min(ys))
    mid_x, mid_y = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return {
        v: (round(image_size / 2 + (x - mid_x) * scale, 2), round(image_size / 2 + (y - mid_y) * scale, 2))
        for v, (x, y) in zip(VERTICES, points)
    }


def _incentre(vertices: dict[str, Point]) -> Point:
    a, b, c = (vertices[v] for v in VERTICES)
    # Each vertex is weighted by the length of the opposite side.
    wa, wb, wc = math.dist(b, c), math.dist(a, c), math.dist(a, b)
    total = wa + wb + wc
    return ((wa * a[0] + wb * b[0] + wc * c[0]) / total, (wa * a[1] + wb * b[1] + wc * c[1]) / total)


def _towards(start: Point, end: Point, distance: float) -> Point:
    length = math.dist(start, end)
    return (start[0] + (end[0] - start[0]) * distance / length,
            start[1] + (end[1] - start[1]) * distance / length)


def _inward_sides(vertices: dict[str, Point]) -> list[tuple[Point, Point]]:
    """(point on side, unit normal pointing into the triangle) for each side."""
    corners = [vertices[v] for v in VERTICES]
    inner = _incentre(vertices)
    sides = []
    for p, q in zip(corners, corners[1:] + corners[:1]):
        nx, ny = q[1] - p[1], p[0] - q[0]
        norm = math.hypot(nx, ny)
        # The incentre is always inside, so it tells which of the two normals points inwards.
        sign = 1 if nx * (inner[0] - p[0]) + ny * (inner[1] - p[1]) > 0 else -1
        sides.append((p, (sign * nx / norm, sign * ny / norm)))
    return sides


def _clearance(point: Point, sides: list[tuple[Point, Point]]) -> float:
    """Distance from ``point`` to the nearest side; negative outside the triangle."""
    return min(n[0] * (point[0] - p[0]) + n[1] * (point[1] - p[1]) for p, n in sides)


def _boxes_overlap(a: Box, b: Box, pad: float) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _label_box(centre: Point, extent: Box) -> Box:
    return (centre[0] + extent[0], centre[1] + extent[1], centre[0] + extent[2], centre[1] + extent[3])


def _fit_label(name: str, vertices: dict[str, Point], extent: Box, taken: list[Box],
               image_size: int) -> Point | None:
    """The label centre nearest its vertex along the bisector that clears the sides and ``taken``.

    The centre must stay nearer its own vertex than the others, or a reader could not tell which
    angle the number belongs to.
    """
    pad, step = _GEO_LABEL_PAD * image_size, _GEO_LABEL_STEP * image_size
    vertex, incentre = vertices[name], _incentre(vertices)
    others = [p for v, p in vertices.items() if v != name]
    sides = _inward_sides(vertices)
    for k in range(1, int(2 * math.dist(vertex, incentre) / step)):
        centre = _towards(vertex, incentre, k * step)
        if min(math.dist(centre, p) for p in others) <= math.dist(centre, vertex):
            return None
        left, top, right, bottom = box = _label_box(centre, extent)
        corners = [(left, top), (right, top), (left, bottom), (right, bottom)]
        if min(_clearance(c, sides) for c in corners) >= pad and not any(
            _boxes_overlap(box, other, pad) for other in taken
        ):
            return centre
    return None


def _place_angle_labels(angles: dict[str, int], vertices: dict[str, Point], asked: str,
                        style: _GeometryStyle) -> dict[str, Point] | None:
    """Label centres for the two given angles, or None if they cannot both fit legibly."""
    labels: dict[str, Point] = {}
    taken: list[Box] = []
    for v in VERTICES:
        if v == asked:
            continue
        extent = style.label_extents[angles[v]]
        centre = _fit_label(v, vertices, extent, taken, style.image_size)
        if centre is None:
            return None
        taken.append(_label_box(centre, extent))
        labels[v] = (round(centre[0], 2), round(centre[1], 2))
    return labels


def _sample_triangle(rng: random.Random, style: _GeometryStyle) -> _Triangle:
    # Resampling until the labels fit rules out slivers whose figure would be unreadable.
    while True:
        angles = _sample_angles(rng)
        vertices = _layout_triangle(angles, rng, style.image_size)
        asked = rng.choice(VERTICES)
        labels = _place_angle_labels(angles, vertices, asked, style)
        if labels is not None:
            return _Triangle(angles, vertices, labels, asked, rng.randrange(len(_GEO_QUESTIONS)))


def _render_geometry(tri: _Triangle, style: _GeometryStyle) -> Image.Image:
    s = _SUPERSAMPLE
    size = style.image_size
    canvas = Image.new("RGB", (size * s,) * 2, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    vertices = {v: (x * s, y * s) for v, (x, y) in tri.vertices.items()}
    outline = [vertices[v] for v in (*VERTICES, VERTICES[0])]
    draw.line(outline, fill="black", width=max(1, round(_GEO_LINE_WIDTH * size * s)), joint="curve")
    incentre = _incentre(vertices)
    for v, point in vertices.items():
        # Directly away from the incentre is outside the triangle and clear of both sides.
        away = (2 * point[0] - incentre[0], 2 * point[1] - incentre[1])
        position = _towards(point, away, _GEO_LETTER_OFFSET * size * s)
        draw.text(position, v, font=style.letter_font, fill="black", anchor="mm")
    for v, (x, y) in tri.labels.items():
        label = _angle_label(tri.angles[v])
        draw.text((x * s, y * s), label, font=style.angle_font, fill="black", anchor="mm")
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def _geometry_record(index: int, image: str, tri: _Triangle) -> Record:
    x = tri.asked
    p, q = (v for v in VERTICES if v != x)
    ap, aq, ax = tri.angles[p], tri.angles[q], tri.angles[x]
    answer = (
        f"The angles of a triangle sum to 180°. Angle {p} = {ap}° and angle {q} = {aq}°, "
        f"so angle {x} = 180° - {ap}° - {aq}° = {ax}°.\nAnswer: {ax}"
    )
    question = _GEO_QUESTIONS[tri.question].format(x=x)
    return _record(f"geometry-{index:06d}-geoqa-en", image, question, answer, answer_key=str(ax))


def _geometry_caption(index: int, image: str, tri: _Triangle) -> Record:
    marked = " and ".join(f"angle {v} marked {tri.angles[v]}°" for v in VERTICES if v != tri.asked)
    reply = f"Triangle ABC, with {marked}; angle {tri.asked} is not marked."
    return _record(f"geometry-{index:06d}-caption-en", image, _GEO_CAPTION_PROMPT, reply)


def synth_geometry(
    out: str | Path,
    n: int = 1000,
    seed: int = 0,
    image_size: int = 128,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict:
    """Write a triangle-angle reasoning dataset to ``out`` and return its summary.

    Files: ``images/NNNNNN.png``, ``scenes.jsonl``, ``{split}/geoqa_en.json``, ``{split}/caption_en.json``
    and ``dataset_info.json``. Each geoqa record carries the final number in an extra ``"answer"`` key.
    """
    root = _prepare_dir(out)
    split_of = _assign_splits(n, splits, random.Random(f"geometry-splits:{seed}"))
    style = _GeometryStyle.create(image_size)
    records = _empty_tables(["caption_en", "geoqa_en"])
    scenes = []
    for index in range(n):
        tri = _sample_triangle(random.Random(f"geometry:{seed}:{index}"), style)
        image = _write_image(root, index, _render_geometry(tri, style))
        split = split_of[index]
        scenes.append({
            "image": image, "split": split, "angles": tri.angles, "asked": tri.asked,
            "vertices": {v: list(p) for v, p in tri.vertices.items()},
            "angle_labels": {v: list(p) for v, p in tri.labels.items()},
        })
        records[split]["geoqa_en"].append(_geometry_record(index, image, tri))
        records[split]["caption_en"].append(_geometry_caption(index, image, tri))
    return _write_dataset(root, "geometry", seed, n, image_size, splits, scenes, records)


# --------------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------------


def _check_langs(langs: Sequence[str]) -> list[str]:
    if isinstance(langs, str):  # "en,pt" straight from a command line
        langs = langs.split(",")
    chosen = list(dict.fromkeys(lang.strip() for lang in langs if lang.strip()))
    unknown = [lang for lang in chosen if lang not in _LEXICONS]
    if not chosen or unknown:
        raise ValueError(f"langs must be a non-empty subset of {SUPPORTED_LANGS}, got {list(langs)}")
    return chosen


def _assign_splits(n: int, splits: Sequence[float], rng: random.Random) -> list[str]:
    """Split name per image index: shuffle the indices, then cut into consecutive chunks."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if len(splits) != len(SPLIT_NAMES) or min(splits) < 0 or not math.isclose(sum(splits), 1, abs_tol=1e-6):
        raise ValueError(f"splits must be three non-negative fractions summing to 1, got {splits}")
    bounds = [round(n * splits[0]), round(n * (splits[0] + splits[1]))]
    order = list(range(n))
    rng.shuffle(order)
    split_of = [""] * n
    for rank, index in enumerate(order):
        split_of[index] = SPLIT_NAMES[bisect_right(bounds, rank)]
    return split_of


def _empty_tables(files: Sequence[str]) -> dict[str, dict[str, list[Record]]]:
    # Every file exists in every split, even when empty, so loaders can rely on the layout.
    return {split: {name: [] for name in files} for split in SPLIT_NAMES}


def _record(record_id: str, image: str, prompt: str, reply: str, answer_key: str | None = None) -> Record:
    turns = [Turn("user", f"{DATA_IMAGE_TOKEN}\n{prompt}"), Turn("assistant", reply)]
    # the image relative to {split}/, where the JSON file lives
    record = llava_row(ParsedRecord(record_id, [image], turns, "synth"), lambda path: f"../{path}")
    if answer_key is not None:
        record["answer"] = answer_key
    return record


def _prepare_dir(out: str | Path) -> Path:
    root = Path(out)
    for sub in ("images", *SPLIT_NAMES):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def _write_image(root: Path, index: int, image: Image.Image) -> str:
    """Save as PNG and return the path relative to ``root``."""
    name = f"images/{index:06d}.png"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _atomic_write(root / name, buffer.getvalue())
    return name


def _write_dataset(
    root: Path, generator: str, seed: int, n: int, image_size: int, splits: Sequence[float],
    scenes: list[dict], records: dict[str, dict[str, list[Record]]], **extra: Any,
) -> dict:
    """Write scenes.jsonl, the split JSON files and dataset_info.json (last, as the completion mark)."""
    scene_lines = "".join(json.dumps(scene, ensure_ascii=False) + "\n" for scene in scenes)
    _atomic_write(root / "scenes.jsonl", scene_lines.encode("utf-8"))
    files = {"images": n, "scenes.jsonl": n}
    for split, tables in records.items():
        for name, recs in tables.items():
            _atomic_write(root / split / f"{name}.json", _json_bytes(recs))
            files[f"{split}/{name}.json"] = len(recs)
    summary = {
        "generator": f"verbovision.synth.{generator}",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "image_size": image_size,
        **extra,
        "split_ratios": list(splits),
        "splits": {split: sum(s["split"] == split for s in scenes) for split in SPLIT_NAMES},
        "files": files,
    }
    _atomic_write(root / "dataset_info.json", _json_bytes(summary))
    return summary
