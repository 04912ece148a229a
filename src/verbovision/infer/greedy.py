"""The early-leaving greedy loop: each row leaves the batch at its end of text; stop strings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, StoppingCriteria

from ..families import named_inputs
from .options import DecodeOptions, Generation, TextCallback

_INERT_GENERATION_SETTINGS = frozenset({"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                                        "transformers_version", "_from_model_config", "max_length", "do_sample",
                                        "temperature", "top_p", "top_k", "use_cache", "output_attentions",
                                        "output_hidden_states"})
"""Generation-config settings that change nothing in greedy decoding with an explicit max_new_tokens."""

POSITIONAL_INPUTS = frozenset({"input_ids", "attention_mask", "pixel_values"})
"""Forward inputs of a batch whose decoding steps need nothing but the next token, the mask and 1-D positions."""


def greedy_loop_fits(model, family) -> bool:
    """Whether `greedy_leaving_at_eos` decodes this model as `generate` does: no logits processor or static cache
    from its generation config, images as tokens in the text, logits computable for the last position only."""
    config = set(model.generation_config.to_diff_dict()) <= _INERT_GENERATION_SETTINGS
    named = named_inputs(model)
    # Every input the loop passes must be one the forward names: in **kwargs it could go unread.
    steps = {"position_ids", "logits_to_keep"} <= named and cache_keyword(named) in named
    return config and steps and family.images_in_text


def cache_keyword(named: frozenset[str]) -> str:
    """The forward's KV-cache input: `cache` in newer transformers releases, `past_key_values` before."""
    return "cache" if "cache" in named else "past_key_values"


def greedy_leaving_at_eos(model, inputs: dict, tracker: ReplyTracker) -> None:
    """Greedy decoding in which each row leaves the batch, KV cache included, as soon as its reply is done, so later
    steps compute only the rows still going. The tokens are `generate`'s: same positions (from the attention mask),
    same cache, logits of the last position only; `tracker` ends each reply (EOS, stop string, its own limit)."""
    mask = inputs["attention_mask"]  # [B, T]
    positions = prompt_positions(mask)  # [B, T]
    cache = new_cache(model)
    rows = torch.arange(mask.shape[0])  # [b] the batch rows still going
    step_inputs = {**inputs, "position_ids": positions}
    while True:
        tokens = next_tokens(model, step_inputs, cache)  # [b]
        going = ~torch.tensor(tracker.step(tokens.tolist(), rows.tolist()), dtype=torch.bool)  # [b]
        if not going.any():
            return
        if not going.all():
            keep = going.nonzero().squeeze(1).to(mask.device)
            cache.batch_select_indices(keep)
            rows, tokens, mask, positions = rows[going], tokens[keep], mask[keep], positions[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)  # [b, T + 1]
        positions = positions[:, -1:] + 1  # [b, 1]
        step_inputs = {"input_ids": tokens[:, None], "attention_mask": mask, "position_ids": positions}


def prompt_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions of left-padded prompts [B, T] from their attention mask; padding sits at 0, as in `generate`."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def new_cache(model) -> DynamicCache:
    return DynamicCache(config=model.config.get_text_config(decoder=True))


def next_tokens(model, inputs: dict, cache: DynamicCache) -> torch.Tensor:
    """The greedy next token of each row [b]: one forward (prompt or last tokens) that extends `cache`, logits of the
    last position only."""
    cache_input = {cache_keyword(named_inputs(model)): cache}
    logits = model(**inputs, **cache_input, use_cache=True, logits_to_keep=1).logits  # [b, 1, V]
    return logits[:, -1].argmax(-1)


def eos_token_ids(model, processor) -> frozenset[int]:
    """The tokens that end a reply: the model's generation config's EOS, else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos = processor.tokenizer.eos_token_id if eos is None else eos
    return frozenset(eos if isinstance(eos, list) else [eos])


class Reply:
    """One row of a batch as it is generated: its tokens, its text so far, and how much of that was handed out."""

    def __init__(self, decode: Callable[[list[int]], str], options: DecodeOptions, eos_ids: frozenset[int],
                 streamed: bool = False):
        self.decode = decode
        self.limit = options.max_new_tokens
        self.stops = options.stop
        self.eos_ids = eos_ids
        self.watched = streamed or bool(options.stop)
        """Decoded at every token (its text streams, or may hit a stop string); otherwise once, at its end."""
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        """Characters of the stripped text already handed out."""
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        """When the first token came (`time.monotonic()`)."""

    def add(self, token: int) -> str:
        """Take the next token (ignored once the reply is finished); returns the text that became final."""
        if self.finish_reason is not None:
            return ""
        if not self.ids:
            self.first_token_at = time.monotonic()
        self.ids.append(token)
        if token in self.eos_ids:
            self.finish_reason = "stop"
            if not self.watched:
                self.text = self.decode(self.ids[:-1])
        elif self.watched or len(self.ids) >= self.limit:
            self.text, hit = cut_at_stop(self.decode(self.ids), self.stops)
            if hit:
                self.finish_reason = "stop"
            elif len(self.ids) >= self.limit:
                self.finish_reason = "length"
        return self._release()

    def close(self) -> str:
        """Generation is over: whatever was held back is final."""
        if self.finish_reason is None:
            self.text = self.text if self.watched else self.decode(self.ids)
            self.finish_reason = "length"
        return self._release()

    @property
    def final_text(self) -> str:
        return self.text.strip()

    def generation(self, prompt_tokens: int) -> Generation:
        """The finished reply, as a server reports it."""
        return Generation(self.final_text, prompt_tokens, len(self.ids), self.finish_reason, self.first_token_at)

    def _release(self) -> str:
        text = self.text.lstrip()
        end = len(text.rstrip())  # trailing spaces wait: the reply is stripped if nothing follows them
        if self.finish_reason is None:
            end = min(end, len(text) - _unsettled_tail(text, self.stops))
        piece = text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece


class ReplyTracker(StoppingCriteria):
    """Feeds each generated token to its row's `Reply`; as a stopping criterion it ends rows as their replies end."""

    def __init__(self, replies: list[Reply], on_text: TextCallback | None):
        self.replies = replies
        self.on_text = on_text

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = self.step(input_ids[: len(self.replies), -1].tolist())
        padding = [True] * (len(input_ids) - len(self.replies))  # rows that only fill a compiled shape: done at once
        return torch.tensor(done + padding, device=input_ids.device)

    def step(self, tokens: list[int], rows: Sequence[int] | None = None) -> list[bool]:
        """Give each row (all, or `rows`) its next token; returns whether each of these replies is done."""
        rows = range(len(self.replies)) if rows is None else rows
        for row, token in zip(rows, tokens):
            self._emit(row, self.replies[row].add(token))
        return [self.replies[row].finish_reason is not None for row in rows]

    def close(self) -> None:
        for row, reply in enumerate(self.replies):
            self._emit(row, reply.close())

    def _emit(self, row: int, piece: str) -> None:
        if piece and self.on_text is not None:
            self.on_text(row, piece)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string in it, and whether there was one."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def _unsettled_tail(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters may still change: the start of a stop string, or an incomplete UTF-8 character."""
    partial = max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
    broken = len(text) - len(text.rstrip("\ufffd"))  # a multi-byte character whose last bytes are still to come
    return max(partial, broken)
