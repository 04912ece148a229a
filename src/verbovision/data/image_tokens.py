"""How many tokens stand for an image in a model's text, asked of its processor."""

from __future__ import annotations

import torch
from PIL import Image

from ..errors import ConfigError, DataError
from ..families import IMAGE_TOKEN_FAMILY, Family

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
