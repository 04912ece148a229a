"""`verbo serve` and `verbo web`: an OpenAI-compatible chat completions server with continuous batching.

Endpoints: `POST /v1/chat/completions` (messages with text and image_url parts; `stream: true` as server-sent events),
`GET /v1/models`, `GET /health`, `GET /metrics`, and for `verbo web` the demo page at `/` (`api`). Requests are
checked (`request`; remote images are downloaded within a deadline, `remote`), queued and generated in batches
(`batcher`, `metrics`); errors are answered in OpenAI's shape (`errors`).
"""

from __future__ import annotations

import sys
import time

from ..errors import ConfigError
from .api import create_app
from .config import ServeConfig


def serve(config: ServeConfig) -> None:
    """Load the model and serve until interrupted (Ctrl-C or SIGTERM finish the requests in flight first)."""
    import torch
    import uvicorn
    from PIL import Image

    from ..infer.vlm import VLM

    check_address(config.host, config.port)
    # PIL refuses to open images of more than twice its MAX_IMAGE_PIXELS: never one within the server's own limit,
    # which each image's header is checked against before anything is decoded
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, config.max_image_pixels)
    if config.threads:
        torch.set_num_threads(config.threads)
    vlm = VLM(config.model, device=config.device, quantize=config.quantize, compiled=config.compiled,
              template=config.template, dtype=config.dtype)
    if config.compiled:
        warm_up(vlm, config)
    app = create_app(vlm, config)
    url = f"http://{config.host}:{config.port}"
    print(f"verbo: serving {config.served_name!r} at {url}/v1 with {app.state.api.batching}", file=sys.stderr,
          flush=True)
    if config.web:
        print(f"verbo: open {url}/ in a browser", file=sys.stderr, flush=True)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print("verbo: warning: listening beyond this machine without --api-key", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)


def check_address(host: str, port: int) -> None:
    """Bind host:port once before the model loads (as uvicorn will, with SO_REUSEADDR): a port in use or a host that
    is no address of this machine is a one-line error now, not uvicorn's after the load."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:  # socket.gaierror included
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); pick another --port, or "
                          "an address of this machine as --host (127.0.0.1, 0.0.0.0)") from None


def warm_up(vlm, config: ServeConfig) -> None:
    """Compile the shapes of `--compile` before serving, so that no request pays for it, and say how long it took."""
    from ..infer.options import DecodeOptions

    started = time.monotonic()
    shapes = vlm.warm_up(config.batch_size, (config.defaults or DecodeOptions()).max_new_tokens)
    print(f"verbo: compiled generation for {shapes} shapes (up to {config.batch_size} rows, "
          f"{vlm.compiled.cache_length} cached tokens) in {time.monotonic() - started:.1f} s", file=sys.stderr,
          flush=True)
