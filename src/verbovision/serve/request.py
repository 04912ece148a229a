"""A chat completion request checked against the OpenAI API and the server's limits: its parameters, its images
(data: URIs, and http(s) URLs where allowed) and its prompt length."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import DataError
from .config import ServeConfig
from .errors import ApiError, invalid

if TYPE_CHECKING:  # imported lazily at run time: `verbo --help` should not load torch or the web stack
    from ..infer.options import DecodeOptions
    from ..infer.vlm import VLM


@dataclass
class ChatRequest:
    model: str
    """The model id the client asked for."""
    messages: list
    """OpenAI chat messages."""
    options: DecodeOptions
    """Decoding: the server's defaults overridden by the request."""
    n: int = 1
    """Choices to generate."""
    stream: bool = False
    """Answer as server-sent events."""
    include_usage: bool = False
    """Streaming: end with a chunk carrying `usage`."""


def _param(body: dict, name: str, kind: type, rule: str, ok=lambda value: True, default=None):
    """body[name] when present and valid, `default` when absent or null; otherwise a 400 naming the parameter."""
    value = body.get(name)
    if value is None:
        return default
    kinds = (int, float) if kind is float else kind
    if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kinds) or not ok(value):
        raise invalid(f"'{name}' must be {rule}", name)
    return value


MAX_BEAMS = 8
"""Widest beam search a request may ask for (`num_beams`): each beam costs a full row of the batch."""


def parse_chat_request(body: dict, config: ServeConfig) -> ChatRequest:
    """Check a chat completion request's parameters against the OpenAI API and this server's limits."""
    from ..infer.options import SEED_LIMIT, DecodeOptions

    for name in ("model", "messages"):
        if body.get(name) is None:
            raise invalid(f"'{name}' is required", name)
    model = _param(body, "model", str, "a string")
    messages = _param(body, "messages", list, "a non-empty list of messages", ok=bool)
    defaults = config.defaults or DecodeOptions()
    limit = config.max_completion_tokens
    max_name = next((name for name in ("max_completion_tokens", "max_tokens") if body.get(name) is not None), None)
    max_tokens = (_param(body, max_name, int, f"an integer in 1..{limit}", lambda v: 1 <= v <= limit) if max_name
                  else min(defaults.max_new_tokens, limit))
    options = replace(
        defaults,
        max_new_tokens=max_tokens,
        temperature=_param(body, "temperature", float, "a number in 0..2", lambda v: 0 <= v <= 2, defaults.temperature),
        top_p=_param(body, "top_p", float, "a number in (0, 1]", lambda v: 0 < v <= 1, defaults.top_p),
        top_k=_param(body, "top_k", int, "a positive integer", lambda v: v > 0, defaults.top_k),
        repetition_penalty=_param(body, "repetition_penalty", float, "a positive number", lambda v: v > 0,
                                  defaults.repetition_penalty),
        seed=_param(body, "seed", int, "a 64-bit integer", lambda v: -SEED_LIMIT <= v < SEED_LIMIT, defaults.seed),
        stop=_stop_strings(body.get("stop")),
        # Beyond OpenAI's parameters, with vLLM's names where it has them:
        beams=_param(body, "num_beams", int, f"an integer in 1..{MAX_BEAMS}", lambda v: 1 <= v <= MAX_BEAMS,
                     defaults.beams),
        length_penalty=_param(body, "length_penalty", float, "a number", default=defaults.length_penalty),
        early_stopping=_param(body, "early_stopping", bool, "true or false", default=defaults.early_stopping),
        no_repeat_ngram_size=_param(body, "no_repeat_ngram_size", int, "a positive integer", lambda v: v > 0,
                                    defaults.no_repeat_ngram_size),
        min_new_tokens=_param(body, "min_tokens", int, "an integer >= 0", lambda v: v >= 0, defaults.min_new_tokens),
    )
    options = _fit_min_tokens(body, options, max_name)
    if options.temperature == 0:  # OpenAI's way to ask for greedy decoding
        options = replace(options, temperature=None, top_p=None, top_k=None)
    stream_options = _param(body, "stream_options", dict, "an object", default={})
    return ChatRequest(
        model, messages, options,
        n=_param(body, "n", int, f"an integer in 1..{config.max_n}", lambda v: 1 <= v <= config.max_n, 1),
        stream=_param(body, "stream", bool, "true or false", default=False),
        include_usage=_param(stream_options, "include_usage", bool, "true or false", default=False),
    )


def _fit_min_tokens(body: dict, options: DecodeOptions, max_name: str | None) -> DecodeOptions:
    """`options` with a minimum length within max_tokens. A request's own min_tokens over its max_tokens (`max_name`:
    the parameter that set it, None for the server's default) is refused: generation would stop short of the reply
    asked for. The server's default minimum (--min-new-tokens) gives way to a smaller max_tokens instead, cut down
    to it: OpenAI's max_tokens is the cap a client sets, not knowing the server's defaults (a max_tokens=1 probe)."""
    shortest, longest = options.min_new_tokens, options.max_new_tokens
    if shortest is None or shortest <= longest:
        return options
    if body.get("min_tokens") is not None:
        said = f"'{max_name}' ({longest})" if max_name else f"max_tokens ({longest}, this server's default)"
        raise invalid(f"'min_tokens' ({shortest}) must not be more than {said}", "min_tokens")
    return replace(options, min_new_tokens=longest)


def _stop_strings(value) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise invalid("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    return tuple(stops)


def image_opener(config: ServeConfig):
    """The server's reader of image parts: data: URIs (and http(s) URLs when allowed), within the size limits."""

    def open_part(part: dict):
        from ..data.images import BytesImage, open_image

        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else None
        if part.get("type") != "image_url" or not isinstance(url, str):
            raise invalid("image parts must be {\"type\": \"image_url\", \"image_url\": {\"url\": ...}}", "messages")
        data = image_bytes(url, config)
        if len(data) > config.max_image_bytes:
            raise invalid(f"image of more than {config.max_image_bytes} bytes, the server's limit", "messages",
                          "image_too_large")
        _check_pixels(data, config.max_image_pixels)
        try:
            return open_image(BytesImage("image_url", data), max_pixels=config.max_image_pixels)
        except DataError as e:
            raise invalid(str(e), "messages", "invalid_image") from None

    return open_part


def _check_pixels(data: bytes, limit: int) -> None:
    """Refuse an image larger than `limit` pixels from its header alone, before anything is decoded."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # PIL refuses over twice its own limit, without saying the size
        raise _too_many_pixels(f"over {2 * Image.MAX_IMAGE_PIXELS}", limit) from None
    except (UnidentifiedImageError, OSError):
        return  # open_image names the problem
    if width * height > limit:
        raise _too_many_pixels(f"{width}x{height} = {width * height}", limit)


def _too_many_pixels(pixels: str, limit: int) -> ApiError:
    return invalid(f"image of {pixels} pixels, more than the server's limit of {limit}", "messages", "image_too_large")


def image_bytes(url: str, config: ServeConfig) -> bytes:
    from ..infer.messages import decode_data_uri
    from .remote import fetch_image  # urllib and ssl: not for `verbo --help`

    if url.startswith("data:"):
        try:
            return decode_data_uri(url)
        except DataError as e:
            raise invalid(str(e), "messages", "invalid_image") from None
    if not url.startswith(("http://", "https://")):
        raise invalid("image_url must be a data: URI or an http(s) URL", "messages", "invalid_image_url")
    if not config.allow_remote_images:
        raise invalid("remote image URLs are disabled on this server (start it with --allow-remote-images); "
                      "send the image as a data: URI", "messages", "remote_images_disabled")
    return fetch_image(url, config.max_image_bytes)


def prepare_record(vlm: VLM, request: ChatRequest, config: ServeConfig):
    """The request's messages as a record, images decoded and prompt length checked (runs off the event loop)."""
    from ..infer.messages import messages_record

    try:
        record = messages_record(request.messages, image_opener(config))
        tokens = vlm.prompt_tokens(record)
    except DataError as e:
        raise invalid(str(e), "messages") from None
    if tokens > config.max_prompt_tokens:
        raise invalid(f"the prompt is {tokens} tokens (images included), more than this server's limit of "
                      f"{config.max_prompt_tokens}", "messages", "context_length_exceeded")
    try:
        vlm.check_room(record, tokens, request.options)
    except DataError as e:
        raise invalid(str(e), "messages", "context_length_exceeded") from None
    return record
