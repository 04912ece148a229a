"""Synthetic geometry: triangles with labelled vertices and angles, captions and QA."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

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
        scale = image_size * SUPERSAMPLE
        angle_font = ImageFont.load_default(size=round(_GEO_ANGLE_SIZE * scale))
        extents = {
            degrees: tuple(x / SUPERSAMPLE for x in angle_font.getbbox(_angle_label(degrees), anchor="mm"))
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
    s = SUPERSAMPLE
    size = style.image_size
    canvas = Image.new("RGB", (size * s,) * 2, BACKGROUND)
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
    return llava_record(f"geometry-{index:06d}-geoqa-en", image, question, answer, answer_key=str(ax))


def _geometry_caption(index: int, image: str, tri: _Triangle) -> Record:
    marked = " and ".join(f"angle {v} marked {tri.angles[v]}°" for v in VERTICES if v != tri.asked)
    reply = f"Triangle ABC, with {marked}; angle {tri.asked} is not marked."
    return llava_record(f"geometry-{index:06d}-caption-en", image, _GEO_CAPTION_PROMPT, reply)


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
    settings = dataset_settings("geometry", seed, n, image_size, splits)
    root = prepare_dir(out, settings)
    split_of = assign_splits(n, splits, random.Random(f"geometry-splits:{seed}"))
    style = _GeometryStyle.create(image_size)
    records = empty_tables(["caption_en", "geoqa_en"])
    scenes = []
    for index in range(n):
        tri = _sample_triangle(random.Random(f"geometry:{seed}:{index}"), style)
        image = write_image(root, index, _render_geometry(tri, style))
        split = split_of[index]
        scenes.append({
            "image": image, "split": split, "angles": tri.angles, "asked": tri.asked,
            "vertices": {v: list(p) for v, p in tri.vertices.items()},
            "angle_labels": {v: list(p) for v, p in tri.labels.items()},
        })
        records[split]["geoqa_en"].append(_geometry_record(index, image, tri))
        records[split]["caption_en"].append(_geometry_caption(index, image, tri))
    return write_dataset(root, settings, scenes, records)
