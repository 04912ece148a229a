"""Inference: caption images, answer questions and chat, batched, with the decoding options of every `verbo` command.

Prompts are encoded by the same `Encoder` that training used (template and image-token expansion included), so a
model sees at inference exactly the layout it learned. Batches are left-padded; each row of a batch is followed while
it is generated (`_Reply`): it ends at its own EOS, stop string or token limit, and its text can be streamed. Greedy
decoding runs VerboVision's own loop, where an ended row leaves the batch with its KV cache; beams, sampling and
logits processors run transformers' `generate`, as does every reply under `--compile` (`compiled`)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import StoppingCriteriaList

from ..data.batching import Collator
from ..data.encoding import Encoded, Encoder
from ..data.images import load_image
from ..data.records import CAPTION_PROMPT, TOO_LONG, Record, RecordError
from ..families import family_of, position_limit
from ..model.store import inputs_for, load_model, model_metadata
from .compiled import WARM_UP_TOKENS, CompiledGeneration
from .greedy import POSITIONAL_INPUTS, Reply, ReplyTracker, eos_token_ids, greedy_leaving_at_eos, greedy_loop_fits
from .messages import messages_record, probe_record, prompt_record
from .options import BATCH_SIZE, DecodeOptions, Generation, TextCallback, decode_options


class VLM:
    """A loaded model + processor that captions, answers and chats, in batches."""

    def __init__(self, path: str | Path, device: str | None = None, quantize: str = "none", compiled: bool = False,
                 template: str | None = None, dtype: str | None = None):
        """`template` (chat, plain, caption, prefix) lays prompts out otherwise than the model was trained to (its
        verbovision.json), e.g. for a model with no chat template; default: the model's own. `dtype`: what the
        weights load in (auto, float32, bfloat16, float16; default auto: see `model.store.resolve_dtype`)."""
        model, processor = load_model(path, device=device, dtype=dtype, quantize=quantize)
        metadata = model_metadata(path)
        self._attach(str(path), model, processor, {**metadata, "template": template} if template else metadata,
                     CompiledGeneration() if compiled else None)

    @classmethod
    def from_loaded(cls, model, processor, template: str = "chat", name: str = "in-memory") -> VLM:
        """Wrap a model already in memory (e.g. one being trained) to generate with it."""
        vlm = cls.__new__(cls)
        vlm._attach(name, model, processor, {"template": template})
        return vlm

    def _attach(self, path: str, model, processor, metadata: dict, compiled: CompiledGeneration | None = None) -> None:
        self.path, self.model, self.processor, self.metadata = path, model, processor, metadata
        self.compiled = compiled
        """Under `--compile`: the shapes and settings of compiled generation (see `infer.compiled`); else None."""
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
        self.max_positions = position_limit(model.config.get_text_config())
        """Positions the language model takes at all (`families.position_limit`); None for rotary positions."""
        self.greedy_loop_fits = compiled is None and greedy_loop_fits(self.model, self.family)

    def caption(self, images: Sequence, prompt: str | None = None, options: DecodeOptions | None = None,
                batch_size: int = BATCH_SIZE, **decoding) -> list[str]:
        """Captions of the images, asked `prompt` (default: `caption_prompt`).

        Decoding is greedy unless `options` or keyword arguments named as `DecodeOptions`' fields say otherwise
        (`max_new_tokens=8, beams=3`; `top_p=0.9, temperature=0.7, seed=0`); the same holds for every method here.
        """
        if isinstance(images, (str, Path, bytes, Image.Image)) or getattr(images, "ndim", 4) < 4:
            # one image, whose characters, bytes or pixel rows would otherwise be taken for images
            raise TypeError(f"caption takes a list of images, not one {type(images).__name__}: caption([image])")
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

    def generate(self, items: Sequence[tuple], options: DecodeOptions | None = None, batch_size: int = BATCH_SIZE,
                 **decoding) -> list[str]:
        """Replies for (image or None, prompt) pairs; an image is a path, a PIL image, the bytes of an image file or a
        uint8 numpy array (`messages.record_image`)."""
        return self.generate_records([prompt_record(image, prompt) for image, prompt in items],
                                     decode_options(options, **decoding), batch_size)

    def generate_records(self, records: Sequence[Record], options: DecodeOptions | None = None,
                         batch_size: int = BATCH_SIZE) -> list[str]:
        """The next assistant reply of each record (its last reply, if present, is what gets predicted)."""
        return [g.text for g in self.generate_details(records, options, batch_size)]

    def generate_details(self, records: Sequence[Record],
                         options: DecodeOptions | Sequence[DecodeOptions] | None = None, batch_size: int = BATCH_SIZE,
                         on_text: TextCallback | None = None) -> list[Generation]:
        """Replies with token counts and finish reasons, `batch_size` records at a time.

        `options` is one for all records or one per record; records of a batch must share `batch_key()`.
        `on_text(i, piece)` receives reply i's text as it grows (at the end, for beam search).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: give an integer >= 1")
        options = options or DecodeOptions()
        per_record = [options] * len(records) if isinstance(options, DecodeOptions) else list(options)
        results: list[Generation] = []
        for start in range(0, len(records), batch_size):
            callback = None if on_text is None else (lambda row, piece, start=start: on_text(start + row, piece))
            stop = start + batch_size
            results.extend(self._generate_batch(records[start:stop], per_record[start:stop], callback, batch_size))
        return results

    def warm_up(self, batch_size: int, max_new_tokens: int) -> int:
        """Compile generation (`--compile`) for every row bucket of batches of up to `batch_size` replies, at the
        cache length of a one-image prompt and `max_new_tokens`, so that requests find their shapes compiled; returns
        how many shapes are compiled by then. The graph is the same for greedy decoding and (unseeded) sampling:
        greedy warms both."""
        probe = probe_record(self.caption_prompt)
        self.compiled.reserve(self.prompt_tokens(probe) + max_new_tokens)
        # Forced tokens (min_new_tokens): a probe that ended at once would leave the decoding step uncompiled.
        few = DecodeOptions(max_new_tokens=WARM_UP_TOKENS, min_new_tokens=WARM_UP_TOKENS)
        for rows in self.compiled.row_buckets(batch_size):
            self.generate_details([probe] * rows, few, batch_size)
        return len(self.compiled.shapes)

    def prompt_tokens(self, record: Record) -> int:
        """Length of a record's prompt in tokens; raises DataError if it cannot be encoded."""
        return len(self.encoder.encode(record, for_generation=True).input_ids)

    def check_room(self, record: Record, prompt_tokens: int, options: DecodeOptions) -> None:
        """Refuse a prompt whose reply of up to max_new_tokens would run past the positions of a model with learned
        ones (a RecordError saying what to shorten), as OpenAI's API refuses prompt + max_tokens over the context
        length; rotary positions have no such end."""
        if self.max_positions and prompt_tokens + options.max_new_tokens > self.max_positions:
            raise RecordError(record.source, record.id, TOO_LONG, f"the prompt is {prompt_tokens} tokens (images "
                              f"included): with max_new_tokens={options.max_new_tokens} more than the model's "
                              f"{self.max_positions} positions; shorten the prompt or lower max_new_tokens")

    @torch.no_grad()
    def _generate_batch(self, records: Sequence[Record], options: Sequence[DecodeOptions],
                        on_text: TextCallback | None, batch_size: int) -> list[Generation]:
        if len({o.batch_key() for o in options}) > 1:
            raise ValueError("records generated in one batch must share their decoding options' batch_key()")
        encoded = self.encode_prompts(records)
        for record, e, o in zip(records, encoded, options):
            self.check_room(record, len(e.input_ids), o)
        # Under --compile the batch is padded to its row bucket with copies of its last record; the tracker follows
        # the real rows only and finishes the others at once (see ReplyTracker).
        rows = self.compiled.rows(len(records), batch_size, options[0]) if self.compiled else len(records)
        padding = rows - len(records)
        batch = self.model_inputs([*records, *records[-1:] * padding], [*encoded, *encoded[-1:] * padding])
        tracker = ReplyTracker([self.new_reply(o, on_text is not None) for o in options], on_text)
        if self._leaves_at_eos(options[0], batch):
            greedy_leaving_at_eos(self.model, batch, tracker)
        else:
            self._generate_with_transformers(batch, options, tracker, max(len(e.input_ids) for e in encoded), rows)
        tracker.close()
        return [reply.generation(len(e.input_ids)) for reply, e in zip(tracker.replies, encoded)]

    def encode_prompts(self, records: Sequence[Record]) -> list[Encoded]:
        return [self.encoder.encode(record, for_generation=True) for record in records]

    def model_inputs(self, records: Sequence[Record], encoded: Sequence[Encoded]) -> dict:
        """The forward inputs of the records' prompts (`encoded`) on the model's device: ids and attention mask
        left-padded to a common length, the images processed (in the weights' dtype: `model.store.inputs_for`)."""
        batch = self.collator.pad(encoded)
        batch.pop("labels")
        images = [load_image(image) for record in records for image in record.images]
        if images:
            batch.update(self.encoder.pixel_inputs(images))
        return self.family.model_inputs(inputs_for(self.model, batch, self.device))

    def new_reply(self, options: DecodeOptions, streamed: bool) -> Reply:
        """A reply to follow as its tokens come (`streamed`: its text handed out as it grows)."""
        return Reply(self._decode, options, self.eos_ids, streamed)

    def _decode(self, ids: list[int]) -> str:
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True)

    def _leaves_at_eos(self, options: DecodeOptions, batch: dict) -> bool:
        """Whether `greedy_leaving_at_eos` gives what `generate` would: plain greedy decoding (no logits processor
        from the options), a model that fits the loop, and a batch whose positions come from the attention mask (not
        Qwen2-VL's 3-D positions, nor Gemma3's token types)."""
        return options.plain_greedy and self.greedy_loop_fits and set(batch) <= POSITIONAL_INPUTS

    def _generate_with_transformers(self, batch: dict, options: Sequence[DecodeOptions], tracker: ReplyTracker,
                                    prompt_length: int, rows: int) -> None:
        kwargs = options[0].generate_kwargs()
        kwargs["max_new_tokens"] = max(o.max_new_tokens for o in options)
        if options[0].beams == 1:  # beam search reorders its rows every step: its replies are followed once done
            kwargs["stopping_criteria"] = StoppingCriteriaList([tracker])
        if options[0].seed is not None:
            torch.manual_seed(options[0].seed)
        if self.compiled is not None:
            tokens = prompt_length + kwargs["max_new_tokens"]
            kwargs.update(self.compiled.generate_kwargs(self.model, rows, tokens, options[0]))
        with self.compiled.limits() if self.compiled else contextlib.nullcontext():
            out = self.model.generate(**batch, **kwargs)  # [B, T + new]
        if options[0].beams > 1:
            for column in out[:, prompt_length:].T.tolist():
                tracker.step(column)

