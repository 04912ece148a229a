"""The HTTP app: the OpenAI routes (`POST /v1/chat/completions`, `GET /v1/models`), `GET /health`, `GET /metrics`
(time to first token, latency, generated tokens/s), and the demo page of `verbo web` at `/`."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import TYPE_CHECKING

from .batcher import Batcher, Job
from .config import GENERIC_NAME, ServeConfig
from .errors import ApiError, error_body, invalid
from .request import parse_chat_request, prepare_record

if TYPE_CHECKING:  # imported lazily at run time: `verbo --help` should not load torch or the web stack
    from ..infer.continuous import ContinuousBatch
    from ..infer.vlm import VLM


class Api:
    """The HTTP handlers; one instance per app."""

    def __init__(self, vlm: VLM, config: ServeConfig):
        self.vlm = vlm
        self.config = config
        self.batching, continuous = batching(vlm, config)
        self.batcher = Batcher(vlm, config.batch_size, config.max_wait_ms / 1000, continuous)
        self.created = int(time.time())

    async def health(self, request):
        from starlette.responses import JSONResponse

        # No model name here: /health answers without the API key.
        return JSONResponse({"status": "ok", "waiting": self.batcher.queued, **self.batcher.stats})

    async def metrics(self, request):
        """Counts and timings, no model name or request content: answered without the API key, as /health."""
        from starlette.responses import JSONResponse

        batching = "continuous" if self.batcher.continuous is not None else "dynamic"
        return JSONResponse({"batching": batching, "waiting": self.batcher.queued, **self.batcher.stats,
                             **self.batcher.metrics.snapshot()})

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
        except (ValueError, RecursionError):  # also UnicodeDecodeError; RecursionError: nested too deep
            raise invalid("the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise invalid("the request body must be a JSON object", code="invalid_json")
        return data


def batching(vlm: VLM, config: ServeConfig) -> tuple[str, ContinuousBatch | None]:
    """How the server batches, in words for its start-up line, and the continuous batch of greedy requests (None
    where it does not fit the model, or `config.batching` asks for dynamic batching only)."""
    from ..infer.continuous import ContinuousBatch, why_not_continuous

    dynamic = f"dynamic batching (batches of up to {config.batch_size}, waiting {config.max_wait_ms:g} ms)"
    reason = "--batching dynamic" if config.batching == "dynamic" else why_not_continuous(vlm)
    if reason:
        return f"{dynamic}; no continuous batching: {reason}", None
    cap = f", {config.max_cached_tokens} cached tokens" if config.max_cached_tokens else ""
    return (f"continuous batching of greedy requests (up to {config.batch_size} replies{cap} in flight); sampling and "
            f"beam search: {dynamic}"), ContinuousBatch(vlm, config.batch_size, config.max_cached_tokens)


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

    routes = [Route("/health", api.health), Route("/metrics", api.metrics), Route("/v1/models", api.models),
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
