"""Continuous batching of greedy replies: a request joins the running batch at the next decoding step and each of its
rows leaves at its own end, so the batch never waits for its longest reply before taking new work.

A step first prefills the requests waiting (images encoded, prompts run, left-padded together) and merges their KV
cache rows into the running batch: the shorter side's keys, values and attention mask are left-padded to a common
length, and every row keeps its own explicit positions, so padding changes nothing a row computes. Then every row
decodes one token. Rows that end (EOS, stop string, their own max_new_tokens) are dropped with their cache rows, and
left columns no remaining row attends are trimmed. Each row decodes the tokens it would decode alone
(`greedy_leaving_at_eos`: the same positions, cache and last-position logits)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .greedy import POSITIONAL_INPUTS, Reply, new_cache, next_tokens, prompt_positions
from .messages import probe_record
from .options import DecodeOptions, Generation

if TYPE_CHECKING:
    from ..data.encoding import Encoded
    from ..data.records import Record
    from .vlm import VLM


class Request(Protocol):
    """What the caller of `ContinuousBatch` submits: one record per reply, and where the replies go."""

    records: Sequence[Record]
    options: Sequence[DecodeOptions]
    """One per record, each `plain_greedy`."""
    streaming: bool
    """Whether `text` is told the replies' text as it grows."""

    def text(self, choice: int, piece: str) -> None: ...

    def done(self, generations: list[Generation]) -> None:
        """All replies ended (in the order of `records`)."""

    def failed(self, error: Exception) -> None:
        """Generation failed; no other call follows."""


def why_not_continuous(vlm: VLM) -> str | None:
    """Why `ContinuousBatch` cannot decode this model's replies (None: it can)."""
    if vlm.compiled is not None:
        return "--compile generates through transformers' compiled generate"
    if not vlm.greedy_loop_fits:
        return "the model's generation config, forward inputs or image layout do not fit the greedy loop"
    if any(type(layer) is not DynamicLayer for layer in new_cache(vlm.model).layers):
        return "its KV cache has layers other than full attention (sliding window, linear or indexed attention)"
    probe = [probe_record("?")]
    try:
        extra = set(vlm.model_inputs(probe, vlm.encode_prompts(probe))) - POSITIONAL_INPUTS
    except Exception as error:  # noqa: BLE001 - a probe: the model is served all the same, with dynamic batching
        return f"its inputs for an image and a prompt could not be built ({error})"
    if extra:
        return f"its forward takes {', '.join(sorted(extra))} beside ids, attention mask and pixel values"
    return None


@dataclass
class _Replies:
    """A request in flight: its replies, and the generations of those that ended."""

    request: Request
    encoded: list[Encoded]
    generations: list[Generation | None] = field(init=False)

    def __post_init__(self):
        self.generations = [None] * len(self.encoded)

    @property
    def longest(self) -> int:
        """The most tokens one of its rows can hold: its prompt and its whole reply."""
        return max(len(e.input_ids) + o.max_new_tokens for e, o in zip(self.encoded, self.request.options))


@dataclass
class _Row:
    replies: _Replies
    choice: int
    reply: Reply

    def add(self, token: int) -> bool:
        """Take the row's next token; whether its reply is done (then its request hears of it once all are)."""
        piece = self.reply.add(token)
        request = self.replies.request
        if piece and request.streaming:
            request.text(self.choice, piece)
        if self.reply.finish_reason is None:
            return False
        generations = self.replies.generations
        generations[self.choice] = self.reply.generation(len(self.replies.encoded[self.choice].input_ids))
        if all(g is not None for g in generations):
            request.done(generations)
        return True


class ContinuousBatch:
    """Greedy replies decoded step by step, requests joining and leaving between steps. Not thread-safe: one thread
    submits and steps.

    Caps: at most `max_rows` replies in flight, and, when `max_cached_tokens` is set, a request joins only while the
    rows in flight (its own included) times the longest any of them can grow (prompt + max_new_tokens) stays within
    it: the KV cache holds that many token columns per layer at most (rows are left-padded to the longest). A request
    that exceeds a cap by itself still runs, alone."""

    def __init__(self, vlm: VLM, max_rows: int, max_cached_tokens: int | None = None):
        self.vlm = vlm
        self.max_rows = max(1, max_rows)
        self.max_cached_tokens = max_cached_tokens
        self.join_at = max(1, self.max_rows // 4)
        """Free rows a running batch waits for before requests join: each join costs a prefill (images processed and
        encoded, prompts run) and a copy of the cache, worth more than a step or two of a few idle rows."""
        self.waiting: deque[_Replies] = deque()
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None
        """[b, T] the cached columns each row attends."""
        self.positions: torch.Tensor | None = None
        """[b, 1] the position of each row's next input token."""
        self.tokens: torch.Tensor | None = None
        """[b] each row's last token, not yet in the cache."""
        self.rows_decoded = 0
        """Rows the last step decoded."""

    def submit(self, request: Request) -> None:
        """Queue a request: it joins at the next step with room for it."""
        self.waiting.append(_Replies(request, self.vlm.encode_prompts(request.records)))

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    @torch.no_grad()
    def step(self) -> None:
        """Prefill the waiting requests that fit and merge them in, then decode one token of every row."""
        joining = self._admit()
        if joining:
            self._join(joining)
        if self.rows:
            try:
                self._decode()
            except Exception as error:  # noqa: BLE001 - reported to every request in flight
                for replies in {id(row.replies): row.replies for row in self.rows}.values():
                    replies.request.failed(error)
                self.rows, self.cache = [], None

    def _admit(self) -> list[_Replies]:
        """The waiting requests that join now, oldest first, none overtaking one that does not fit."""
        joining: list[_Replies] = []
        if self.rows and self.max_rows - len(self.rows) < self.join_at:
            return joining
        rows, longest = len(self.rows), max((row.replies.longest for row in self.rows), default=0)
        while self.waiting:
            candidate = self.waiting[0]
            rows += len(candidate.encoded)
            longest = max(longest, candidate.longest)
            alone = not self.rows and not joining
            cached = self.max_cached_tokens is None or rows * longest <= self.max_cached_tokens
            if not alone and (rows > self.max_rows or not cached):
                break
            joining.append(self.waiting.popleft())
        return joining

    def _join(self, joining: list[_Replies]) -> None:
        """Prefill the joining requests together; their rows (those not done at their first token) join the batch."""
        records = [r for replies in joining for r in replies.request.records]
        encoded = [e for replies in joining for e in replies.encoded]
        try:
            inputs = self.vlm.model_inputs(records, encoded)
            if not set(inputs) <= POSITIONAL_INPUTS:
                raise ValueError(f"continuous batching takes only {', '.join(sorted(POSITIONAL_INPUTS))} inputs")
            mask = inputs["attention_mask"]  # [n, T]
            cache = new_cache(self.vlm.model)
            tokens = next_tokens(self.vlm.model, {**inputs, "position_ids": prompt_positions(mask)}, cache)  # [n]
        except Exception as error:  # noqa: BLE001 - reported to the requests that failed to join
            for replies in joining:
                replies.request.failed(error)
            return
        rows = [_Row(replies, choice, self.vlm.new_reply(options, replies.request.streaming))
                for replies in joining for choice, options in enumerate(replies.request.options)]
        positions = mask.sum(-1, keepdim=True)  # [n, 1] each prompt's length: the position of its first reply token
        going = self._take(rows, tokens)
        self._merge(rows, going, cache, mask, positions, tokens)

    def _take(self, rows: list[_Row], tokens: torch.Tensor) -> torch.Tensor:
        """Give each row its token; [n] bool, the rows still going."""
        return torch.tensor([not row.add(token) for row, token in zip(rows, tokens.tolist())], dtype=torch.bool)

    def _merge(self, rows: list[_Row], going: torch.Tensor, cache: DynamicCache, mask: torch.Tensor,
               positions: torch.Tensor, tokens: torch.Tensor) -> None:
        """Add the rows still going, with their cache, to the running batch: the shorter side left-padded."""
        if not going.any():
            return
        keep = going.nonzero().squeeze(1).to(mask.device)
        cache.batch_select_indices(keep)
        rows = [row for row, g in zip(rows, going.tolist()) if g]
        mask, positions, tokens = mask[keep], positions[keep], tokens[keep]
        if not self.rows:
            self.rows, self.cache, self.mask, self.positions, self.tokens = rows, cache, mask, positions, tokens
            self._trim()
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for running, joining in zip(self.cache.layers, cache.layers):
            running.keys = torch.cat([_pad_left(running.keys, width), _pad_left(joining.keys, width)])
            running.values = torch.cat([_pad_left(running.values, width), _pad_left(joining.values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
        self.positions = torch.cat([self.positions, positions])
        self.tokens = torch.cat([self.tokens, tokens])
        self.rows += rows

    def _decode(self) -> None:
        """One token of every row; the rows that end leave."""
        self.rows_decoded = len(self.rows)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)  # [b, T + 1]
        inputs = {"input_ids": self.tokens[:, None], "attention_mask": self.mask, "position_ids": self.positions}
        self.tokens = next_tokens(self.vlm.model, inputs, self.cache)  # [b]
        self.positions = self.positions + 1
        going = self._take(self.rows, self.tokens)
        if going.all():
            return
        keep = going.nonzero().squeeze(1).to(self.mask.device)
        self.rows = [row for row, g in zip(self.rows, going.tolist()) if g]
        if not self.rows:
            self.cache = None
            return
        self.cache.batch_select_indices(keep)
        self.mask, self.positions, self.tokens = self.mask[keep], self.positions[keep], self.tokens[keep]
        self._trim()

    def _trim(self) -> None:
        """Drop the left columns no row attends any more (padding of rows that left)."""
        unused = int(self.mask.any(0).int().argmax())  # the first column some row attends
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros prepended on the token axis (the last of a mask [b, T], the third of keys/values [b, H, T, D])."""
    axis_from_end = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[-axis_from_end]
    return F.pad(tensor, (0, 0) * (axis_from_end - 1) + (missing, 0)) if missing else tensor
