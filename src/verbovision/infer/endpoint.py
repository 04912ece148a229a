"""An OpenAI-compatible server (`verbo serve`, vLLM, a hosted API) as the model of `verbo eval`.

`Endpoint.generate_details` answers records as `VLM.generate_details` does: each record becomes one chat completion
request (its turns as messages, each image as a base64 data: URI where its `<image>` stands, the decoding options
as the request's parameters), `concurrency` requests in flight on threads. Requests failing with 429, a 5xx or a
broken connection are retried with exponential backoff (Retry-After honoured), a bounded number of times; then, or
at once for another status, a one-line EndpointError names the URL and the status.

Replies are cached, append-only, in a JSONL file keyed by a hash of the request body (model, messages with the
image bytes, decoding parameters), each line flushed as its reply arrives: a run killed midway loses only the
requests in flight, and a rerun sends only what the cache lacks.

HTTP is the standard library's (urllib): one POST per reply needs no client package, so no extra to install.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..data.images import read_image_bytes
from ..data.records import DATA_IMAGE_TOKEN, IMAGE_TOKENS, Record, RecordError
from ..errors import VerboError
from .options import BATCH_SIZE, DecodeOptions, Generation

CONCURRENCY = 8
RETRIES = 4
"""Tries after the first, waiting BACKOFF_S, then twice as long each time."""
BACKOFF_S = 0.5
MAX_WAIT_S = 30.0
"""Longest wait between tries, whatever Retry-After asks."""
TIMEOUT_S = 600.0
RETRIED_STATUSES = {429, 500, 502, 503, 504}
CACHE_FILE = "endpoint_cache.jsonl"

_EXTRA_PARAMETERS = {"top_k": "top_k", "repetition_penalty": "repetition_penalty", "beams": "num_beams",
                     "length_penalty": "length_penalty", "no_repeat_ngram_size": "no_repeat_ngram_size",
                     "min_new_tokens": "min_tokens"}
"""DecodeOptions fields beyond OpenAI's parameters, sent under vLLM's names (which `verbo serve` takes) when set."""


class EndpointError(VerboError):
    """The endpoint could not answer: unreachable, refused the request, or kept failing."""


class Endpoint:
    """A served model that generates like `VLM.generate_details`; `loss_unavailable` says why it gives no loss."""

    loss_unavailable = "an OpenAI-compatible endpoint returns replies, not the model's probabilities of the references"

    def __init__(self, url: str, model: str | None = None, concurrency: int = CONCURRENCY,
                 cache: str | Path | None = None, api_key: str | None = None, retries: int = RETRIES,
                 backoff_s: float = BACKOFF_S):
        """`url` is the API root (http://host:port/v1); `model` the served model's name (default: the only one the
        server lists at /models); `api_key` defaults to $OPENAI_API_KEY; `cache` the JSONL response cache."""
        if not url.startswith(("http://", "https://")):
            raise EndpointError(f"--endpoint {url}: not an http(s) URL; give the API root, e.g. "
                                "http://127.0.0.1:8000/v1")
        self.url = url.rstrip("/")
        self.concurrency = max(1, concurrency)
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.retries, self.backoff_s = retries, backoff_s
        self.cache = ResponseCache(Path(cache)) if cache else None
        self.model = model or self._only_model()

    def __str__(self) -> str:
        return f"{self.model} at {self.url}"

    def generate_details(self, records: Sequence[Record], options: DecodeOptions | None = None,
                         batch_size: int = BATCH_SIZE) -> list[Generation]:
        """One reply per record, from the cache or the server (`batch_size` is the server's business)."""
        bodies = [self.request_body(record, options or DecodeOptions()) for record in records]
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="verbo-endpoint") as pool:
            futures = [pool.submit(self._reply, body) for body in bodies]
            try:
                return [future.result() for future in futures]
            except BaseException:
                pool.shutdown(cancel_futures=True)  # the first error ends the run; what was answered stays cached
                raise

    def request_body(self, record: Record, options: DecodeOptions) -> dict:
        return {"model": self.model, "messages": messages(record), **parameters(options)}

    def _reply(self, body: dict) -> Generation:
        key = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        cached = self.cache.get(key) if self.cache else None
        if cached is not None:
            return cached
        generation = generation_of(self._call("POST", "/chat/completions", body), self.url)
        if self.cache:
            self.cache.add(key, generation)
        return generation

    def _only_model(self) -> str:
        listed = self._call("GET", "/models").get("data")
        names = [m.get("id") for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
        if len(names) != 1 or not isinstance(names[0], str):
            raise EndpointError(f"{self.url}/models lists {len(names)} models {names[:10]}; name the one to evaluate "
                                "with --endpoint-model")
        return names[0]

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON answer of one request, retried on 429, 5xx and connection errors."""
        url = self.url + path
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "verbovision"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method),
                                            timeout=TIMEOUT_S) as response:
                    return _json_answer(response.read(), url)
            except urllib.error.HTTPError as e:
                problem, retry_after = f"HTTP {e.code}: {_error_message(e)}", e.headers.get("Retry-After")
                if e.code == 404 and not self.url.endswith("/v1"):
                    problem += f" (an OpenAI-compatible API root usually ends in /v1: {self.url}/v1?)"
                if e.code not in RETRIED_STATUSES:
                    raise EndpointError(f"{url}: {problem}") from None
            except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
                problem, retry_after = f"cannot connect ({getattr(e, 'reason', e)})", None
            if attempt < self.retries:
                time.sleep(_wait_s(attempt, retry_after, self.backoff_s))
        raise EndpointError(f"{url}: {problem} ({self.retries + 1} tries)")


def _wait_s(attempt: int, retry_after: str | None, backoff_s: float) -> float:
    wait = backoff_s * 2 ** attempt
    if retry_after and retry_after.replace(".", "", 1).isdigit():
        wait = float(retry_after)
    return min(wait, MAX_WAIT_S)


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's error message (OpenAI's {"error": {"message"}}), or the start of its body."""
    text = error.read().decode("utf-8", "replace")
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text
    return " ".join(str(message).split())[:300] or error.reason


def _json_answer(data: bytes, url: str) -> dict:
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise EndpointError(f"{url}: the answer is not a JSON object: {data[:100]!r}")
    return answer


def generation_of(answer: dict, url: str) -> Generation:
    """The first choice of a chat completion, with its token counts (0 where the server gives no usage)."""
    try:
        choice = answer["choices"][0]
        text, finish_reason = choice["message"]["content"], choice["finish_reason"]
    except (KeyError, IndexError, TypeError):
        raise EndpointError(f"{url}: not a chat completion: {json.dumps(answer)[:200]}") from None
    usage = answer.get("usage") or {}
    return Generation(text or "", usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), finish_reason)


def messages(record: Record) -> list[dict]:
    """The record's turns before the reply to generate, as OpenAI chat messages: a turn with images as content parts,
    its text split where each `<image>` stands, so `verbo serve` joins it back to the same text where a line break
    separates each image from its text, as in the records our readers make ("<image>\nDescribe..."); text glued to an
    image reaches it with a line break between, as content parts have no way to say otherwise."""
    marks = sum(turn.text.count(DATA_IMAGE_TOKEN) for turn in record.prompt_turns)
    if marks != len(record.images):  # as the local encoder refuses it
        raise RecordError(record.source, record.id, IMAGE_TOKENS,
                          f"{marks} {DATA_IMAGE_TOKEN} in the prompt for {len(record.images)} images")
    images = iter(record.images)
    out = []
    for turn in record.prompt_turns:
        pieces = turn.text.split(DATA_IMAGE_TOKEN)
        if len(pieces) == 1:
            out.append({"role": turn.role, "content": turn.text})
            continue
        parts = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
        for piece in pieces[1:]:
            parts.append({"type": "image_url", "image_url": {"url": data_uri(next(images))}})
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": turn.role, "content": parts})
    return out


def data_uri(source) -> str:
    """An image as a base64 data: URI of its file's own bytes (in-memory images as PNG), so the server decodes the
    very pixels a local evaluation would."""
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = read_image_bytes(source)
    with Image.open(io.BytesIO(data)) as image:
        mime = Image.MIME.get(image.format or "", "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def parameters(options: DecodeOptions) -> dict:
    """The request parameters of decoding options: greedy as temperature 0, max_tokens, and the rest when set."""
    body: dict = {"max_tokens": options.max_new_tokens,
                  "temperature": (1.0 if options.temperature is None else options.temperature)
                  if options.sampling else 0}
    if options.sampling:
        body.update({k: getattr(options, k) for k in ("top_p", "seed") if getattr(options, k) is not None})
    if options.stop:
        body["stop"] = list(options.stop)
    for field, name in _EXTRA_PARAMETERS.items():
        value = getattr(options, field)
        if value is not None and value != getattr(DecodeOptions, field):
            body[name] = value
    if options.early_stopping:
        body["early_stopping"] = True
    return body


class ResponseCache:
    """Replies by request hash in a JSONL file, appended and flushed one line per reply (thread-safe)."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.replies: dict[str, Generation] = {}
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        for line in text.splitlines():
            try:
                row = json.loads(line)
                self.replies[row["key"]] = Generation(row["text"], row["prompt_tokens"], row["completion_tokens"],
                                                      row["finish_reason"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill mid-write: its request is sent again
        if text and not text.endswith("\n"):
            self._append("\n")  # the cut line stays alone, not glued to the next reply

    def get(self, key: str) -> Generation | None:
        return self.replies.get(key)

    def add(self, key: str, generation: Generation) -> None:
        row = {"key": key, "text": generation.text, "prompt_tokens": generation.prompt_tokens,
               "completion_tokens": generation.completion_tokens, "finish_reason": generation.finish_reason}
        with self.lock:
            self.replies[key] = generation
            self._append(json.dumps(row, ensure_ascii=False) + "\n")

    def _append(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:  # closed, hence flushed, at once
            f.write(text)
