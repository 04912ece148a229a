"""Multimodal records: read them, load their images, encode them for a VLM, and batch them.

One record model for every format: a record has an id, zero or more images, and conversation turns whose text
marks each image's position with `<image>`. Encoding renders the turns with the model's chat template (or a plain
template for caption pretraining), expands every `<image>` into the exact number of placeholder tokens the model's
processor uses, and masks everything but the assistant replies in the labels.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .errors import ConfigError, DataError
from .families import IMAGE_TOKEN_FAMILY, Family
from .tokenizer import flattens_parts, with_image_parts

DATA_IMAGE_TOKEN = "<image>"
"""How image positions are written in data files (LLaVA convention), whatever the model's own image token is."""

CAPTION_PROMPT = "Describe the image briefly."
"""The user turn of caption records (rows without a question), and what `caption` asks a model whose metadata names
no trained prompt."""


@dataclass
class Turn:
    role: str
    """user, assistant or system."""
    text: str
    """The turn's text; `<image>` marks where an image goes."""


@dataclass
class Record:
    id: str
    images: list
    """Image files, in-memory images, or images inside other files (see images.ImageSource)."""
    turns: list[Turn]
    source: str
    """File the record came from, for error messages."""
    references: list[str] = field(default_factory=list)
    """Reference answers/captions for evaluation; by default the last assistant reply."""

    @property
    def prompt_turns(self) -> list[Turn]:
        """The conversation up to (not including) the last assistant reply."""
        last = max(i for i, t in enumerate(self.turns) if t.role == "assistant")
        return self.turns[:last]


# ---------------------------------------------------------------------------------------------------- reading

MISSING_IMAGE = "image not found"
UNREADABLE_IMAGE = "unreadable image"
TOO_SMALL = "image too small"
BAD_CONVERSATION = "bad conversation"
IMAGE_TOKENS = "image tokens != images"
TOO_LONG = "too long"
EMPTY_ANSWER = "empty answer"
NOT_UTF8 = "non-UTF-8"
INVALID_JSON = "invalid JSON"
"""The kinds of record problems above: checks and training count them by these names."""


def is_question(prompt: str) -> bool:
    """A user turn that asks a question (has a question mark), whose reply is an answer rather than a caption."""
    return "?" in prompt or "\uff1f" in prompt  # ASCII or full-width (Chinese/Japanese) question mark


class RecordError(DataError):
    """One record cannot be used (the rest of its file can); `kind` is one of the problem kinds above."""

    def __init__(self, source: str | Path, record_id: str, kind: str, detail: str):
        super().__init__(f"{source}: record {record_id!r}: {detail}")
        self.record_id = record_id
        self.kind = kind


def read_records(path: str | Path, format: str | None = None, skips: SkipLog | None = None,
                 options=None) -> list[Record]:
    """Read a data file or folder in any supported format (detected unless given; see readers.py).

    A bad record raises its `RecordError`, or, when `skips` is given, is counted there and left out.
    """
    from .readers import ReadOptions, iter_records

    options = options or ReadOptions()
    if format:
        options = dataclasses.replace(options, format=format)
    return list(iter_records(path, options, skips))


def source_path(source: Source, data_root: Path) -> Path:
    """A recipe source's file or folder: relative paths start at data_root; a streamed dataset that is not there is a
    hub id."""
    path = Path(source.path) if Path(source.path).is_absolute() else Path(data_root) / source.path
    return Path(source.path) if source.format == "hf-stream" and not path.exists() else path


def source_options(source: Source, data_root: Path):
    """How to read a recipe source (readers.ReadOptions): what the `verbo data` commands' reading flags say, from the
    source's keys; a relative image_root starts at data_root, like the source's path. Image files are checked to exist
    as records are indexed, so a source whose images are elsewhere fails before the first step."""
    from .readers import Columns, ReadOptions

    root = Path(data_root) / source.image_root if source.image_root else None  # an absolute image_root stays as is
    columns = Columns(source.image_column, source.text_column, source.question_column)
    prompt = {"prompt": source.prompt} if source.prompt is not None else {}
    return ReadOptions(format=source.format, columns=columns, image_root=root, split=source.split,
                       check_image_files=True, **prompt)


def source_records(source: Source, data_root: Path, skips: SkipLog | None = None) -> Iterator[Record]:
    """The records of a recipe source; with `skips`, bad records are counted there and left out."""
    from .readers import iter_records

    return iter_records(source_path(source, data_root), source_options(source, data_root), skips)


def load_image(path, min_side: int | None = None) -> Image.Image:
    """Open an image (file, in-memory, shard member or bytes) as RGB; a clear error names the file when it cannot.
    `min_side`: JPEGs may be decoded at a reduced scale that keeps both sides at least this long (see images.py)."""
    from .images import open_image

    return open_image(path, min_side=min_side)


def load_images(items: Sequence, paths_of: Callable[[object], Sequence], read: Callable = load_image
                ) -> tuple[list, list[list], list[tuple[object, DataError]]]:
    """The items whose images (`paths_of(item)`) all `read`, each one's images in order, and (item, error) for the
    others: an unreadable image skips its item (its record, question...), not the batch it is in."""
    kept, images, failed = [], [], []
    for item in items:
        try:
            images.append([read(p) for p in paths_of(item)])  # all or none of its images
            kept.append(item)
        except DataError as e:
            failed.append((item, e))
    return kept, images, failed


# ---------------------------------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    record_id: str
    input_ids: list[int]
    labels: list[int]
    images: list
    segments: list[int] | None = None
    """For a packed row (`pack_examples`): the lengths of the samples it holds, in order."""


TRUNCATION = ("drop", "truncate")
"""What training does with a record longer than max_length: skip and count it, or cut its text after the images."""

TEMPLATES = ("chat", "plain", "caption", "prefix")
"""How `Encoder` lays out a conversation: the model's chat template, or one of VerboVision's layouts."""


TOKEN_TYPE_INPUTS = ("mm_token_type_ids", "moe_mm_token_type_ids", "token_type_ids")
"""Token-type inputs a processor may give beside an image's tokens (`ImageTokens.token_types`)."""


class ImageTokens:
    """The tokens standing for one image in a model's text: the processor's own expansion of its image token.

    Asked of the processor once per image size (once in all when the count does not depend on the size, as for
    Llava), so the text always holds exactly the tokens the model's features will fill, in every family: Llava's
    repeated `<image>`, Idefics3's tiled `<row_1_col_1>...<global-img>`, Qwen2-VL's size-dependent `<|image_pad|>`s,
    BLIP-2's query tokens (which its processor writes in front of every text, whatever the text holds).
    """

    _PROBE_SIZES = ((40, 30), (640, 480), (30, 40), (64, 64))
    """(width, height): a small and a large landscape image (counts that follow the size, as Qwen2-VL's), a portrait
    and a square one (counts that follow the aspect ratio, as LLaVA-NeXT's anyres tiles and Idefics3's crops)."""

    def __init__(self, processor, family: Family = IMAGE_TOKEN_FAMILY):
        # Kosmos-2's processor marks where the features go in a mask of its own (image_embeds_position_mask), over
        # ordinary vocabulary ids that nothing else tells from text.
        if getattr(processor, "image_token", None) is None:
            raise ConfigError(f"{family.name} models are not supported: {type(processor).__name__} has no image "
                              "token, and VerboVision places each image's features at its image tokens")
        self.processor = processor
        self.family = family
        # The placeholder a text holds: the processor's image token, unless it names another that it replaces with
        # its image tokens (Qianfan-OCR's `<image>`, expanded to `<img>` + `<IMG_CONTEXT>`s + `</img>`). BLIP-2's
        # processors keep a tokenizers AddedToken.
        self.token = str(getattr(processor, "image_placeholder_token", None) or processor.image_token)
        self.in_vocab = self.token in processor.tokenizer.get_vocab()
        """Whether the image placeholder is a token; Aya Vision's and Qianfan-OCR's `<image>` are only strings their
        processors replace."""
        self.token_id = (processor.tokenizer.convert_tokens_to_ids(self.token) if self.in_vocab
                         else getattr(processor, "image_token_id", None))
        if self.token_id is None:  # Ovis2's processor names none (its `<image>` is no token): the model's own
            self.token_id = family.image_token_id
        """The id standing for an image in an encoded text before expansion, and among the features' tokens after:
        the placeholder's own, or else the one the model fills (Aya Vision's `<|IMG_PATCH|>`, Ovis2's
        `<IMG_ATOM>`)."""
        if self.token_id is None:
            raise DataError(f"{type(processor).__name__}: its image token {self.token!r} is not a token of the "
                            "tokenizer, and neither the processor nor the model config names an image_token_id")
        self._by_size: dict[tuple[int, int], list[int]] = {}
        self.written = self._written()
        """What stands for one image in a text the processor is given: its image token, or the token between the
        image start and end tokens where the processor takes it only so (HunYuan-VL's, whose chat template writes
        them: they stay out of the expansion)."""
        self.written_first = self._writes_images_first()
        """Whether the processor writes the image tokens in front of the text itself (BLIP-2, InstructBLIP): an
        image token in the text would stay there, one token more than the model has features for."""
        self._around = self._laid_out_around()
        first, *others = (self._expand(size) for size in self._PROBE_SIZES)
        self.fixed = first if all(other == first for other in others) else None
        """The expansion when it is the same for every image size, else None (images' sizes are then read)."""
        self.token_types = self._token_types()
        """name -> marked token ids: the token-type inputs the model takes beside image tokens, each 1 on its marked
        ids and 0 elsewhere (Qwen2-VL's M-RoPE, Gemma 3's bidirectional attention within an image, ERNIE-4.5-VL's
        image experts); empty if none."""

    def ids(self, image) -> list[int]:
        if self.fixed is not None:
            return self.fixed
        from .images import image_size

        size = image_size(image)
        if size not in self._by_size:
            self._by_size[size] = self._expand(size)
        return self._by_size[size]

    def _expand(self, size: tuple[int, int]) -> list[int]:
        before, after = self._around
        ids = list(self._processed(size)["input_ids"][0])
        return ids[before : len(ids) - after]

    def _written(self) -> str:
        start, end = (getattr(self.processor, name, None) for name in ("image_start_token", "image_end_token"))
        if start is None or end is None:
            return self.token
        try:
            self.processor(text=[self.token], images=self.family.images_per_text([Image.new("RGB", (32, 32))]))
        except ValueError:  # HunYuan-VL's processor refuses an image token its start and end tokens do not wrap
            return f"{start}{self.token}{end}"
        return self.token

    def _laid_out_around(self) -> tuple[int, int]:
        """How many tokens the processor's own text layout writes before and after a lone image token: they belong
        to its prompt format, not to the image (PaliGemma's processor writes BOS after the images and a newline
        after the text; the `prefix` template writes them), as do the image start and end tokens around it where
        the processor takes it only so (`written`)."""
        blank = Image.new("RGB", self._PROBE_SIZES[0])
        # With the processor's merged settings, as its own __call__ passes them (GOT-OCR2's layout reads `format`)
        settings = self.processor._merge_kwargs(self.processor.valid_processor_kwargs,
                                                tokenizer_init_kwargs=self.processor.tokenizer.init_kwargs)
        images = self.family.images_per_text([blank])
        laid_out = self.processor.prepare_inputs_layout(images=images, text=[self.written], **settings)[1][0]
        before, _, after = laid_out.partition(self.token)
        return tuple(len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
                     for text in (before, after))

    def _processed(self, size: tuple[int, int], text: str | None = None) -> dict:
        """The processor's outputs for one blank image of `size` and `text` (default: what the image is written as)."""
        text = ("" if self.written_first else self.written) if text is None else text
        # As tensors, which is how every processor is called for a model (Ovis2's expansion reads its image
        # processor's `grids` with .tolist()), then lists of ints
        out = self.processor(text=[text], images=self.family.images_per_text([Image.new("RGB", size)]),
                             add_special_tokens=False, return_tensors="pt")
        return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def _writes_images_first(self) -> bool:
        """Whether the processor writes image tokens in front of a text that holds its own, which then stays too
        (BLIP-2's); PaliGemma's writes them only where the text holds none, and expands the text's own instead."""
        size = self._PROBE_SIZES[0]
        try:
            without = self._processed(size, text="")["input_ids"][0].count(self.token_id)
        except ValueError:  # processors that expand the image token refuse an image whose token the text lacks
            return False
        return 0 < without < self._processed(size, text=self.written)["input_ids"][0].count(self.token_id)

    def _token_types(self) -> dict[str, frozenset[int]]:
        """The token types the processor gives beside an image, and which tokens each marks 1, asked of it: Qwen2-VL's
        `mm_token_type_ids` mark the image token (PaddleOCR-VL's processor returns them without listing them,
        Cosmos3-Edge's lists them without returning them); ERNIE-4.5-VL's `moe_mm_token_type_ids` also its image
        start and end tokens, which the probe writes around the image where the processor names them; Gemma 3's
        `token_type_ids` the soft tokens inside its `<start_of_image>` expansion. PaliGemma's token types are prefix
        (0) / suffix (1) instead, marking none."""
        start, end = (getattr(self.processor, name, None) for name in ("image_start_token", "image_end_token"))
        wrapped = f"{start}{self.written}{end}" if start and end and start not in self.written else None
        out = self._processed(self._PROBE_SIZES[0], text=None if self.written_first else wrapped)
        marked = {name: frozenset(i for i, t in zip(out["input_ids"][0], out[name][0]) if t == 1)
                  for name in TOKEN_TYPE_INPUTS if out.get(name) is not None}
        if "mm_token_type_ids" in getattr(self.processor, "model_input_names", ()):
            marked.setdefault("mm_token_type_ids", frozenset([self.token_id]))
        return {name: ids for name, ids in marked.items() if ids}


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
        tokens, offsets = self._tokenize(text, spans)
        start = self._text_start(text)
        ids = start + tokens
        labels = [-100] * len(start) + [
            tok if any(s <= a and b <= e for s, e in spans) and b > a else -100 for tok, (a, b) in zip(tokens, offsets)
        ]
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


# ---------------------------------------------------------------------------------------------------- datasets


@dataclass
class Source:
    """One data file of a stage, with its mixing weight."""

    path: str
    """Data file or folder in any supported format (LLaVA JSON/JSONL, COCO, CSV, imagefolder, webdataset, parquet)."""
    weight: float = 1.0
    """Fraction of the file's records drawn per epoch (2.0 = each record twice, 0.5 = a random half)."""
    format: str | None = None
    """Data format (llava, coco, pairs, imagefolder, webdataset, hf, hf-stream); null detects it from the path
    (hf-stream, a Hugging Face dataset streamed as it trains, is never detected: `path` may be a hub id)."""
    split: str | None = None
    """Split of a Hugging Face dataset (hf-stream); default train."""
    image_root: str | None = None
    """Folder relative image paths start from (relative to data_root); default: the data file's folder, and for COCO
    annotations a guess near the file (images/, the split folder its name mentions). `--image-root` of `verbo data`."""
    image_column: str | None = None
    """Column of flat rows (CSV/JSON/JSONL pairs, imagefolder metadata, parquet) holding the image; default: the
    first of the common names present (image, image_path, file_name, path...: readers.IMAGE_COLUMNS).
    `--image-column` of `verbo data`."""
    text_column: str | None = None
    """Column of flat rows holding the caption or answer; default: the first of the common names present (caption,
    text, answer...: readers.TEXT_COLUMNS). `--text-column` of `verbo data`."""
    question_column: str | None = None
    """Column of flat rows holding the question; default: question, instruction, prompt or query (a row without one
    is a caption record). `--question-column` of `verbo data`."""
    prompt: str | None = None
    """User turn of caption records (rows without a question); default: "Describe the image briefly."."""


class SkipLog:
    """Records skipped, counted by reason with the first few ids of each; nothing is dropped silently."""

    def __init__(self, keep: int = 5):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.keep = keep

    def add(self, reason: str, record_id: str) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.keep:
            examples.append(record_id)

    def merge(self, other: SkipLog) -> None:
        for reason, ids in other.examples.items():
            for rid in ids:
                self.add(reason, rid)
            self.counts[reason] += other.counts[reason] - len(ids)

    @classmethod
    def from_dict(cls, data: dict) -> SkipLog:
        log = cls()
        for reason, info in data.items():
            log.counts[reason] = info["count"]
            log.examples[reason] = list(info["examples"])
        return log

    def as_dict(self) -> dict:
        return {reason: {"count": n, "examples": self.examples[reason]} for reason, n in self.counts.items()}

    def __len__(self) -> int:
        return sum(self.counts.values())

    def describe(self, reasons: int = 3) -> str:
        """One line: how many were skipped, the commonest reasons with counts, and the first example of the first."""
        if not self.counts:
            return "nothing skipped: the data holds no records"
        top = self.counts.most_common(reasons)
        more = ", ..." if len(self.counts) > reasons else ""
        kinds = ", ".join(f"{reason} x{n}" for reason, n in top)
        return f"{len(self)} skipped: {kinds}{more}; e.g. {self.examples[top[0][0]][0]}"


SKIP_HINTS = {MISSING_IMAGE: "relative image paths start at the data file's folder (COCO: a guess near it); "
                             "if the images are elsewhere, say where with image_root (--image-root)"}
"""What to do about a kind of unusable record, where one fix usually serves them all."""


def require_usable(usable: int, skips: SkipLog, what: str, context: str | None = None) -> None:
    """Nothing trains, evaluates or converts on no data: zero usable records is an error saying why, e.g.
    `stage s: 0 usable training records in data.json (120 skipped: image not found x120; e.g. ...)`
    (`what`: "training records in data.json", `context`: "stage s")."""
    if usable:
        return
    top = skips.counts.most_common(1)
    hint = SKIP_HINTS.get(top[0][0]) if top else None
    prefix = f"{context}: " if context else ""
    raise DataError(f"{prefix}0 usable {what} ({skips.describe()})" + (f"; {hint}" if hint else ""))


def report_skips(usable: int, skips: SkipLog, what: str, context: str | None = None) -> None:
    """Print how many records were skipped and why, before anything runs (a warning when most of them were)."""
    if skips:
        warning = "warning: " if len(skips) > usable else ""
        prefix = f"{context}: " if context else ""
        print(f"{warning}{prefix}{usable} usable {what} ({skips.describe()})")


def skip_entry(record_id: str, error: DataError) -> tuple[str, str]:
    """How a record skipped for `error` is counted (`SkipLog.add`'s arguments): its reason, and the record with the
    error."""
    return skip_reason(error), f"{record_id}: {error}"


def skip_reason(error: DataError) -> str:
    """A short category for a data error (a problem kind when known), used to count skips by kind."""
    if isinstance(error, RecordError):
        return error.kind
    message = str(error)
    for kind in (MISSING_IMAGE, UNREADABLE_IMAGE):
        if kind in message:
            return kind
    return "invalid record"


def encode_sources(sources: Sequence[Source], encoder: Encoder, data_root: Path, skips: SkipLog,
                   what: str = "records", context: str | None = None, tally: list[dict] | None = None,
                   report: bool = True) -> list[tuple[list[Encoded], float]]:
    """Read and tokenize every source once, up front; records that cannot be encoded are skipped and logged.

    A source with no usable record is an error, and one with skipped records prints how many and why, before any
    step (`what`: "training records", `context`: "stage s"; see `require_usable`), if `report` (several processes
    read the same data: the main one prints). `tally` gets each source's `{source, usable, skipped}` counts."""
    encoded_sources = []
    for source in sources:
        encoded, source_skips = [], SkipLog()
        for record in source_records(source, data_root, source_skips):
            try:
                encoded.append(encoder.encode(record))
            except DataError as e:
                source_skips.add(*skip_entry(record.id, e))
        where = f"{what} in {source_path(source, data_root)}"
        require_usable(len(encoded), source_skips, where, context)
        if report:
            report_skips(len(encoded), source_skips, where, context)
        skips.merge(source_skips)
        encoded_sources.append((encoded, source.weight))
        if tally is not None:
            tally.append({"source": source.path, "usable": len(encoded), "skipped": len(source_skips)})
    return encoded_sources


def epoch_order(sources: list[tuple[list[Encoded], float]], seed: int, shuffle: bool = True) -> list[Encoded]:
    """One epoch's examples: each source contributes weight x its size, mixed and shuffled with the seed."""
    rng = random.Random(seed)
    order: list[Encoded] = []
    for examples, weight in sources:
        whole, part = divmod(weight * len(examples), len(examples) or 1)
        for _ in range(int(whole)):
            order.extend(examples)
        order.extend(rng.sample(examples, int(round(part))))
    if shuffle:
        rng.shuffle(order)
    return order


@dataclass
class Collated:
    """A batch of examples, and those left out of it."""

    batch: dict[str, torch.Tensor]
    """Model inputs and labels: input_ids [B, T], labels [B, T], pixel values or image features..."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(skip reason, "record id: why") of each example left out because an image of it could not be read."""


class Collator:
    """Pads a list of encoded examples into a batch and loads their images; unreadable images skip the example."""

    def __init__(self, encoder: Encoder, pad_left: bool = False, features=None, fast_decode: bool = False,
                 cache_pixels: bool = False):
        from .images import processor_side
        from .pixelcache import PixelCache

        self.encoder = encoder
        sized = encoder.image_tokens is not None and encoder.image_tokens.fixed is None
        self.min_side = processor_side(encoder.processor.image_processor) if fast_decode and not sized else None
        """With fast_decode, JPEGs are decoded at a reduced scale still at least the model's input size (not when
        the image's size sets its token count: a reduced decode would change it)."""
        self.pad_id = encoder.tokenizer.pad_token_id
        self.token_types = encoder.image_tokens.token_types if encoder.image_tokens else {}
        self.pad_left = pad_left
        self.features = features
        """A FeatureCache: batches then carry cached vision features instead of pixel values."""
        self.pixel_cache = PixelCache() if cache_pixels and features is None else None
        """With cache_pixels (training: every epoch sees the same images), each image file's processed pixels are
        kept in memory (see pixelcache.py); off by itself for processors that give more than pixel values."""

    def __call__(self, examples: Sequence[Encoded]) -> Collated:
        if self.features is not None:
            batch = self.pad(examples)
            paths = [p for e in examples for p in e.images]
            if paths:
                batch["image_features"] = self.features.get(paths)  # [n_images, n_patches, D_vision]
            return Collated(batch)
        if self.pixel_cache is not None:
            kept, rows, skipped = self._readable(examples, self._cached_pixels)
            # Images of different sizes: only the processor knows how it batches them.
            if all(row is not None for row in rows) and len({row.shape for row in rows}) <= 1:
                batch = self.pad(kept)
                if rows:
                    batch["pixel_values"] = torch.cat(rows)  # [n_images, C, H, W]
                return Collated(batch, skipped)
            self.pixel_cache = None  # the processor's inputs cannot be cached
        kept, images, skipped = self._readable(examples, lambda p: load_image(p, self.min_side))
        batch = self.pad(kept)
        if images:
            batch.update(self.encoder.pixel_inputs(images))
        return Collated(batch, skipped)

    @staticmethod
    def _readable(examples: Sequence[Encoded], read) -> tuple[list, list, list]:
        """The examples whose images all `read`, those images in order, and (skip reason, record) of the others."""
        kept, images, failed = load_images(examples, lambda example: example.images, read)
        skipped = [skip_entry(example.record_id, error) for example, error in failed]
        return kept, [image for row in images for image in row], skipped

    def _cached_pixels(self, path) -> torch.Tensor | None:
        """pixel_values [1, C, H, W] of one image from the pixel cache; None when the processor gives more."""
        return self.pixel_cache.get(path, lambda p: load_image(p, self.min_side), self.encoder.pixel_inputs)

    def pad(self, examples: Sequence[Encoded]) -> dict:
        width = max((len(e.input_ids) for e in examples), default=0)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)  # [B, T]
        labels = torch.full((len(examples), width), -100, dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(examples), width), dtype=torch.long)  # [B, T]
        for row, example in enumerate(examples):
            n = len(example.input_ids)
            cols = slice(width - n, width) if self.pad_left else slice(0, n)
            ids[row, cols] = torch.tensor(example.input_ids)
            labels[row, cols] = torch.tensor(example.labels)
            mask[row, cols] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if any(e.segments for e in examples):
            # Packed rows: positions restart at 0 for every sample, and without an attention mask transformers
            # reads those restarts as sample boundaries (block-diagonal causal attention). The padding is a sample
            # of its own, attended by nothing else.
            del batch["attention_mask"]
            batch["position_ids"] = torch.stack([segment_positions((e.segments or [len(e.input_ids)])
                                                                   + [width - len(e.input_ids)]) for e in examples])
        if self.encoder.family.prefix_lm:  # PaliGemma: prompt (0) attended both ways, replies (1) causally
            batch["token_type_ids"] = (labels != -100).long().cummax(dim=1).values  # [B, T]
        for name, marked in self.token_types.items():  # image tokens (1), text (0): Qwen2-VL's rotary positions...
            batch[name] = torch.isin(ids, torch.tensor(sorted(marked))).long()  # [B, T]
        return batch


def segment_positions(lengths: Sequence[int]) -> torch.Tensor:
    """Position ids restarting at 0 for each segment: [3, 2] -> [0, 1, 2, 0, 1]."""
    return torch.cat([torch.arange(n) for n in lengths])  # [sum(lengths)]


def pack_examples(examples: Sequence[Encoded], budget: int) -> list[Encoded]:
    """Consecutive examples joined into rows of at most `budget` tokens (a longer example gets a row alone).

    Each sample's first label is masked: unpacked, position 0 is never predicted; packed, the previous sample's last
    token would otherwise be trained to predict it.
    """
    rows, current = [], []
    for example in examples:
        if current and sum(len(e.input_ids) for e in current) + len(example.input_ids) > budget:
            rows.append(_join(current))
            current = []
        current.append(example)
    if current:
        rows.append(_join(current))
    return rows


def _join(examples: list[Encoded]) -> Encoded:
    return Encoded("+".join(e.record_id for e in examples), [t for e in examples for t in e.input_ids],
                   [label for e in examples for label in [-100, *e.labels[1:]]], [p for e in examples for p in e.images],
                   [len(e.input_ids) for e in examples])


def length_grouped(examples: Sequence[Encoded], batch_size: int, seed: int, window: int = 64) -> list[Encoded]:
    """Examples reordered so that each batch holds similar lengths: within windows of `window` batches, sorted by
    length; then the batches shuffled, so the order of lengths is random (as in transformers' LengthGroupedSampler)."""
    span = batch_size * window
    ordered = [e for start in range(0, len(examples), span)
               for e in sorted(examples[start : start + span], key=lambda e: len(e.input_ids), reverse=True)]
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(seed).shuffle(batches)
    return [e for batch in batches for e in batch]


def iter_batches(examples: Sequence[Encoded], batch_size: int) -> Iterator[list[Encoded]]:
    for start in range(0, len(examples), batch_size):
        yield list(examples[start : start + batch_size])
