"""`verbo serve` and `verbo web`: an OpenAI-compatible chat completions server with dynamic batching.

Endpoints: `POST /v1/chat/completions` (messages with text and image_url parts; `stream: true` as server-sent events),
`GET /v1/models`, `GET /health`, and for `verbo web` the demo page at `/`.

Dynamic batching: a request handler validates its request, decodes its images, checks its limits and queues it as a
`Job`; one worker thread owns the model and runs the oldest waiting job together with every compatible job waiting
or arriving within `max_wait_ms`, up to `batch_size` replies, as one `VLM.generate_details` call. While a batch runs,
new requests queue up and form the next one, so under load the batches fill by themselves.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import queue
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import DataError

if TYPE_CHECKING:  # imported lazily at run time: `verbo --help` should not load torch or the web stack
    from .infer import VLM, DecodeOptions

MB = 1 << 20


@dataclass
class ServeConfig:
    model: str
    """MODEL as given: a model directory, run, adapter or hub id."""
    model_name: str = ""
    """The model id clients send and /v1/models lists (default: `model`); GENERIC_NAME is accepted too."""
    host: str = "127.0.0.1"
    """Address to bind; the default keeps the server private to this machine."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """When set, /v1 requests need the header `Authorization: Bearer <api_key>`."""
    allow_remote_images: bool = False
    """Fetch http(s) image URLs; otherwise only data: URIs are accepted."""
    batch_size: int = 16
    """Most replies generated together (1 = one request at a time)."""
    max_wait_ms: float = 5.0
    """How long a batch waits for more requests to join it."""
    max_body_bytes: int = 20 * MB
    """Largest request body."""
    max_image_bytes: int = 10 * MB
    """Largest encoded image."""
    max_image_pixels: int = 4096 * 4096
    """Largest image in pixels (checked from the header, before decoding)."""
    max_prompt_tokens: int = 4096
    """Longest prompt in tokens, image tokens included."""
    max_completion_tokens: int = 1024
    """Largest max_tokens a request may ask for."""
    max_n: int = 8
    """Most choices (n) per request."""
    defaults: DecodeOptions | None = None
    """Decoding options for what a request leaves out (None: `DecodeOptions()`, greedy)."""
    web: bool = False
    """Also serve the browser demo at /."""
    device: str | None = None
    """cuda, mps or cpu (default: the best available)."""
    quantize: str = "none"
    """none, int8-dynamic (CPU), 8bit or 4bit (bitsandbytes, CUDA)."""
    compiled: bool = False
    """Static KV cache + torch.compile for generation (each new batch shape compiles first)."""
    template: str | None = None
    """How prompts are laid out (chat, plain, caption); default: the model's own (see `infer.VLM`)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice, one per core)."""
    log_level: str = "info"
    """uvicorn's log level."""

    @property
    def served_name(self) -> str:
        return self.model_name or self.model

    def serves(self, model: str) -> bool:
        """Whether a request for `model` is for this server: its served name, or GENERIC_NAME."""
        return model in (self.served_name, GENERIC_NAME)


GENERIC_NAME = "verbo"
"""The model id every server also answers to, so that a client written for one `verbo serve` works with any."""


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


# ------------------------------------------------------------------------------------------------ requests


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
    from .infer import DecodeOptions

    for name in ("model", "messages"):
        if body.get(name) is None:
            raise invalid(f"'{name}' is required", name)
    model = _param(body, "model", str, "a string")
    messages = _param(body, "messages", list, "a non-empty list of messages", ok=bool)
    defaults = config.defaults or DecodeOptions()
    limit = config.max_completion_tokens
    max_tokens = _param(body, "max_completion_tokens", int, f"an integer in 1..{limit}", lambda v: 1 <= v <= limit)
    if max_tokens is None:
        max_tokens = _param(body, "max_tokens", int, f"an integer in 1..{limit}", lambda v: 1 <= v <= limit,
                            min(defaults.max_new_tokens, limit))
    options = replace(
        defaults,
        max_new_tokens=max_tokens,
        temperature=_param(body, "temperature", float, "a number in 0..2", lambda v: 0 <= v <= 2, defaults.temperature),
        top_p=_param(body, "top_p", float, "a number in (0, 1]", lambda v: 0 < v <= 1, defaults.top_p),
        top_k=_param(body, "top_k", int, "a positive integer", lambda v: v > 0, defaults.top_k),
        repetition_penalty=_param(body, "repetition_penalty", float, "a positive number", lambda v: v > 0,
                                  defaults.repetition_penalty),
        seed=_param(body, "seed", int, "an integer", default=defaults.seed),
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
    if options.temperature == 0:  # OpenAI's way to ask for greedy decoding
        options = replace(options, temperature=None, top_p=None, top_k=None)
    stream_options = _param(body, "stream_options", dict, "an object", default={})
    return ChatRequest(
        model, messages, options,
        n=_param(body, "n", int, f"an integer in 1..{config.max_n}", lambda v: 1 <= v <= config.max_n, 1),
        stream=_param(body, "stream", bool, "true or false", default=False),
        include_usage=_param(stream_options, "include_usage", bool, "true or false", default=False),
    )


def _stop_strings(value) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise invalid("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    return tuple(stops)


def image_opener(config: ServeConfig):
    """The server's reader of image parts: data: URIs (and http(s) URLs when allowed), within the size limits."""

    def open_part(part: dict):
        from .images import BytesImage, open_image

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
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        return  # open_image names the problem
    if width * height > limit:
        raise invalid(f"image of {width}x{height} = {width * height} pixels, more than the server's limit of {limit}",
                      "messages", "image_too_large")


def image_bytes(url: str, config: ServeConfig) -> bytes:
    from .infer import decode_data_uri

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
    return _fetch(url, config.max_image_bytes)


def _fetch(url: str, limit: int) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "verbovision"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read(limit + 1)  # one byte over the limit is enough to refuse it
    except (OSError, ValueError) as e:
        raise invalid(f"could not fetch image {url}: {e}", "messages", "image_fetch_failed") from None


def prepare_record(vlm: VLM, request: ChatRequest, config: ServeConfig):
    """The request's messages as a record, images decoded and prompt length checked (runs off the event loop)."""
    from .infer import messages_record

    try:
        record = messages_record(request.messages, image_opener(config))
        tokens = vlm.prompt_tokens(record)
    except DataError as e:
        raise invalid(str(e), "messages") from None
    if tokens > config.max_prompt_tokens:
        raise invalid(f"the prompt is {tokens} tokens (images included), more than this server's limit of "
                      f"{config.max_prompt_tokens}", "messages", "context_length_exceeded")
    return record


# ------------------------------------------------------------------------------------------------ batching


@dataclass
class Job:
    """A request waiting for or in a batch: n copies of its record, and the way back to its handler."""

    records: list
    """One record per choice."""
    options: list
    """One DecodeOptions per record."""
    loop: asyncio.AbstractEventLoop
    """The event loop of the handler waiting for the result."""
    events: asyncio.Queue
    """("text", choice, piece), then ("done", generations) or ("error", exception)."""
    streaming: bool
    """Whether the handler wants the text as it grows."""
    key: tuple = ()
    """Jobs with equal keys can share a batch (set by the batcher)."""

    def send(self, *event) -> None:
        """Hand an event to the job's handler (called from the worker thread)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Batcher:
    """Runs queued jobs in batches on one worker thread, the only thread that generates with the model."""

    def __init__(self, vlm: VLM, max_rows: int, max_wait: float):
        self.vlm = vlm
        self.max_rows = max(1, max_rows)
        self.max_wait = max_wait
        self.queue: queue.Queue = queue.Queue()
        self.waiting: deque[Job] = deque()
        self.closing = False
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}
        self._unique = itertools.count()
        self.thread = threading.Thread(target=self._run, name="verbo-batcher")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Finish every queued job, then stop the worker."""
        self.closing = True
        self.queue.put(None)
        self.thread.join()

    def submit(self, job: Job) -> None:
        if self.closing:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
        options = job.options[0]
        # A seeded sampler runs alone: its output must not depend on which requests shared its batch.
        alone = (next(self._unique),) if options.sampling and options.seed is not None else ()
        job.key = options.batch_key() + alone
        self.queue.put(job)

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            self._execute(batch)

    def _collect(self) -> list[Job] | None:
        """The oldest job and the compatible jobs waiting or arriving within max_wait; None once closed and empty."""
        while not self.waiting:
            job = self.queue.get()
            if job is None:
                return None
            self.waiting.append(job)
        batch = [self.waiting.popleft()]
        rows = len(batch[0].records)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_rows:
            job = next((j for j in self.waiting if j.key == batch[0].key and rows + len(j.records) <= self.max_rows),
                       None)
            if job is not None:
                self.waiting.remove(job)
                batch.append(job)
                rows += len(job.records)
                continue
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:  # closing: leave the signal for when the waiting jobs are done
                self.queue.put(None)
                break
            self.waiting.append(job)
        return batch

    def _execute(self, batch: list[Job]) -> None:
        rows = [(job, choice) for job in batch for choice in range(len(job.records))]

        def on_text(row: int, piece: str) -> None:
            job, choice = rows[row]
            if job.streaming:
                job.send("text", choice, piece)

        try:
            generations = self.vlm.generate_details(
                [r for job in batch for r in job.records], [o for job in batch for o in job.options],
                batch_size=self.max_rows, on_text=on_text if any(job.streaming for job in batch) else None)
        except Exception as error:  # noqa: BLE001 - reported to every request of the batch
            for job in batch:
                job.send("error", error)
            return
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(rows))
        start = 0
        for job in batch:
            job.send("done", generations[start : start + len(job.records)])
            start += len(job.records)


# ------------------------------------------------------------------------------------------------ the app


class Api:
    """The HTTP handlers; one instance per app."""

    def __init__(self, vlm: VLM, config: ServeConfig):
        self.vlm = vlm
        self.config = config
        self.batcher = Batcher(vlm, config.batch_size, config.max_wait_ms / 1000)
        self.created = int(time.time())

    async def health(self, request):
        from starlette.responses import JSONResponse

        # No model name here: /health answers without the API key.
        waiting = len(self.batcher.waiting) + self.batcher.queue.qsize()
        return JSONResponse({"status": "ok", "waiting": waiting, **self.batcher.stats})

    async def models(self, request):
        from starlette.responses import JSONResponse

        self._authorize(request)
        return JSONResponse({"object": "list", "data": [
            {"id": self.config.served_name, "object": "model", "created": self.created, "owned_by": "verbovision"}]})

    async def chat_completions(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse, StreamingResponse

        self._authorize(request)
        chat = parse_chat_request(await self._json_body(request), self.config)
        if not self.config.serves(chat.model):
            raise ApiError(404, f"model {chat.model!r} is not served here; this server serves "
                           f"{self.config.served_name!r} (or ask for {GENERIC_NAME!r})", "model", "model_not_found")
        record = await run_in_threadpool(prepare_record, self.vlm, chat, self.config)
        job = Job([record] * chat.n, [chat.options] * chat.n, asyncio.get_running_loop(), asyncio.Queue(), chat.stream)
        self.batcher.submit(job)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.config.served_name}
        if chat.stream:
            return StreamingResponse(self._events(job, head, chat.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        event = await job.events.get()  # ("done", ...) or ("error", ...): this job gets no text events
        if event[0] == "error":
            raise event[1]
        return JSONResponse(completion(head, event[1]))

    async def _events(self, job: Job, head: dict, include_usage: bool):
        """The server-sent events of a streamed completion, in OpenAI's chunk format."""
        n = len(job.records)
        yield sse(chunk(head, [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                               for i in range(n)]))
        while (event := await job.events.get())[0] == "text":
            _, choice, piece = event
            yield sse(chunk(head, [{"index": choice, "delta": {"content": piece}, "finish_reason": None}]))
        if event[0] == "error":
            yield sse(error_body(event[1]))
            return
        generations = event[1]
        yield sse(chunk(head, [{"index": i, "delta": {}, "finish_reason": g.finish_reason}
                               for i, g in enumerate(generations)]))
        if include_usage:
            yield sse(chunk(head, [], usage(generations)))
        yield "data: [DONE]\n\n"

    def _authorize(self, request) -> None:
        key = self.config.api_key
        given = request.headers.get("authorization", "")
        if key and not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "invalid or missing API key (send the header 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    async def _json_body(self, request) -> dict:
        limit = self.config.max_body_bytes
        too_large = ApiError(413, f"request body larger than {limit} bytes (the server's limit)",
                             code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise too_large
        try:
            data = json.loads(body)
        except ValueError:  # also UnicodeDecodeError
            raise invalid("the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise invalid("the request body must be a JSON object", code="invalid_json")
        return data


def completion(head: dict, generations: list) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish_reason,
                "logprobs": None} for i, g in enumerate(generations)]
    return {**head, "object": "chat.completion", "choices": choices, "usage": usage(generations)}


def chunk(head: dict, choices: list, usage: dict | None = None) -> dict:
    body = {**head, "object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def usage(generations: list) -> dict:
    """Token counts: the prompt once (all choices share it), the completions summed."""
    prompt = generations[0].prompt_tokens if generations else 0
    completion_tokens = sum(g.completion_tokens for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def error_body(error: Exception) -> dict:
    if isinstance(error, ApiError):
        return error.body()
    return ApiError(500, f"generation failed: {error}", type="server_error").body()


def create_app(vlm: VLM, config: ServeConfig):
    """The ASGI app: the OpenAI-compatible API, and the demo page when `config.web`."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    api = Api(vlm, config)

    @asynccontextmanager
    async def lifespan(app):
        api.batcher.start()
        yield
        # uvicorn gets here after in-flight requests finished; close() still drains anything queued.
        await asyncio.to_thread(api.batcher.close)

    async def page(request):
        return HTMLResponse(web_page(vlm.caption_prompt))

    async def api_error(request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    async def http_error(request, error: HTTPException):
        return JSONResponse(ApiError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    async def server_error(request, error: Exception):
        return JSONResponse(error_body(error), status_code=500)

    routes = [Route("/health", api.health), Route("/v1/models", api.models),
              Route("/v1/chat/completions", api.chat_completions, methods=["POST"])]
    if config.web:
        routes.append(Route("/", page))
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.api = api
    return app


def web_page(caption_prompt: str) -> str:
    """The demo page, asking for captions with the same prompt as `verbo caption` (`VLM.caption_prompt`)."""
    from importlib.resources import files

    page = files("verbovision").joinpath("web/index.html").read_text(encoding="utf-8")
    return page.replace("{{CAPTION_PROMPT}}", json.dumps(caption_prompt).replace("</", "<\\/"))  # inside <script>


def serve(config: ServeConfig) -> None:
    """Load the model and serve until interrupted (Ctrl-C or SIGTERM finish the requests in flight first)."""
    import torch
    import uvicorn

    from .infer import VLM

    if config.threads:
        torch.set_num_threads(config.threads)
    app = create_app(VLM(config.model, device=config.device, quantize=config.quantize, compiled=config.compiled,
                         template=config.template), config)
    url = f"http://{config.host}:{config.port}"
    print(f"verbo: serving {config.served_name!r} at {url}/v1 (batches of up to {config.batch_size}, "
          f"waiting {config.max_wait_ms:g} ms)", file=sys.stderr, flush=True)
    if config.web:
        print(f"verbo: open {url}/ in a browser", file=sys.stderr, flush=True)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print("verbo: warning: listening beyond this machine without --api-key", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)
