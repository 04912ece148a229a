"""Inference: caption images and answer questions, batched, with the decoding options of every `verbo` command.

Prompts are encoded by the same `Encoder` that training used (template and image-token expansion included), so a
model sees at inference exactly the layout it learned. Batches are left-padded; each sequence stops at its own EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .data import DATA_IMAGE_TOKEN, Collator, Encoder, Record, Turn, iter_batches, load_image
from .store import load_model, model_metadata

CAPTION_PROMPT = "Describe the image briefly."


@dataclass
class DecodeOptions:
    """How to pick tokens: greedy by default; beams or sampling on request."""

    max_new_tokens: int = 64
    """Longest reply in tokens."""
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

    @property
    def sampling(self) -> bool:
        return any(v is not None for v in (self.temperature, self.top_p, self.top_k))

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": self.beams, "do_sample": self.sampling}
        for key in ("temperature", "top_p", "top_k", "repetition_penalty"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs


class VLM:
    """A loaded model + processor that captions and answers, in batches."""

    def __init__(self, path: str | Path, device: str | None = None):
        self.path = str(path)
        self.model, self.processor = load_model(path, device=device)
        self.metadata = model_metadata(path)
        self.encoder = Encoder(self.processor, self.metadata.get("template", "chat"), max_length=1 << 30)
        self.collator = Collator(self.encoder, pad_left=True)
        self.device = next(self.model.parameters()).device

    def caption(self, images: Sequence, prompt: str = CAPTION_PROMPT, options: DecodeOptions | None = None,
                batch_size: int = 16) -> list[str]:
        return self.generate([(image, prompt) for image in images], options, batch_size)

    def ask(self, image, question: str, options: DecodeOptions | None = None) -> str:
        return self.generate([(image, question)], options)[0]

    def generate(self, items: Sequence[tuple], options: DecodeOptions | None = None, batch_size: int = 16) -> list[str]:
        """Replies for (image or None, prompt) pairs; images may be paths or PIL images."""
        return self.generate_records([prompt_record(image, prompt) for image, prompt in items], options, batch_size)

    def generate_records(self, records: Sequence[Record], options: DecodeOptions | None = None,
                         batch_size: int = 16) -> list[str]:
        """The next assistant reply of each record (its last reply, if present, is what gets predicted)."""
        options = options or DecodeOptions()
        replies: list[str] = []
        for chunk in iter_batches(list(records), batch_size):
            replies.extend(self._generate_batch(chunk, options))
        return replies

    @torch.no_grad()
    def _generate_batch(self, records: Sequence[Record], options: DecodeOptions) -> list[str]:
        encoded = [self.encoder.encode(record, for_generation=True) for record in records]
        batch = self.collator.pad(encoded)
        batch.pop("labels")
        images = [load_image(image) for record in records for image in record.images]
        if images:
            batch["pixel_values"] = self.encoder.pixel_values(images)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if options.seed is not None:
            torch.manual_seed(options.seed)
        out = self.model.generate(**batch, **options.generate_kwargs())  # [B, T + new]
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def prompt_record(image, prompt: str) -> Record:
    """A one-turn record asking `prompt` about `image` (a path, a PIL image, or None for text only)."""
    text = prompt if image is None or DATA_IMAGE_TOKEN in prompt else f"{DATA_IMAGE_TOKEN}\n{prompt}"
    images = [] if image is None else [image if isinstance(image, Image.Image) else Path(image)]
    return Record("prompt", images, [Turn("user", text), Turn("assistant", "")], "prompt")
