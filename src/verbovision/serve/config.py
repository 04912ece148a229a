"""What a `verbo serve` server is configured with: the model, the address, the limits on requests, batching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..infer.options import BATCH_SIZE

if TYPE_CHECKING:  # imported lazily at run time: `verbo --help` should not load torch or the web stack
    from ..infer.options import DecodeOptions

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
    batch_size: int = BATCH_SIZE
    """Most replies generated together (1 = one request at a time)."""
    max_wait_ms: float = 5.0
    """How long a batch waits for more requests to join it."""
    batching: str = "continuous"
    """continuous: greedy requests join the running batch at the next decoding step (where the model fits, see
    `infer.continuous`); dynamic: every batch runs to its end before the next starts (sampling and beam search always
    do)."""
    max_cached_tokens: int | None = None
    """Continuous batching: a request joins only while the rows in flight times the longest of them (prompt +
    max_tokens) stay within this many KV-cache tokens (None: only batch_size caps it)."""
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
    dtype: str = "auto"
    """What the weights load in: auto (bfloat16 on a CUDA GPU that supports it, else float32), float32, bfloat16,
    float16."""
    quantize: str = "none"
    """none, int8-dynamic (CPU), 8bit or 4bit (bitsandbytes: CUDA, 4bit on the CPU too)."""
    compiled: bool = False
    """Static KV cache + torch.compile'd decoding steps in bucketed shapes (`infer.compiled`), all compiled at start;
    requests are then batched dynamically."""
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
