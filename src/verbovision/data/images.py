"""Multimodal records: read them, load their images, encode them for a VLM, and batch them.

One record model for every format: a record has an id, zero or more images, and conversation turns whose text
marks each image's position with `<image>`. Encoding renders the turns with the model's chat template (or a plain
template for caption pretraining), expands every `<image>` into the exact number of placeholder tokens the model's
processor uses, and masks everything but the assistant replies in the labels."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import DataError


def load_image(path, min_side: int | None = None) -> Image.Image:
    """Open an image (file, in-memory, shard member or bytes) as RGB; a clear error names the file when it cannot.
    `min_side`: JPEGs may be decoded at a reduced scale that keeps both sides at least this long (see images.py)."""

    return open_image(path, min_side=min_side)


def load_images(items: Sequence, paths_of: Callable[[object], Sequence], read: Callable = load_image
                ) -> tuple[list, list[list], list[tuple[object, DataError]]]:
    """The items whose images (`paths_of(item)`) all `read`, each one's images in order, and (item, error) for the
    others: an unreadable image skips its item (its record, question...), not the batch it is in."""
    kept, images, failed = [], [], []
    for item in items:
        try:
            images.append([read(p) for p in paths_of(item)])  # all or none of its images
            kept.append(item)
        except DataError as e:
            failed.append((item, e))
    return kept, images, failed


MAX_PIXELS = 64_000_000
"""Images with more pixels are refused (a decompression bomb, or a scan no VLM input needs): 64 MP = 8000 x 8000."""

_ORIENTATION = 0x0112
"""The EXIF tag saying how a photo must be rotated or flipped to display upright."""
_BACKGROUND = (255, 255, 255)
"""Transparent pixels are shown on white, as a browser or viewer would."""


@dataclass(frozen=True)
class FileSlice:
    """An image stored uncompressed inside another file, read on demand: a member of a tar shard, a cell of an Arrow
    file (a Hugging Face dataset saved to disk). The file is never unpacked or loaded whole."""

    shard: Path
    """The file holding the image (.tar shard, .arrow file)."""
    member: str
    """The image's name inside it (for messages and file names)."""
    offset: int
    """Byte offset of the image's data in the file."""
    size: int
    """Size of the image's data in bytes."""

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def __str__(self) -> str:
        return f"{self.shard}:{self.member}"


@dataclass(frozen=True)
class BytesImage:
    """An encoded image (PNG, JPEG...) held in memory, from a compressed shard, a dataset column or a file read once
    (`verbo chat`'s images)."""

    name: str
    """Where it came from, for messages and file names (e.g. `data.parquet:row 3`)."""
    data: bytes
    """The encoded image file."""

    def read(self) -> bytes:
        return self.data

    def __str__(self) -> str:
        return self.name


ImageSource = Union[Path, Image.Image, FileSlice, BytesImage]
"""Anything a record's `images` may hold."""


def image_name(source: ImageSource) -> str:
    """A short, stable name of an image for messages and output file names."""
    if isinstance(source, Image.Image):
        return f"<in-memory {source.mode} {source.width}x{source.height}>"
    return str(source)


def image_key(source: ImageSource) -> str:
    """An image's identity: the same file (or shard member, or bytes) always gives the same key, others never do."""
    if isinstance(source, Path):
        return str(source.resolve())
    if isinstance(source, FileSlice):
        return f"{source.shard.resolve()}@{source.offset}"
    data = source.tobytes() if isinstance(source, Image.Image) else source.read()
    return "sha1:" + hashlib.sha1(data).hexdigest()


def read_image_bytes(source: ImageSource) -> bytes:
    """The encoded bytes of an image stored in a file, a shard or memory (not for in-memory PIL images)."""
    if isinstance(source, Path):
        return source.read_bytes()
    return source.read()


def open_image(source: ImageSource, max_pixels: int = MAX_PIXELS, min_side: int | None = None) -> Image.Image:
    """Open any image source as 8-bit RGB, upright and opaque; a `DataError` names the file when it cannot be used.

    With `min_side`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
    that long: several times faster when the model resizes it down anyway, at a slightly different resampling.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    with _opened(source, max_pixels) as image:
        if min_side:
            image.draft("RGB", (min_side, min_side))  # a no-op for formats other than JPEG
        return to_rgb(_decode(image))


def image_size(source: ImageSource, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of the image `open_image` gives, from the file's header alone (no pixel is decoded)."""
    if isinstance(source, Image.Image):
        return source.size
    with _opened(source, max_pixels) as image:
        width, height = image.size
        quarter_turn = image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)  # EXIF rotations by 90 or 270 degrees
        return (height, width) if quarter_turn else (width, height)


@contextmanager
def _opened(source: ImageSource, max_pixels: int) -> Iterator[Image.Image]:
    """The lazily opened image of a file, shard member or bytes; failures become a `DataError` naming the image."""
    name = image_name(source)
    try:
        raw = source if isinstance(source, Path) else io.BytesIO(source.read())
        with Image.open(raw) as image:  # PIL itself refuses images over twice its MAX_IMAGE_PIXELS
            _refuse_huge(image, name, max_pixels)
            yield image
    except FileNotFoundError:
        raise DataError(f"{name}: image not found") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{name}: unreadable image (decompression bomb refused: {e})") from None
    except UnidentifiedImageError:  # PIL's message names a BytesIO object, not the image
        raise DataError(f"{name}: unreadable image (not in an image format PIL knows)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: unreadable image ({e})") from None


def processor_side(image_processor) -> int | None:
    """The longest side an image processor resizes to (what `min_side` may safely decode down to)."""
    sizes = [getattr(image_processor, "size", None) or {}, getattr(image_processor, "crop_size", None) or {}]
    sides = [size.get(k) for size in sizes for k in ("height", "width", "shortest_edge")]
    return max((side for side in sides if side), default=None)


def _refuse_huge(image: Image.Image, name: str, max_pixels: int) -> None:
    # The header alone gives the size, so a bomb is refused before a single pixel is decoded.
    if image.width * image.height > max_pixels:
        raise DataError(f"{name}: unreadable image (decompression bomb refused: {image.width}x{image.height} = "
                        f"{image.width * image.height} pixels, limit {max_pixels})")


def _decode(image: Image.Image) -> Image.Image:
    """Fully decode the first frame, refusing truncated files, with EXIF orientation applied."""
    truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
    # Another library may have turned this on globally; a truncated JPEG would then load half-grey without a word.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.seek(0)  # animated GIF/WebP/PNG: the first frame
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    if image.getexif().get(_ORIENTATION, 1) == 1:
        return image  # upright already; exif_transpose would copy every pixel for nothing
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited on white, palette/grey/CMYK converted, 16-bit and float scaled down."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _high_depth_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # P, L, 1, CMYK, YCbCr, LAB, HSV


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's own I;16 -> RGB conversion clips at 255, turning almost every 16-bit scan white.
    values = np.asarray(image, dtype=np.float64)  # [H, W]
    if image.mode == "F":
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    grey = np.clip(values * scale, 0, 255).round().astype(np.uint8)  # [H, W]
    return Image.fromarray(grey).convert("RGB")
