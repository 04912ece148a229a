"""A tiny random Mistral3 (Pixtral vision tower) checkpoint, built offline, as the other tiny_families* modules build
theirs: `make_tiny_mistral3(out, texts)` saves a random float32 model and its real processor class to `out`.

Quirks worth knowing (transformers 5.x):
- `PixtralProcessor`, the processor of every mistral3 checkpoint, is declared `@requires(backends=("torchvision",
  "torch"))`: it cannot be built, nor a checkpoint of the family loaded whole, where torchvision is missing. The
  builder (and the family matrix's row) runs only where torchvision is installed.
- The processor replaces each `[IMG]` with a grid of `[IMG]` tokens, one row per `patch_size * spatial_merge_size`
  pixels, each row ending in `[IMG_BREAK]` and the last in `[IMG_END]`; the image processor returns `pixel_values`
  (padded to the batch's largest image) and `image_sizes`, both named by the forward.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralImageProcessor,
    PixtralProcessor,
    PixtralVisionConfig,
)

from .helpers import TINY_LM
from .tiny_families import save_checkpoint
from .tiny_families_llava_like import family_tokenizer

__all__ = ["BUILDERS", "make_tiny_mistral3"]

# A stand-in for mistralai/Mistral-Small-3.1-24B-Instruct-2503's template (not available offline): its [INST] turns with
# images as [IMG] before the text, without the default system prompt (date, knowledge cut-off) the Hub one writes.
MISTRAL3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}[INST]"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}[IMG]{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}[/INST]"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}{{- part['text'] }}{%- endfor %}{%- endif %}{{- eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)


def make_tiny_mistral3(out: Path, texts: list[str]) -> Path:
    """Mistral3ForConditionalGeneration: a 2-layer Pixtral tower (8-pixel patches, 2x2 merged), a Mistral LM."""
    specials = ["<s>", "</s>", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"]
    tokenizer = family_tokenizer(list(texts) + ["[INST] [/INST]"], "[IMG]", specials, bos="<s>", eos="</s>")
    vision = PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=64, patch_size=8)
    config = Mistral3Config(vision_config=vision, text_config=MistralConfig(**TINY_LM, vocab_size=len(tokenizer)),
                            image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2,
                            vision_feature_layer=-1)
    torch.manual_seed(0)
    model = Mistral3ForConditionalGeneration(config)
    # The torchvision class (PixtralProcessor needs torchvision anyway): transformers 5.17 has no other.
    image_processor = PixtralImageProcessor(size={"longest_edge": 64}, patch_size=8)
    processor = PixtralProcessor(image_processor, tokenizer, patch_size=8, spatial_merge_size=2,
                                 chat_template=MISTRAL3_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                                   pad_token_id=tokenizer.pad_token_id))


BUILDERS = {"mistral3": make_tiny_mistral3}
