"""`--compile`: generation with a static KV cache and a torch.compile'd decoding step, in a handful of shapes.

transformers' `generate`, given a static KV cache and a `compile_config`, runs the prefill eagerly and every decoding
step through one torch.compile'd forward (on CUDA in mode "reduce-overhead": CUDA graphs). That graph is specialised
to the static cache's shape, rows x cache length: left alone, every new batch size or prompt length would compile
again. So a batch is padded to a row bucket (the next power of two, at most the batch size; the padded
rows copy a real row, are finished from their first token and dropped) and the cache is sized to a multiple of
CACHE_STEP tokens that never shrinks (a shorter request reuses the longer shape already compiled): a run or a server
compiles once per bucket, and `VLM.warm_up` compiles them before the first request. `generate` would build a new
StaticCache at every call (`cache_implementation="static"`); each row bucket keeps its own instead, emptied between
calls, so that its tensors stay where the CUDA graphs recorded them (torch re-records a graph whose static inputs
moved, and torch 2.11 gives CUDA graphs up after 128 such re-recordings). The caches of every bucket stay in memory
as long as the model. Encoder-decoder models get generate's caches: their cross-attention cache fits each batch.

Beam search runs eagerly: transformers' beam search never calls the compiled forward, so a static cache would only
cost memory. Seeded sampling is not padded: the padded rows would take draws from the seeded random stream, and the
replies would differ from an eager run with the seed."""

from __future__ import annotations

import contextlib
import warnings

import torch
from transformers import CompileConfig, StaticCache

from ..families import named_inputs
from .greedy import cache_keyword
from .options import CACHE_STEP, DecodeOptions

RECOMPILE_LIMIT = 64
"""Shapes the compiled forward may take before dynamo gives up and runs it eagerly; its default (8) is fewer than the
row buckets x cache lengths a long-running server may meet."""

WARM_UP_TOKENS = 4
"""Tokens generated per shape by `VLM.warm_up`: the first decoding step compiles, CUDA graphs record at the next."""


class CompiledGeneration:
    """The compile settings `generate` is given under `--compile`, and the shapes it has been asked for so far."""

    def __init__(self, backend: str = "inductor", mode: str | None = "reduce-overhead"):
        """`backend`/`mode`: torch.compile's (transformers' defaults; tests count graphs with the "eager" backend)."""
        # dynamic=False: one graph per bucket, specialised to its shape, as CUDA graphs want; dynamo's automatic
        # dynamic shapes would instead turn the second shape it meets into a symbolic one.
        self.config = CompileConfig(fullgraph=False, dynamic=False, backend=backend, mode=mode)
        self.config._compile_all_devices = True  # transformers' documented switch to compile on CPUs too
        self.cache_length = 0
        """The static cache length of the calls so far: it only grows, in steps of CACHE_STEP."""
        self.shapes: set[tuple[int, int]] = set()
        """(rows, cache length) of every compiled `generate` call so far."""
        self.caches: dict[int, StaticCache] = {}
        """rows -> the StaticCache of that row bucket, `cache_length` long."""
        self._told: set[str] = set()

    def rows(self, replies: int, batch_size: int, options: DecodeOptions) -> int:
        """How many rows a batch of `replies` replies is generated in: its row bucket (the next power of two, at most
        `batch_size`), or `replies` itself where padding would change the replies or win nothing."""
        if options.beams > 1:
            return replies
        if options.sampling and options.seed is not None:
            self._tell("seeded sampling under --compile compiles a shape per batch size: padded rows would take draws "
                       "from the seeded random stream")
            return replies
        return min(1 << (replies - 1).bit_length(), max(batch_size, replies))

    def row_buckets(self, batch_size: int) -> list[int]:
        """Every row count `rows` gives for batches of at most `batch_size` replies (greedy decoding)."""
        return sorted({self.rows(n, batch_size, DecodeOptions()) for n in range(1, batch_size + 1)})

    def generate_kwargs(self, model, rows: int, tokens: int, options: DecodeOptions) -> dict:
        """What `model.generate` is given beside the decoding options for `rows` rows of at most `tokens` tokens
        (padded prompt + longest reply): the static cache of the row bucket and the compile settings; nothing for
        beam search."""
        if options.beams > 1:
            self._tell("beam search runs eagerly under --compile: transformers' beam search does not call the "
                       "compiled forward")
            return {}
        self.reserve(tokens)
        self.shapes.add((rows, self.cache_length))
        if model.config.is_encoder_decoder:
            return {"cache_implementation": "static", "max_cache_len": self.cache_length, "compile_config": self.config}
        return {cache_keyword(named_inputs(model)): self._cache(model, rows), "compile_config": self.config}

    def reserve(self, tokens: int) -> None:
        """Make the static caches hold at least `tokens` tokens from now on."""
        length = max(self.cache_length, -(-tokens // CACHE_STEP) * CACHE_STEP)
        if length > self.cache_length:
            self.caches.clear()  # too short now: each bucket makes a longer one when next used
            self.cache_length = length

    def _cache(self, model, rows: int):
        """The row bucket's static cache, empty."""
        if rows not in self.caches:
            config = model.config.get_text_config(decoder=True)
            self.caches[rows] = StaticCache(config=config, max_cache_len=self.cache_length)
        self.caches[rows].reset()
        return self.caches[rows]

    @staticmethod
    def limits() -> contextlib.AbstractContextManager:
        """Dynamo's settings while generating: room for every bucket's graph."""
        return torch._dynamo.config.patch(recompile_limit=max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit))

    def _tell(self, reason: str) -> None:
        """Say `reason` once per model, not at every batch."""
        if reason not in self._told:
            self._told.add(reason)
            warnings.warn(reason, stacklevel=3)
