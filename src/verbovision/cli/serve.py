"""`verbo serve` and `verbo web`: the flags of a server (see `verbovision.serve`); their defaults are ServeConfig's."""

from __future__ import annotations

import argparse
import os

from ..serve import serve
from ..serve.config import GENERIC_NAME, MB, ServeConfig
from .common import Command, add_decode_options, add_model_argument, check_flags, decode_options_from_flags


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--host", default=ServeConfig.host,
                   help=f"address to bind (default {ServeConfig.host}: this machine only)")
    p.add_argument("--port", type=int, default=ServeConfig.port, help="port to listen on")
    p.add_argument("--model-name", help=f"model id clients send (default: MODEL); {GENERIC_NAME!r} is always "
                                        "accepted too")
    p.add_argument("--api-key", default=os.environ.get("VERBO_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 requests (default: $VERBO_API_KEY)")
    p.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (off: data: URIs only)")
    _limit_arguments(p)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core; fewer can be faster when "
                                                "other programs share the CPU)")
    p.add_argument("--log-level", default=ServeConfig.log_level,
                   choices=["critical", "error", "warning", "info", "debug"], help="server log detail")
    add_decode_options(p)


def _limit_arguments(p: argparse.ArgumentParser) -> None:
    limits = p.add_argument_group("limits and batching (--batch-size: most replies generated together)")
    limits.add_argument("--max-wait-ms", type=float, default=ServeConfig.max_wait_ms,
                        help="how long a batch waits for more requests")
    limits.add_argument("--batching", choices=["continuous", "dynamic"], default=ServeConfig.batching,
                        help="continuous (default): greedy requests join the running batch at the next decoding step "
                             "and leave at their end; dynamic: each batch runs to its end (sampling and beam search "
                             "always do)")
    limits.add_argument("--max-cached-tokens", type=int,
                        help="continuous batching: a request joins only while rows in flight x the longest of them "
                             "(prompt + max_tokens) stay within this many KV-cache tokens (default: no cap but "
                             "--batch-size)")
    limits.add_argument("--max-body-mb", type=float, default=ServeConfig.max_body_bytes / MB,
                        help="largest request body")
    limits.add_argument("--max-image-mb", type=float, default=ServeConfig.max_image_bytes / MB,
                        help="largest encoded image")
    limits.add_argument("--max-image-pixels", type=int, default=ServeConfig.max_image_pixels,
                        help="largest image (width x height)")
    limits.add_argument("--max-prompt-tokens", type=int, default=ServeConfig.max_prompt_tokens,
                        help="longest prompt, image tokens included")
    limits.add_argument("--max-completion-tokens", type=int, default=ServeConfig.max_completion_tokens,
                        help="largest max_tokens a request may ask")
    limits.add_argument("--max-n", type=int, default=ServeConfig.max_n, help="most choices per request")


_LIMIT_RULES = {
    "port": ("a TCP port in 0..65535", lambda v: 0 <= v <= 65535),  # uvicorn failed to bind after the load, and hung
    "max_wait_ms": ("a number >= 0", lambda v: v >= 0),
    "max_cached_tokens": ("an integer >= 1", lambda v: v >= 1),
    "max_body_mb": ("a number > 0", lambda v: v > 0),
    "max_image_mb": ("a number > 0", lambda v: v > 0),
    "max_image_pixels": ("an integer >= 1", lambda v: v >= 1),
    "max_prompt_tokens": ("an integer >= 1", lambda v: v >= 1),
    "max_completion_tokens": ("an integer >= 1", lambda v: v >= 1),
    "max_n": ("an integer >= 1", lambda v: v >= 1),
    "threads": ("an integer >= 1", lambda v: v >= 1),
}
"""The server's flags' valid values (see `check_flags`): a limit no request can meet is refused at start."""


def serve_config(args: argparse.Namespace, web: bool) -> ServeConfig:
    """The ServeConfig the flags of `verbo serve` (web: `verbo web`) ask for."""
    check_flags(args, _LIMIT_RULES)
    return ServeConfig(
        model=args.model, model_name=args.model_name or "", host=args.host, port=args.port, api_key=args.api_key,
        allow_remote_images=args.allow_remote_images, batch_size=args.batch_size, max_wait_ms=args.max_wait_ms,
        batching=args.batching, max_cached_tokens=args.max_cached_tokens,
        max_body_bytes=int(args.max_body_mb * MB), max_image_bytes=int(args.max_image_mb * MB),
        max_image_pixels=args.max_image_pixels, max_prompt_tokens=args.max_prompt_tokens,
        max_completion_tokens=args.max_completion_tokens, max_n=args.max_n,
        defaults=decode_options_from_flags(args), web=web, device=args.device, dtype=args.dtype, quantize=args.quantize,
        compiled=args.compile, template=args.template, threads=args.threads, log_level=args.log_level)


def cmd_serve(args: argparse.Namespace) -> None:
    serve(serve_config(args, web=False))


def cmd_web(args: argparse.Namespace) -> None:
    serve(serve_config(args, web=True))


SERVE = Command(
    "serve an OpenAI-compatible /v1/chat/completions API with images (continuous batching)", _serve_arguments, cmd_serve,
    """examples:
  verbo serve runs/qs/final
  verbo serve runs/qs/final --port 8080 --api-key secret --batch-size 32
  verbo serve runs/qs/final --host 0.0.0.0 --api-key "$KEY" --allow-remote-images
The decoding flags are the defaults of requests that leave them out. Then, with the openai client:
  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret").chat.completions.create(
      model="runs/qs/final", messages=[{"role": "user", "content": [
          {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
          {"type": "text", "text": "Describe the image briefly."}]}])""")

WEB = Command("browser demo: upload an image, caption it, ask, chat", _serve_arguments, cmd_web, """examples:
  verbo web runs/qs/final                 # then open http://127.0.0.1:8000/
  verbo web runs/qs/final --port 7860""")
