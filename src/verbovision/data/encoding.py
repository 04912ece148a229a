"""Records encoded for a VLM: rendered with a template, image tokens expanded, labels masked.

One record model for every format: a record has an id, zero or more images, and conversation turns whose text
marks each image's position with `<image>`. Encoding renders the turns with the model's chat template (or a plain
template for caption pretraining), expands every `<image>` into the exact number of placeholder tokens the model's
processor uses, and masks everything but the assistant replies in the labels."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..config.sources import TEMPLATES, TRUNCATION
from ..errors import DataError
from ..families import IMAGE_TOKEN_FAMILY, Family
from .image_tokens import TOKEN_TYPE_INPUTS, ImageTokens
from .records import (BAD_CONVERSATION, DATA_IMAGE_TOKEN, EMPTY_ANSWER, IMAGE_TOKENS, NOT_UNICODE, NOT_UTF8, TOO_LONG,
                      Record, RecordError, Turn, is_question)
from .tokenizer import flattens_parts, with_image_parts


@dataclass
class Encoded:
    record_id: str
    input_ids: list[int]
    labels: list[int]
    images: list
    segments: list[int] | None = None
    """For a packed row (`pack_examples`): the lengths of the samples it holds, in order."""


CHAT_TEMPLATE_NAME = "chat"
"""The name under which a plain- or caption-template model's processor keeps the model's own chat template; its
default template renders the layout the model was trained on (`Encoder.layout_template`)."""

LAYOUT_MARK = "{#- VerboVision layout"
"""How a layout template starts, so that it is never taken for a model's own chat template."""

_LAYOUT_SUMMARY = {
    "plain": "each prompt turn on its line (its images first, one per line, then its text), each reply followed by "
             "the end token",
    "caption": "the images, then the reply alone",
}

_LAYOUT_JINJA = {
    "plain": r"""{%- set end = __END__ -%}
{%- set prompt = __PROMPT__ -%}
{{- __BOS__ -}}
{%- for message in messages -%}
{%- if message['role'] == 'assistant' -%}
{{- message['content'] + end -}}
{%- else -%}
{%- set images = message['content'].count(__IMAGE__) -%}
{%- set line = message['content'] -%}
{%- if images -%}
{%- set words = (line.replace(__IMAGE__, '') | trim) or prompt -%}
{%- set line = ([__IMAGE__] * images + ([words] if words else [])) | join('\n') -%}
{%- endif -%}
{%- if line -%}
{{- line + '\n' -}}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
""",
    "caption": r"""{%- set end = __END__ -%}
{{- __BOS__ -}}
{%- set total = namespace(images=0, reply=none) -%}
{%- for message in messages -%}
{%- if message['role'] == 'assistant' -%}
{%- set total.reply = message['content'] -%}
{%- else -%}
{%- set total.images = total.images + message['content'].count(__IMAGE__) -%}
{%- endif -%}
{%- endfor -%}
{{- __IMAGE__ * total.images -}}
{%- if not add_generation_prompt and total.reply is not none -%}
{{- total.reply + end -}}
{%- endif -%}
""",
}
"""`Encoder.render` of the plain and caption templates in Jinja, on string contents (typed parts are flattened first,
see `with_image_parts`); __NAME__ are the values `layout_template` writes in."""


def own_chat_template(templates: str | dict | None) -> str | None:
    """A model's own chat template among a processor's or tokenizer's templates (None when it has none): the one
    named `chat` beside a layout template, never a layout template itself."""
    if isinstance(templates, dict):
        templates = templates.get(CHAT_TEMPLATE_NAME) or templates.get("default")
    return None if not templates or templates.startswith(LAYOUT_MARK) else templates


def with_trained_template(processor, family: Family, metadata: dict):
    """A copy of the processor to save with a model trained in the template `metadata` names. For plain and caption
    its default chat template is the layout the model was trained on (with the trained prompt of `metadata`), and
    the model's own is kept under the name `chat` for later chat stages; for chat, the model's own is the default,
    and so for prefix: PaliGemma's processor lays out that text itself. Families whose images are not in the text
    (GIT, encoder-decoders, BLIP-2) keep their own: their texts start with tokens that their processors add, which a
    chat template cannot express."""
    current = getattr(processor, "chat_template", None)
    named = dict(current) if isinstance(current, dict) else {"default": current}
    own = own_chat_template(current)
    template = metadata.get("template", "chat")
    layout = (Encoder(processor, template, family=family, prompt=metadata.get("prompt"))
              if template in _LAYOUT_JINJA and family.images_in_text else None)
    if layout is None or layout.image_token is None:
        named.update({"default": own, CHAT_TEMPLATE_NAME: None})
    else:
        if own is None and (text_only := own_chat_template(processor.tokenizer.chat_template)):
            own = with_image_parts(text_only, layout.image_token)  # the processor's template takes typed parts
        named.update({"default": layout.layout_template(), CHAT_TEMPLATE_NAME: own})
    named = {name: template for name, template in named.items() if template}  # others (tool use...) stay
    saved = copy.copy(processor)
    saved.chat_template = named if set(named) - {"default"} else named.get("default")
    saved.tokenizer = copy.copy(processor.tokenizer)  # it saves its templates too, into the same files
    saved.tokenizer.chat_template = saved.chat_template or own_chat_template(processor.tokenizer.chat_template)
    return saved


class Encoder:
    """Turns records into token ids + labels with the model's processor; the same code serves training and inference.

    Text is rendered with one image token per image (or none, for families that take images outside the text),
    tokenized, labelled from the character spans of the replies, then each image token is expanded (`ImageTokens`).
    Where the processor writes the image tokens in front of the text itself (BLIP-2), the text holds none and the
    image's tokens come first, before the BOS, as that processor puts them.
    """

    def __init__(self, processor, template: str = "chat", max_length: int = 2048, truncation: str = "drop",
                 family: Family = IMAGE_TOKEN_FAMILY, prompt: str | None = None):
        if template not in TEMPLATES:
            raise DataError(f"template {template!r} unknown; use {', '.join(TEMPLATES)}")
        if truncation not in TRUNCATION:
            raise DataError(f"truncation {truncation!r} unknown; use {' or '.join(TRUNCATION)}")
        self.truncation = truncation
        self.processor = processor
        self.family = family
        self.tokenizer = processor.tokenizer
        self.image_tokens = ImageTokens(processor, family) if family.images_in_text else None
        in_text = self.image_tokens is not None and not self.image_tokens.written_first
        self.image_token = self.image_tokens.token if in_text else None
        """The image token of the rendered text (None where the text holds none)."""
        self.image_token_id = self.image_tokens.token_id if self.image_tokens else None
        self.processor_template = own_chat_template(getattr(processor, "chat_template", None))
        self.tokenizer_template = own_chat_template(self.tokenizer.chat_template)
        if template == "chat" and not (self.processor_template or self.tokenizer_template):
            if not family.own_layout:
                raise DataError(f"{family.name}: the model has no chat template; use template plain or caption (a "
                                "stage's `template:` in a recipe, --template for verbo caption, ask, eval, predict, "
                                "chat and serve)")
            template = family.own_layout
        self.template = template
        """The layout in use: `chat` becomes the family's own layout (PaliGemma's `prefix`) for a model without a
        chat template."""
        self.max_length = max_length
        self.end_token = self.tokenizer.eos_token or self.tokenizer.sep_token
        """Ends every reply in VerboVision's layouts (BERT-style tokenizers such as GIT's end with [SEP])."""
        added = (t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special)
        self.special_tokens = {self.tokenizer.eos_token, *self.tokenizer.all_special_tokens, *added} - {None, ""}
        """The tokenizer's special tokens: a reply holding none of them has no end (`_with_ended_replies`)."""
        self.prompt = prompt
        """plain and prefix: the text of a prompt turn that has images and no text (at inference, the prompt the model
        was trained on; None leaves such a turn without text)."""
        self.bos_token = self._added_bos() if not family.text_start and template != "prefix" else None
        """The BOS a text starts with unless it starts with it already: the tokenizer's, where it starts texts with
        one (Llama, Gemma, as the LM saw in pretraining); transformers' `apply_chat_template` adds it the same way.
        The prefix layout writes its BOS after the images instead."""
        self.prompts: Counter[str] = Counter()
        """The caption prompts of the image turns encoded for training (text beside the images that asks no
        question), for `trained_prompt`."""

    def _added_bos(self) -> str | None:
        bos = self.tokenizer.bos_token_id
        added = bos is not None and self.tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]
        return self.tokenizer.bos_token if added else None

    def _text_start(self, text: str) -> list[int]:
        """Token ids before a text's own: the family's start (GIT's [CLS], a decoder's start token), or the BOS."""
        if self.bos_token and not text.startswith(self.bos_token):
            return [self.tokenizer.bos_token_id]
        return list(self.family.text_start)

    @property
    def trained_prompt(self) -> str | None:
        """The caption prompt seen most often beside an image in the records encoded for training, in the data's
        language (None if none was); what `verbo caption` asks the trained model."""
        return self.prompts.most_common(1)[0][0] if self.prompts else None

    def _image_text(self, text: str) -> str:
        """A turn's text with `<image>` as the model's image token, or without it when images are not in the text."""
        if self.image_token:
            return text.replace(DATA_IMAGE_TOKEN, self.image_token)
        return text.replace(DATA_IMAGE_TOKEN, "").strip()

    def render(self, turns: Sequence[Turn], add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """The text of a conversation and the character spans of its assistant replies (what the loss sees)."""
        if self.template != "chat":
            return self._render_layout(turns, add_generation_prompt)
        messages = [{"role": t.role, "content": self._image_text(t.text)} for t in turns]
        spans = []
        for i, turn in enumerate(turns):
            if turn.role == "assistant":
                start = len(self._chat(messages[:i], add_generation_prompt=True))
                end = len(self._chat(messages[: i + 1]))
                spans.append((start, end))
        text = self._chat(messages, add_generation_prompt)
        return (text, spans) if add_generation_prompt else self._with_ended_replies(text, spans)

    def _with_ended_replies(self, text: str, spans: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
        """A training text whose every reply ends in a special token: templates that write none after a reply
        (llava-hf's; DeepSeek-VL's after the last one) get the EOS there, inside the reply's span, as LLaVA's own
        training appends `</s>`, so that the model learns to stop. Prompts for generation stay as the template
        writes them."""
        shift, ended = 0, []
        for start, end in spans:
            start, end = start + shift, end + shift
            reply = text[start:end]
            if not any(token in reply for token in self.special_tokens):
                cut = start + len(reply.rstrip())
                text = text[:cut] + self.end_token + text[cut:]
                end += len(self.end_token)
                shift += len(self.end_token)
            ended.append((start, end))
        return text, ended

    def _chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if not messages:
            return ""
        if self.processor_template:
            # A VLM processor's template takes typed content parts (llava-hf's renders images first, for example);
            # the ones VerboVision writes flatten them back into the LM's own template.
            parts = [{"role": m["role"], "content": self._parts(m["content"])} for m in messages]
            return self.processor.apply_chat_template(parts, chat_template=self.processor_template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        return self.tokenizer.apply_chat_template(messages, chat_template=self.tokenizer_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _parts(self, text: str) -> list[dict]:
        """A turn's text as typed content parts. A template VerboVision wrote (`with_image_parts`) joins them back as
        records join them; any other (llava-hf's, Aya Vision's...) writes its own separator after an image, so the
        newline that joins an image to its text in a record (LLaVA data, `messages_record`) is left out: the model
        sees the prompt plain transformers gives it."""
        glue = "" if flattens_parts(self.processor_template) else "\n"
        pieces = text.split(self.image_token) if self.image_token else [text]
        parts = []
        for i, piece in enumerate(pieces):
            if i:
                parts.append({"type": "image"})
                piece = piece.removeprefix(glue)
            if i < len(pieces) - 1:
                piece = piece.removesuffix(glue)
            if piece:
                parts.append({"type": "text", "text": piece})
        return parts

    def _render_layout(self, turns: Sequence[Turn], add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        """plain: each prompt turn on its line, then the reply; caption: the images, then the last reply alone;
        prefix: the images, BOS, the last prompt turn's text and a newline, then the last reply (PaliGemma's processor
        with `text=` that text and `suffix=` that reply). `layout_template` renders plain and caption in Jinja: change
        both together."""
        text, spans = "", []
        if self.template != "plain":
            prompts = [t.text for t in turns if t.role != "assistant"]
            text = (self.image_token or "") * sum(t.count(DATA_IMAGE_TOKEN) for t in prompts)
            if self.template == "prefix":
                words = prompts[-1].replace(DATA_IMAGE_TOKEN, "").strip() if prompts else ""
                text += (self.tokenizer.bos_token or "") + (words or self.prompt or "") + "\n"
            turns = [] if add_generation_prompt else [t for t in turns if t.role == "assistant"][-1:]
        for turn in turns:
            if turn.role == "assistant":
                reply = turn.text + self.end_token
                spans.append((len(text), len(text) + len(reply)))
                text += reply
            elif line := self._prompt_line(turn.text):
                text += line + "\n"
        return text, spans

    def _prompt_line(self, text: str) -> str:
        """plain: a prompt turn's line. A turn with images has them first, one per line, then its text (`prompt`
        when it has none), whatever their order in the data or the request: the model learns one layout."""
        images = text.count(DATA_IMAGE_TOKEN)
        if not images:
            return self._image_text(text)
        words = text.replace(DATA_IMAGE_TOKEN, "").strip() or self.prompt
        return "\n".join(([self.image_token] * images if self.image_token else []) + ([words] if words else []))

    def layout_template(self) -> str:
        """The plain or caption layout as a chat template (Jinja), for families whose images are in the text:
        `apply_chat_template` renders from a conversation (string contents, or typed parts as transformers writes
        them) what `render` does from its record, BOS included, so that plain transformers prompts the model exactly
        as it was trained. `prompt` is written into it."""
        if self.template not in _LAYOUT_JINJA or self.image_token is None:
            raise ValueError(f"{self.family.name}, template {self.template}: layout templates are for plain and "
                             "caption, with images in the text")
        values = {"BOS": self.bos_token or "", "IMAGE": self.image_token, "END": self.end_token,
                  "PROMPT": self.prompt or ""}
        body = _LAYOUT_JINJA[self.template]
        for name, value in values.items():
            body = body.replace(f"__{name}__", repr(value))  # a Python literal is a Jinja literal
        summary = f"{LAYOUT_MARK} {self.template}: {_LAYOUT_SUMMARY[self.template]} -#}}\n"
        return summary + with_image_parts(body, self.image_token)

    def encode(self, record: Record, for_generation: bool = False) -> Encoded:
        turns = record.prompt_turns if for_generation else record.turns
        text, spans = self.render(turns, add_generation_prompt=for_generation)
        if NOT_UNICODE.search(text):  # a prompt (a chat line, a request, an API call) the data checks never saw
            raise RecordError(record.source, record.id, NOT_UTF8, "text is not valid UTF-8 (a lone surrogate); send "
                              "UTF-8 text")
        tokens, offsets = self._tokenize(text, spans)
        start = self._text_start(text)
        ids = start + tokens
        labels = [-100] * len(start) + [
            tok if any(s <= a and b <= e for s, e in spans) and b > a else -100 for tok, (a, b) in zip(tokens, offsets)
        ]
        if for_generation and not ids:  # no token to start from: a forward over nothing fails deep in the model
            raise RecordError(record.source, record.id, BAD_CONVERSATION, "the prompt is empty; give text or an image")
        ids, labels = self._expand_images(record, ids, labels)
        if len(ids) > self.max_length:
            ids, labels = self._truncate(record, ids, labels)
        if not for_generation and all(label == -100 for label in labels):
            raise RecordError(record.source, record.id, EMPTY_ANSWER, "empty assistant reply, nothing to learn")
        if not for_generation:
            prompts = (t.text.replace(DATA_IMAGE_TOKEN, "").strip() for t in turns
                       if t.role == "user" and DATA_IMAGE_TOKEN in t.text)
            self.prompts.update(p for p in prompts if not is_question(p))
        return Encoded(record.id, ids, labels, record.images)

    def _tokenize(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of a rendered text and their character offsets. The prefix layout's prompt and reply are
        tokenized apart, as PaliGemma's processor tokenizes its text and suffix: no token spans the two."""
        cuts = [0] + [start for start, _ in spans if self.template == "prefix"] + [len(text)]
        tokens, offsets = [], []
        for a, b in zip(cuts, cuts[1:]):
            piece_tokens, piece_offsets = self._tokenize_piece(text[a:b])
            tokens += piece_tokens
            offsets += [(start + a, end + a) for start, end in piece_offsets]
        return tokens, offsets

    def _tokenize_piece(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of a text and their character spans in it; an image placeholder that is not a token becomes
        `image_token_id` (the text around it tokenized piece by piece, as the processor's expansion, which starts and
        ends with special tokens, cuts it)."""
        if self.image_tokens is None or self.image_tokens.in_vocab:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return enc["input_ids"], enc["offset_mapping"]
        ids, offsets, at = [], [], 0
        for i, piece in enumerate(text.split(self.image_token)):
            if i:
                ids.append(self.image_token_id)
                offsets.append((at, at + len(self.image_token)))
                at += len(self.image_token)
            enc = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            ids.extend(enc["input_ids"])
            offsets.extend((at + a, at + b) for a, b in enc["offset_mapping"])
            at += len(piece)
        return ids, offsets

    def _expand_images(self, record: Record, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        """Each image token replaced by the tokens of its image; families without image tokens in the text take one
        image, whose tokens (if any) come first."""
        if self.image_token is None:
            if len(record.images) != 1:
                raise RecordError(record.source, record.id, IMAGE_TOKENS,
                                  f"{self.family.name} takes exactly one image per text; the record has "
                                  f"{len(record.images)}")
            first = self.image_tokens.ids(record.images[0]) if self.image_tokens else []
            return first + ids, [-100] * len(first) + labels
        found = ids.count(self.image_token_id)
        if found != len(record.images):
            raise RecordError(record.source, record.id, IMAGE_TOKENS,
                              f"{found} image tokens in the text for {len(record.images)} images; "
                              "the text may contain the image token itself")
        images = iter(record.images)
        out_ids, out_labels = [], []
        for tok, label in zip(ids, labels):
            expansion = self.image_tokens.ids(next(images)) if tok == self.image_token_id else [tok]
            out_ids.extend(expansion)
            out_labels.extend([-100] * len(expansion) if tok == self.image_token_id else [label])
        return out_ids, out_labels

    def _truncate(self, record: Record, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        """Cut a too-long example to max_length, text only: image tokens are never cut (the model would then see
        features without their placeholders); when they reach past max_length the record is dropped instead."""
        last_image = max((i for i, t in enumerate(ids) if t == self.image_token_id), default=-1)
        too_long = f"{len(ids)} tokens exceed max_length {self.max_length}"
        if self.truncation == "drop":
            raise RecordError(record.source, record.id, TOO_LONG, f"{too_long} (truncation: drop)")
        if last_image >= self.max_length:
            raise RecordError(record.source, record.id, TOO_LONG,
                              f"{too_long} and its image tokens end at {last_image + 1}: cannot truncate text only")
        kept = labels[: self.max_length]
        if all(label == -100 for label in kept) and any(label != -100 for label in labels):
            raise RecordError(record.source, record.id, TOO_LONG, f"{too_long} and truncating leaves no reply to learn")
        return ids[: self.max_length], kept

    def pixel_inputs(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """The image processor's tensors for these images: pixel_values [n_images, 3, H, W] for most families ([tiles
        of all images, 3, H, W] for InternVL), plus e.g. Qwen2-VL's image_grid_thw or Idefics3's pixel_attention_mask.
        Where images are tokens in the text, the processor itself processes them, each image the only one of its
        text as `ImageTokens` expands it: image settings the processor applies over its image processor's own
        (InternVL's and Aya Vision's tiling) then shape the pixels as they shaped the tokens."""
        if self.image_tokens is None:
            return self.family.pixel_inputs(self.processor.image_processor(list(images), return_tensors="pt"))
        processed = self.processor(text=[self.image_tokens.written] * len(images),
                                   images=self.family.images_per_text(images), padding=True,
                                   return_tensors="pt")  # texts of different images differ in length
        # Everything but what the processor computed from the placeholder texts (their ids, masks, token types,
        # PaliGemma's labels): the image processor's tensors, including those its model_input_names leaves out
        # (DeepSeek-OCR-2's pixel_values_local, the tiles of a large image)
        text_side = {*self.tokenizer.model_input_names, *TOKEN_TYPE_INPUTS, "labels"}
        return self.family.pixel_inputs({k: v for k, v in processed.items() if k not in text_side})
