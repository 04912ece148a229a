"""Looking at a data set's images: whether each can be used, and which are the same picture."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import DataError
from .images import ImageSource, image_key, image_name, open_image
from .records import TOO_SMALL, skip_reason


@dataclass
class ImageVerdict:
    """What one image file is worth: a problem, or its content hashes for duplicate detection."""

    problem: tuple[str, str] | None = None
    """(kind, message) when the image cannot be used."""
    digest: str = ""
    """Hash of the decoded pixels: equal for the same picture saved twice, even in another format."""
    dhash: int = 0
    """64-bit difference hash: a few differing bits for a resized, recompressed or slightly edited copy."""
    thumbnail: np.ndarray | None = None
    """16 x 16 RGB thumbnail that confirms a near-duplicate (a hash alone confuses near-blank images)."""


class PerImage(ABC):
    """Computes something once per distinct image (same file, member or bytes), however many records use it."""

    def __init__(self):
        self.done: dict = {}

    def __call__(self, source: ImageSource):
        key = image_key(source)
        if key not in self.done:
            self.done[key] = self.compute(source)
        return self.done[key]

    @abstractmethod
    def compute(self, source: ImageSource):
        """The per-image result that __call__ memoizes."""


class ImageInspector(PerImage):
    """Decodes each distinct image once and says what it is worth."""

    def __init__(self, min_size: int):
        super().__init__()
        self.min_size = min_size

    def compute(self, source: ImageSource) -> ImageVerdict:
        try:
            image = open_image(source)
        except DataError as e:
            return ImageVerdict((skip_reason(e), str(e)))
        if min(image.size) < self.min_size:
            return ImageVerdict((TOO_SMALL, f"{image_name(source)}: {image.width}x{image.height} is under "
                                            f"{self.min_size} px on a side"))
        return ImageVerdict(None, pixel_digest(image), dhash(image), thumbnail(image))


def pixel_digest(image: Image.Image) -> str:
    return hashlib.sha1(f"{image.size}".encode() + image.tobytes()).hexdigest()


def dhash(image: Image.Image, size: int = 8) -> int:
    """Difference hash: is each pixel of a (size+1) x size greyscale thumbnail brighter than its right neighbour."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()  # [size * size]
    return int("".join("1" if b else "0" for b in bits), 2)


def thumbnail(image: Image.Image, size: int = 16) -> np.ndarray:
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.int16)  # [size, size, 3]


def same_picture(a: np.ndarray, b: np.ndarray, tolerance: int = 40, share: float = 0.02) -> bool:
    """Thumbnails of one picture: at most `share` of their pixels differ by more than `tolerance` levels (of 255)
    in some channel. A resized or recompressed copy passes; another object on the same background does not."""
    differing = (np.abs(a - b).max(axis=-1) > tolerance).mean()
    return bool(differing <= share)


class NearDuplicates:
    """Finds a stored hash within `distance` bits of a new one without comparing against all of them.

    Pigeonhole: split the 64 bits into distance + 1 bands; two hashes that differ in at most `distance` bits agree
    exactly on at least one band, so only hashes sharing a band value are compared.
    """

    def __init__(self, distance: int, bits: int = 64):
        self.distance = distance
        bands = distance + 1
        self.bands = [(i * bits // bands, (i + 1) * bits // bands) for i in range(bands)]
        self.index: list[dict[int, list[tuple[int, str]]]] = [{} for _ in self.bands]

    def _band(self, value: int, band: tuple[int, int]) -> int:
        start, end = band
        return (value >> start) & ((1 << (end - start)) - 1)

    def candidates(self, value: int) -> Iterator[str]:
        """The owners of stored hashes within `distance` bits of `value`."""
        for table, band in zip(self.index, self.bands):
            for other, owner in table.get(self._band(value, band), []):
                if bin(value ^ other).count("1") <= self.distance:
                    yield owner

    def add(self, value: int, owner: str) -> None:
        for table, band in zip(self.index, self.bands):
            table.setdefault(self._band(value, band), []).append((value, owner))


MIN_IMAGE_SIDE = 32
"""Images shorter than this many pixels on a side are `image too small` to `check` and removed by `clean`: an icon or
thumbnail, not a picture an encoder learns from."""
