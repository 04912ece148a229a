"""Inference: caption images, answer questions and chat, batched, with the decoding options of every `verbo` command.

Prompts are encoded by the same `Encoder` that training used (template and image-token expansion included), so a
model sees at inference exactly the layout it learned. Batches are left-padded; each row of a batch is followed while
it is generated (`_Reply`): it ends at its own EOS, stop string or token limit, and its text can be streamed. Greedy
decoding runs VerboVision's own loop, where an ended row leaves the batch with its KV cache; beams, sampling and
logits processors run transformers' `generate`.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from PIL import Image
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from .data import CAPTION_PROMPT, DATA_IMAGE_TOKEN, Collator, Encoder, Record, Turn, load_image
from .errors import DataError
from .families import family_of, named_inputs
from .store import load_model, model_metadata
from .tokenizer import join_parts

TextCallback = Callable[[int, str], None]
"""Called with (index of the reply, new text) as replies grow."""


@dataclass
class DecodeOptions:
    """How to pick tokens: greedy by default; beams or sampling on request."""

    max_new_tokens: int = 256
    """Longest reply in tokens; a reply cut there ends with finish_reason "length". Long enough for the shipped
    recipes' replies: step-by-step geometry answers (Geo170K, `verbo data synth geometry`) end with "Answer: X"."""
    beams: int = 1
    """Beam search width (1 = no beam search)."""
    temperature: float | None = None
    """Sampling temperature; setting it (or top_p / top_k) turns sampling on."""
    top_p: float | None = None
    """Nucleus sampling: keep the smallest token set with this probability mass."""
    top_k: int | None = None
    """Sample among the k most likely tokens."""
    repetition_penalty: float | None = None
    """> 1 discourages repeating tokens."""
    seed: int | None = None
    """Seed for reproducible sampling."""
    stop: tuple[str, ...] = ()
    """Stop strings: a reply ends just before the first one it produces."""
    length_penalty: float | None = None
    """Beam search: scores are divided by length ** length_penalty (> 0 favours longer replies, < 0 shorter)."""
    early_stopping: bool = False
    """Beam search: stop once `beams` finished candidates exist, instead of when no better one can appear."""
    no_repeat_ngram_size: int | None = None
    """No n-gram of this size appears twice in a reply."""
    min_new_tokens: int | None = None
    """Shortest reply in tokens: EOS is not allowed before."""

    @property
    def sampling(self) -> bool:
        return any(v is not None for v in (self.temperature, self.top_p, self.top_k))

    def batch_key(self) -> tuple:
        """What replies generated in one batch must share; max_new_tokens and stop are followed per reply."""
        seed = self.seed if self.sampling else None
        return (self.beams, self.temperature, self.top_p, self.top_k, self.repetition_penalty, seed,
                self.length_penalty, self.early_stopping, self.no_repeat_ngram_size, self.min_new_tokens)

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": self.beams, "do_sample": self.sampling}
        for key in _OPTIONAL_GENERATE_KWARGS:
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.beams > 1:  # transformers warns about beam-only settings without beams
            kwargs["early_stopping"] = self.early_stopping
        return kwargs


def decode_options(options: DecodeOptions | None = None, **changes) -> DecodeOptions:
    """`options` (default: greedy `DecodeOptions()`) with the fields named by keyword changed, as the Python API takes
    them: `vlm.caption(images, max_new_tokens=8, beams=3)`. `stop` may be one string or several."""
    options = options or DecodeOptions()
    known = [f.name for f in fields(DecodeOptions)]
    for name in changes:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(f"unknown decoding option {name!r}; {hint}the options are {', '.join(known)}")
    if "stop" in changes:
        stop = changes["stop"]
        changes["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return replace(options, **changes)


_OPTIONAL_GENERATE_KWARGS = ("temperature", "top_p", "top_k", "repetition_penalty", "length_penalty",
                             "no_repeat_ngram_size", "min_new_tokens")
"""DecodeOptions fields passed to `generate` only when set, so that unset ones keep the model's generation config."""


@dataclass
class Generation:
    """One reply with what a server reports about it."""

    text: str
    """The reply, without EOS, stop string or surrounding whitespace."""
    prompt_tokens: int
    """Tokens of the prompt (image tokens included)."""
    completion_tokens: int
    """Tokens generated, the final EOS or stop string included."""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (max_new_tokens reached)."""


@dataclass
class Truncation:
    """How many replies of a set were cut at max_new_tokens (finish_reason "length"): a cut reply may lack its end
    (the "Answer: X" a score reads), so every command that generates many says how many there were."""

    max_new_tokens: int
    replies: int = 0
    truncated: int = 0

    def add(self, finish_reasons: Iterable[str]) -> Truncation:
        for reason in finish_reasons:
            self.replies += 1
            self.truncated += reason == "length"
        return self

    def __str__(self) -> str:
        return f"truncated: {self.truncated} of {self.replies} replies hit max_new_tokens={self.max_new_tokens}"


class VLM:
    """A loaded model + processor that captions, answers and chats, in batches."""

    def __init__(self, path: str | Path, device: str | None = None, quantize: str = "none", compiled: bool = False,
                 template: str | None = None):
        """`template` (chat, plain, caption, prefix) lays prompts out otherwise than the model was trained to (its
        verbovision.json), e.g. for a model with no chat template; default: the model's own."""
        model, processor = load_model(path, device=device, quantize=quantize)
        if compiled:
            compile_generation(model)
        metadata = model_metadata(path)
        self._attach(str(path), model, processor, {**metadata, "template": template} if template else metadata)

    @classmethod
    def from_loaded(cls, model, processor, template: str = "chat", name: str = "in-memory") -> VLM:
        """Wrap a model already in memory (e.g. one being trained) to generate with it."""
        vlm = cls.__new__(cls)
        vlm._attach(name, model, processor, {"template": template})
        return vlm

    def _attach(self, path: str, model, processor, metadata: dict) -> None:
        self.path, self.model, self.processor, self.metadata = path, model, processor, metadata
        self.family = family_of(model.config)
        self.caption_prompt = metadata.get("prompt") or self.family.caption_prompt or CAPTION_PROMPT
        """What `caption` asks by default: the caption prompt the model was trained on (in its data's language),
        else its family's convention (PaliGemma's "caption en"), else CAPTION_PROMPT. A plain- or prefix-template
        model also gets it for a request with images and no text."""
        self.encoder = Encoder(self.processor, self.metadata.get("template", "chat"), max_length=1 << 30,
                               family=self.family, prompt=self.caption_prompt)
        self.collator = Collator(self.encoder, pad_left=True)
        self.device = next(self.model.parameters()).device
        self.eos_ids = eos_token_ids(self.model, self.processor)
        self.greedy_loop_fits = greedy_loop_fits(self.model, self.family)

    def caption(self, images: Sequence, prompt: str | None = None, options: DecodeOptions | None = None,
                batch_size: int = 16, **decoding) -> list[str]:
        """Captions of the images, asked `prompt` (default: `caption_prompt`).

        Decoding is greedy unless `options` or keyword arguments named as `DecodeOptions`' fields say otherwise
        (`max_new_tokens=8, beams=3`; `top_p=0.9, temperature=0.7, seed=0`); the same holds for every method here.
        """
        prompt = self.caption_prompt if prompt is None else prompt
        return self.generate([(image, prompt) for image in images], options, batch_size, **decoding)

    def ask(self, image, question: str, options: DecodeOptions | None = None, **decoding) -> str:
        return self.generate([(image, question)], options, **decoding)[0]

    def chat(self, messages: Sequence[dict], options: DecodeOptions | None = None, **decoding) -> str:
        """The next assistant reply to OpenAI-style messages (see `messages_record` for the content parts)."""
        return self.generate_records([messages_record(messages)], decode_options(options, **decoding))[0]

    def stream(self, messages: Sequence[dict], options: DecodeOptions | None = None, **decoding) -> Iterator[str]:
        """Like `chat`, but yields the reply in pieces as it is generated; the pieces add up to `chat`'s reply."""
        record = messages_record(messages)
        options = decode_options(options, **decoding)
        pieces: queue.Queue = queue.Queue()

        def run() -> None:
            try:
                self.generate_details([record], options, on_text=lambda _, piece: pieces.put(piece))
                pieces.put(None)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                pieces.put(e)

        threading.Thread(target=run, daemon=True, name="verbo-stream").start()
        while (piece := pieces.get()) is not None:
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    def generate(self, items: Sequence[tuple], options: DecodeOptions | None = None, batch_size: int = 16,
                 **decoding) -> list[str]:
        """Replies for (image or None, prompt) pairs; images may be paths or PIL images."""
        return self.generate_records([prompt_record(image, prompt) for image, prompt in items],
                                     decode_options(options, **decoding), batch_size)

    def generate_records(self, records: Sequence[Record], options: DecodeOptions | None = None,
                         batch_size: int = 16) -> list[str]:
        """The next assistant reply of each record (its last reply, if present, is what gets predicted)."""
        return [g.text for g in self.generate_details(records, options, batch_size)]

    def generate_details(self, records: Sequence[Record],
                         options: DecodeOptions | Sequence[DecodeOptions] | None = None, batch_size: int = 16,
                         on_text: TextCallback | None = None) -> list[Generation]:
        """Replies with token counts and finish reasons, `batch_size` records at a time.

        `options` is one for all records or one per record; records of a batch must share `batch_key()`.
        `on_text(i, piece)` receives reply i's text as it grows (at the end, for beam search).
        """
        options = options or DecodeOptions()
        per_record = [options] * len(records) if isinstance(options, DecodeOptions) else list(options)
        results: list[Generation] = []
        for start in range(0, len(records), batch_size):
            callback = None if on_text is None else (lambda row, piece, start=start: on_text(start + row, piece))
            stop = start + batch_size
            results.extend(self._generate_batch(records[start:stop], per_record[start:stop], callback))
        return results

    def prompt_tokens(self, record: Record) -> int:
        """Length of a record's prompt in tokens; raises DataError if it cannot be encoded."""
        return len(self.encoder.encode(record, for_generation=True).input_ids)

    @torch.no_grad()
    def _generate_batch(self, records: Sequence[Record], options: Sequence[DecodeOptions],
                        on_text: TextCallback | None) -> list[Generation]:
        if len({o.batch_key() for o in options}) > 1:
            raise ValueError("records generated in one batch must share their decoding options' batch_key()")
        encoded = [self.encoder.encode(record, for_generation=True) for record in records]
        batch = self.collator.pad(encoded)
        batch.pop("labels")
        images = [load_image(image) for record in records for image in record.images]
        if images:
            batch.update(self.encoder.pixel_inputs(images))
        batch = self.family.model_inputs({k: v.to(self.device) for k, v in batch.items()})
        decode = lambda ids: self.processor.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        tracker = _ReplyTracker([_Reply(decode, o, self.eos_ids, on_text is not None) for o in options], on_text)
        if self._leaves_at_eos(options[0], batch):
            greedy_leaving_at_eos(self.model, batch, tracker)
        else:
            self._generate_with_transformers(batch, options, tracker, max(len(e.input_ids) for e in encoded))
        tracker.close()
        return [Generation(reply.final_text, len(e.input_ids), len(reply.ids), reply.finish_reason)
                for reply, e in zip(tracker.replies, encoded)]

    def _leaves_at_eos(self, options: DecodeOptions, batch: dict) -> bool:
        """Whether `greedy_leaving_at_eos` gives what `generate` would: plain greedy decoding (no logits processor
        from the options), a model that fits the loop, and a batch whose positions come from the attention mask (not
        Qwen2-VL's 3-D positions, nor Gemma3's token types)."""
        plain = (options.beams == 1 and not options.sampling and options.repetition_penalty is None
                 and options.no_repeat_ngram_size is None and options.min_new_tokens is None)
        return plain and self.greedy_loop_fits and set(batch) <= _POSITIONAL_INPUTS

    def _generate_with_transformers(self, batch: dict, options: Sequence[DecodeOptions], tracker: _ReplyTracker,
                                    prompt_length: int) -> None:
        kwargs = options[0].generate_kwargs()
        kwargs["max_new_tokens"] = max(o.max_new_tokens for o in options)
        if options[0].beams == 1:  # beam search reorders its rows every step: its replies are followed once done
            kwargs["stopping_criteria"] = StoppingCriteriaList([tracker])
        if options[0].seed is not None:
            torch.manual_seed(options[0].seed)
        out = self.model.generate(**batch, **kwargs)  # [B, T + new]
        if options[0].beams > 1:
            for column in out[:, prompt_length:].T.tolist():
                tracker.step(column)


def compile_generation(model) -> None:
    """Generate with a static KV cache and a torch.compile'd forward (transformers does it by itself on GPUs only).
    Each new batch shape compiles first (seconds); identical outputs. On the CPU at the quickstart model's size:
    1.1-1.2x captions/s (benchmarks/generate_bench.py)."""
    from transformers import CompileConfig

    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = CompileConfig(fullgraph=False)
    model.generation_config.compile_config._compile_all_devices = True  # the documented switch for CPUs


_INERT_GENERATION_SETTINGS = frozenset({"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                                        "transformers_version", "_from_model_config", "max_length", "do_sample",
                                        "temperature", "top_p", "top_k", "use_cache", "output_attentions",
                                        "output_hidden_states"})
"""Generation-config settings that change nothing in greedy decoding with an explicit max_new_tokens."""

_POSITIONAL_INPUTS = frozenset({"input_ids", "attention_mask", "pixel_values"})
"""Forward inputs of a batch whose decoding steps need nothing but the next token, the mask and 1-D positions."""


def greedy_loop_fits(model, family) -> bool:
    """Whether `greedy_leaving_at_eos` decodes this model as `generate` does: no logits processor or static cache
    from its generation config, images as tokens in the text, logits computable for the last position only."""
    config = set(model.generation_config.to_diff_dict()) <= _INERT_GENERATION_SETTINGS
    named = named_inputs(model)
    # Every input the loop passes must be one the forward names: in **kwargs it could go unread.
    steps = {"position_ids", "logits_to_keep"} <= named and _cache_keyword(named) in named
    return config and steps and family.images_in_text


def _cache_keyword(named: frozenset[str]) -> str:
    """The forward's KV-cache input: `cache` in newer transformers releases, `past_key_values` before."""
    return "cache" if "cache" in named else "past_key_values"


def greedy_leaving_at_eos(model, inputs: dict, tracker: _ReplyTracker) -> None:
    """Greedy decoding in which each row leaves the batch, KV cache included, as soon as its reply is done, so later
    steps compute only the rows still going. The tokens are `generate`'s: same positions (from the attention mask),
    same cache, logits of the last position only; `tracker` ends each reply (EOS, stop string, its own limit)."""
    mask = inputs["attention_mask"]  # [B, T]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # [B, T]; left padding sits at 0, as in generate
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    rows = torch.arange(mask.shape[0])  # [b] the batch rows still going
    step_inputs = {**inputs, "position_ids": positions}
    cache_keyword = _cache_keyword(named_inputs(model))
    while True:
        logits = model(**step_inputs, **{cache_keyword: cache}, use_cache=True, logits_to_keep=1).logits  # [b, 1, V]
        tokens = logits[:, -1].argmax(-1)  # [b]
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


def eos_token_ids(model, processor) -> frozenset[int]:
    """The tokens that end a reply: the model's generation config's EOS, else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos = processor.tokenizer.eos_token_id if eos is None else eos
    return frozenset(eos if isinstance(eos, list) else [eos])


class _Reply:
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

    def add(self, token: int) -> str:
        """Take the next token (ignored once the reply is finished); returns the text that became final."""
        if self.finish_reason is not None:
            return ""
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

    def _release(self) -> str:
        text = self.text.lstrip()
        end = len(text.rstrip())  # trailing spaces wait: the reply is stripped if nothing follows them
        if self.finish_reason is None:
            end = min(end, len(text) - _unsettled_tail(text, self.stops))
        piece = text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece


class _ReplyTracker(StoppingCriteria):
    """Feeds each generated token to its row's `_Reply`; as a stopping criterion it ends rows as their replies end."""

    def __init__(self, replies: list[_Reply], on_text: TextCallback | None):
        self.replies = replies
        self.on_text = on_text

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor(self.step(input_ids[:, -1].tolist()), device=input_ids.device)

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


def prompt_record(image, prompt: str) -> Record:
    """A one-turn record asking `prompt` about `image` (a path, a PIL image, or None for text only)."""
    text = prompt if image is None or DATA_IMAGE_TOKEN in prompt else f"{DATA_IMAGE_TOKEN}\n{prompt}"
    images = [] if image is None else [image if isinstance(image, Image.Image) else Path(image)]
    return Record("prompt", images, [Turn("user", text), Turn("assistant", "")], "prompt")


def messages_record(messages: Sequence[dict], open_part: Callable[[dict], object] | None = None) -> Record:
    """A record from OpenAI-style chat messages, ready for the next assistant reply.

    Each message has a `role` (system, user, assistant) and a `content`: a string, or a list of parts
    `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}` or
    `{"type": "image", "image": PIL image or path}`. Parts are joined by newlines (where neither side has one
    already), each image where its part is, as the chat templates of the models VerboVision builds join them.
    `open_part` turns an image part into a record image (default: `image_of_part`).
    """
    open_part = open_part or image_of_part
    turns, images = [], []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise DataError(f"messages[{i}]: role must be system, user or assistant, not {role!r}")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise DataError(f"messages[{i}]: content must be a string or a list of parts")
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(part.get("text") or "")
            elif kind in ("image", "image_url"):
                images.append(open_part(part))
                texts.append(DATA_IMAGE_TOKEN)
            else:
                raise DataError(f"messages[{i}].content[{j}]: part type must be text, image_url or image, not {kind!r}")
        turns.append(Turn(role, join_parts(texts)))
    return Record("chat", images, [*turns, Turn("assistant", "")], "messages")


def image_of_part(part: dict):
    """The image of a content part: a PIL image, a local path, or a data: URI. Remote URLs are never fetched here."""
    if part["type"] == "image":
        image = part.get("image")
        return image if isinstance(image, Image.Image) else Path(image)
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str):
        raise DataError("image_url part without a url")
    if url.startswith("data:"):
        from .images import BytesImage

        return BytesImage("data: URI", decode_data_uri(url))
    if url.startswith(("http://", "https://")):
        raise DataError(f"{url}: remote images are not fetched; download the image and pass its path")
    return Path(url.removeprefix("file://"))


def decode_data_uri(url: str) -> bytes:
    """The bytes of a base64 `data:` URI (data:image/png;base64,...)."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise DataError("image data URI must look like data:image/png;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError("image data URI is not valid base64") from None
