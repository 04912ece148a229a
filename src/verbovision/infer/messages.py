"""Records from prompts and OpenAI-style messages (text parts, image parts, data URIs)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from ..data.records import DATA_IMAGE_TOKEN, Record, Turn
from ..data.tokenizer import join_parts
from ..errors import DataError


def prompt_record(image, prompt: str) -> Record:
    """A one-turn record asking `prompt` about `image` (see `record_image`; None for text only)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt {prompt!r}: give a string")
    text = prompt if image is None or DATA_IMAGE_TOKEN in prompt else f"{DATA_IMAGE_TOKEN}\n{prompt}"
    images = [] if image is None else [record_image(image)]
    return Record("prompt", images, [Turn("user", text), Turn("assistant", "")], "prompt")


def record_image(image):
    """A record's image from what a Python caller holds: a path (str or Path), a PIL image, the bytes of an image
    file, or a uint8 numpy array (H x W grey, H x W x 3 RGB, H x W x 4 RGBA, as `np.asarray(pil_image)` gives)."""
    from ..data.images import BytesImage

    if isinstance(image, (Image.Image, BytesImage)):  # BytesImage: a file read once, as `verbo chat` holds its images
        return image
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        raise DataError(f"{image}: remote images are not fetched; download the image and pass its path")
    if isinstance(image, (str, Path)):
        return Path(image)
    if isinstance(image, (bytes, bytearray)):
        return BytesImage("<image bytes>", bytes(image))
    if type(image).__module__ == "numpy" and getattr(image, "dtype", None) == "uint8":
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)):
            return Image.fromarray(image)
    shape = f" of dtype {image.dtype} and shape {tuple(image.shape)}" if hasattr(image, "shape") else ""
    raise TypeError(f"image {type(image).__name__}{shape}: give a path, a PIL image, the bytes of an image file or a "
                    "uint8 numpy array of H x W, H x W x 3 or H x W x 4 (e.g. (array * 255).astype('uint8'))")


def probe_record(prompt: str) -> Record:
    """A request for a small blank image: what a model is probed and warmed up with before real requests come."""
    return prompt_record(Image.new("RGB", (64, 64)), prompt)


def messages_record(messages: Sequence[dict], open_part: Callable[[dict], object] | None = None) -> Record:
    """A record from OpenAI-style chat messages, ready for the next assistant reply.

    Each message has a `role` (system, user, assistant; developer, OpenAI's current name of system, is system) and a
    `content`: a string, or a list of parts `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url":
    {"url": ...}}` or `{"type": "image", "image": PIL image or path}`. Parts are joined by newlines (where neither
    side has one already), each image where its part is, as the chat templates of the models VerboVision builds join
    them.
    `open_part` turns an image part into a record image (default: `image_of_part`).
    """
    open_part = open_part or image_of_part
    turns, images = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"messages[{i}]: a message must be an object with a role and a content")
        role, content = message.get("role"), message.get("content")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise DataError(f"messages[{i}]: role must be system (or developer), user or assistant, not {role!r}")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise DataError(f"messages[{i}]: content must be a string or a list of parts")
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text") or ""
                if not isinstance(text, str):
                    raise DataError(f"messages[{i}].content[{j}]: a text part's text must be a string")
                texts.append(text)
            elif kind in ("image", "image_url"):
                images.append(open_part(part))
                texts.append(DATA_IMAGE_TOKEN)
            else:
                raise DataError(f"messages[{i}].content[{j}]: part type must be text, image_url or image, not {kind!r}")
        turns.append(Turn(role, join_parts(texts)))
    return Record("chat", images, [*turns, Turn("assistant", "")], "messages")


def image_of_part(part: dict):
    """The image of a content part: a PIL image, a local path, or a data: URI. Remote URLs are never fetched here."""
    if part["type"] == "image":
        try:
            return record_image(part.get("image"))
        except TypeError as e:
            raise DataError(f"image part: {e}") from None
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str):
        raise DataError("image_url part without a url")
    if url.startswith("data:"):
        from ..data.images import BytesImage

        return BytesImage("data: URI", decode_data_uri(url))
    if url.startswith(("http://", "https://")):
        raise DataError(f"{url}: remote images are not fetched; download the image and pass its path")
    return Path(url.removeprefix("file://"))


_ASCII_WHITESPACE = str.maketrans("", "", " \t\n\r\f\v")
"""A `str.translate` table deleting ASCII whitespace (not Unicode's: those characters are no base64 a client sends)."""


def decode_data_uri(url: str) -> bytes:
    """The bytes of a base64 `data:` URI (data:image/png;base64,...). The payload may be wrapped across lines (as
    `base64` writes it); any other character outside base64 is refused."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise DataError("image data URI must look like data:image/png;base64,<data>")
    try:
        return base64.b64decode(payload.translate(_ASCII_WHITESPACE), validate=True)
    except (binascii.Error, ValueError):
        raise DataError("image data URI is not valid base64") from None
