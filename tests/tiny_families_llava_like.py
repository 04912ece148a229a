"""Tiny random checkpoints of the LLaVA-like families (a vision tower, a projector, a language model, image tokens in
the text), built offline: LLaVA-NeXT, LLaVA-OneVision, Aya Vision, InternVL. Same contract as tests/tiny_families.py:
`make_tiny_<family>(out, texts)` saves a random float32 model and its real processor class to `out`, laid out like the
family's Hub checkpoints, with the family's chat template.

Mistral3 (Pixtral vision tower) has no builder: `PixtralProcessor` (the processor of every mistral3 checkpoint) needs
torchvision in transformers 5.25 (its module imports the torchvision image processor at import time, and the class is
declared `@requires(backends=("torchvision", "torch"))`), so no working processor exists without torchvision.

Quirks worth knowing (transformers 5.x):
- LLaVA-NeXT ("anyres"): the image processor returns `pixel_values` (B, 1 + tiles, 3, 32, 32) (the resized whole image,
  then the tiles of the best-fitting `image_grid_pinpoints` resolution, padded to the batch's most tiles) and
  `image_sizes` (B, 2); the model takes both. The processor replaces each `<image>` with base features (patches + CLS,
  minus 1 for the "default" strategy) + the unpadded tile grid + one newline per grid row: here 36 tokens for the
  square 64x64 images, a different count for other aspect ratios. The processor's class default `do_pad=True` matches
  the image processor's own default, so calling the image processor alone gives the same pixels.
- LLaVA-OneVision: as LLaVA-NeXT, with `num_image_tokens` (a processor setting, 16 here) instead of the patch size,
  SigLIP (no CLS, strategy "full"), and `vision_aspect_ratio="anyres_max_9"` capping the grid. The image processor
  also returns `batch_num_images` (named by the forward): a text with several images gets `num_image_tokens + 1`
  tokens per image (no anyres) instead, and images given as a flat list are each taken as a single-image text.
  `LlavaOnevisionProcessor` holds a video processor (torchvision): without torchvision the builder writes the files
  save_pretrained would write, as `make_tiny_qwen2_vl` does.
- Aya Vision: `<image>` in the text is a placeholder string, not a token; the processor replaces it with
  `<|START_OF_IMG|>` + per tile `TILE_i` + 4 `<|IMG_PATCH|>` (the token the model fills, `config.image_token_id`),
  then `TILE_GLOBAL` + 4 `<|IMG_PATCH|>` + `<|END_OF_IMG|>`. Tiles come from `crop_to_patches` (GotOcr2 image
  processor, up to 4 tiles of 32x32 + a thumbnail: 64x64 -> 2x2 + 1 = 20 patch tokens). The image processor returns
  `pixel_values` (total tiles, 3, 32, 32) and `num_patches` (tiles per image): the forward does not name
  `num_patches`, the processor declares it in `unused_input_names`. The tokenizer adds `<BOS_TOKEN>` and the chat
  template writes it too (as Cohere's do): a rendered prompt passed to the processor starts with two BOS unless
  `add_special_tokens=False`.
- InternVL: the processor replaces `<IMG_CONTEXT>` (the tokenizer's `context_image_token`) with `<img>` +
  `image_seq_length` (4) x `<IMG_CONTEXT>` per tile + `</img>`; tiles as for Aya Vision (64x64 -> 5 tiles, 20
  tokens). The processor pops `num_patches` itself and returns only `pixel_values` (total tiles, 3, 32, 32). Tiling is
  a processor default (`InternVLProcessor.images_kwargs = {"crop_to_patches": True}`); the image processor's own
  default is off (as on OpenGVLab/InternVL3-*-hf), so the image processor called alone returns one tile per image.
  `InternVLProcessor` holds a video processor: saved as for LLaVA-OneVision.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    AyaVisionProcessor,
    CLIPVisionConfig,
    Cohere2Config,
    GenerationConfig,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.utils import is_torchvision_available

from verbovision.data.tokenizer import train_bpe_tokenizer

from .tiny_families import TINY_LM, TINY_VISION, save_checkpoint, save_processor_files, special_ids

__all__ = ["BUILDERS", "make_tiny_aya_vision", "make_tiny_internvl", "make_tiny_llava_next",
           "make_tiny_llava_onevision", "plain_processor"]

TILE = 32
"""Vision input side: every family here sees 32x32 images or tiles, in 8x8 patches."""
GRID_PINPOINTS = [[TILE, TILE], [TILE, 2 * TILE], [2 * TILE, TILE]]
"""anyres resolutions (height, width): a square image fits 1x1 tile, a wide or tall one 1x2 or 2x1."""
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])

# llava-hf/llava-v1.6-mistral-7b-hf's chat_template.json (its current revision, which ends a reply with '</s> ';
# the first one wrote a literal '<\\s> '). There is no generation prompt: a user turn ends with ' [/INST]'.
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# llava-hf/llava-onevision-qwen2-*-ov-hf's chat template, as transformers'
# models/llava_onevision/convert_llava_onevision_weights_to_hf.py writes it.
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# CohereForAI/aya-vision-8b's chat_template.json (as copied to mlx-community/aya-vision-32b-4bit): a fixed system
# preamble, then each turn; only its content-as-list path is kept (the Hub one also reads a legacy `message` key).
AYA_VISION_SYSTEM = (
    "You are Aya Vision, a brilliant, sophisticated, AI-assistant chatbot trained to assist human users by providing "
    "thorough responses. You are a large vision language model built by the Cohere For AI. You are capable of "
    "interpreting images, including describing them, answering questions about their contents, extracting textual "
    "information, and analyzing visual context."
)
AYA_VISION_TEMPLATE = (
    "{{ bos_token }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>" + AYA_VISION_SYSTEM + "<|END_OF_TURN_TOKEN|>\n"
    "{%- for message in messages -%}\n"
    "<|START_OF_TURN_TOKEN|>{{ message.role | replace(\"user\", \"<|USER_TOKEN|>\") "
    "| replace(\"assistant\", \"<|CHATBOT_TOKEN|><|START_RESPONSE|>\") | replace(\"system\", \"<|SYSTEM_TOKEN|>\") }}\n"
    "{%- if message.content is string -%}\n{{ message.content }}\n"
    "{%- else -%}\n"
    "{%- for item in message.content | selectattr('type', 'equalto', 'image') -%}\n<image>\n{%- endfor -%}\n"
    "{%- for item in message.content | selectattr('type', 'equalto', 'text') -%}\n{{ item.text }}\n{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{%- if message.role == 'assistant' -%}\n<|END_RESPONSE|>\n{%- endif -%}\n"
    "<|END_OF_TURN_TOKEN|>\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>\n{%- endif -%}\n"
)
AYA_VISION_TOKENS = ["<BOS_TOKEN>", "<PAD>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
                     "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>",
                     "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_LINE_BREAK|>", "TILE", "TILE_GLOBAL"]

# OpenGVLab/InternVL3-*-hf's chat template, as transformers' models/internvl/convert_internvl_weights_to_hf.py
# writes it.
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
INTERNVL_IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


def family_tokenizer(texts: list[str], image_token: str, specials: list[str], bos: str | None = None,
               eos: str | None = None, pad: str | None = None, named: dict | None = None):
    """A byte-level BPE (verbovision's, with ChatML tokens and `image_token`) plus the family's special tokens. With
    `bos`, every text starts with it, as the family's own tokenizer (Llama/Mistral, Cohere) does; `named` special
    tokens become tokenizer attributes (`tokenizer.<name>`, `tokenizer.<name>_id`)."""
    tokenizer = train_bpe_tokenizer(list(texts), image_token, vocab_size=300)
    tokenizer.add_tokens(specials, special_tokens=True)
    if named:
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                            eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
                                            extra_special_tokens={"image_token": image_token, **named})
    if eos:
        tokenizer.eos_token = eos
    if pad:
        tokenizer.pad_token = pad
    if bos:
        tokenizer.bos_token = bos
        tokenizer.add_bos_token = True  # rebuilds the post-processor: bos + text
    tokenizer.chat_template = None  # the processor carries the template, as on the Hub
    return tokenizer


def save_with_video_processor(out: Path, model, generation: GenerationConfig, processor_class: str,
                               image_processor, tokenizer, chat_template: str, settings: dict, video: dict) -> Path:
    """Save a processor that holds a video processor: built and saved whole where torchvision is installed, else
    written file by file (`save_processor_files`)."""
    if not is_torchvision_available():
        out = Path(out)
        model.generation_config = generation
        model.save_pretrained(out)
        save_processor_files(out, processor_class, image_processor, tokenizer, chat_template, video, **settings)
        return out
    import transformers

    video = dict(video)
    video_processor = getattr(transformers, video.pop("video_processor_type"))(**video)
    # by keyword: the classes order their processors differently (LLaVA-NeXT-Video's video processor comes first)
    processor = getattr(transformers, processor_class)(image_processor=image_processor, tokenizer=tokenizer,
                                                       video_processor=video_processor, chat_template=chat_template,
                                                       **settings)
    return save_checkpoint(out, model, processor, generation)


# ------------------------------------------------------------------------------------------------- LLaVA-NeXT


def make_tiny_llava_next(out: Path, texts: list[str]) -> Path:
    """LlavaNextForConditionalGeneration in llava-hf/llava-v1.6-mistral-7b-hf's layout: CLIP tower (penultimate
    layer, CLS dropped), Mistral LM, anyres tiling (36 image tokens for a square image)."""
    tokenizer = family_tokenizer(list(texts) + ["[INST] [/INST]"], "<image>", ["<s>", "</s>"], bos="<s>", eos="</s>")
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION),
        text_config=MistralConfig(**TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_grid_pinpoints=GRID_PINPOINTS,
        image_seq_length=(TILE // TINY_VISION["patch_size"]) ** 2)
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": TILE}, image_grid_pinpoints=GRID_PINPOINTS,
                                                 crop_size={"height": TILE, "width": TILE})
    processor = LlavaNextProcessor(image_processor, tokenizer, patch_size=TINY_VISION["patch_size"],
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_NEXT_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# -------------------------------------------------------------------------------------------- LLaVA-OneVision


def make_tiny_llava_onevision(out: Path, texts: list[str]) -> Path:
    """LlavaOnevisionForConditionalGeneration in llava-hf/llava-onevision-qwen2-*-ov-hf's layout: SigLIP tower (last
    layer, all patches), Qwen2 LM, anyres_max_9 tiling (36 image tokens for a square image)."""
    tokenizer = family_tokenizer(list(texts) + ["user assistant"], "<image>", ["<video>"], eos="<|im_end|>")
    num_image_tokens = (TILE // TINY_VISION["patch_size"]) ** 2
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**TINY_VISION, vision_use_head=False),
        text_config=Qwen2Config(**TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", image_grid_pinpoints=GRID_PINPOINTS)
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": TILE, "width": TILE},
                                                      image_grid_pinpoints=GRID_PINPOINTS)
    settings = dict(num_image_tokens=num_image_tokens, vision_feature_select_strategy="full",
                    vision_aspect_ratio="anyres_max_9", image_token="<image>", video_token="<video>")
    video = {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": TILE, "width": TILE}}
    generation = GenerationConfig(**special_ids(tokenizer))
    return save_with_video_processor(out, model, generation, "LlavaOnevisionProcessor", image_processor, tokenizer,
                                      LLAVA_ONEVISION_TEMPLATE, settings, video)


# ------------------------------------------------------------------------------------------------- Aya Vision


def make_tiny_aya_vision(out: Path, texts: list[str]) -> Path:
    """AyaVisionForConditionalGeneration in CohereForAI/aya-vision-8b's layout: SigLIP tower, pixel-shuffle projector
    (downsample 2), Cohere2 LM; images tiled (4 patch tokens per 32x32 tile, up to 4 tiles + a thumbnail)."""
    tokenizer = family_tokenizer(list(texts) + [AYA_VISION_SYSTEM], "<|IMG_PATCH|>", AYA_VISION_TOKENS, bos="<BOS_TOKEN>",
                           eos="<|END_OF_TURN_TOKEN|>", pad="<PAD>")
    downsample = 2
    config = AyaVisionConfig(
        vision_config=SiglipVisionConfig(**TINY_VISION, vision_use_head=False),
        text_config=Cohere2Config(**TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"), downsample_factor=downsample,
        vision_feature_layer=-1, vision_feature_select_strategy="full")
    torch.manual_seed(0)
    model = AyaVisionForConditionalGeneration(config)
    image_processor = GotOcr2ImageProcessorPil(size={"height": TILE, "width": TILE}, crop_to_patches=True,
                                               min_patches=1, max_patches=4, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = AyaVisionProcessor(image_processor, tokenizer, patch_size=TINY_VISION["patch_size"], img_size=TILE,
                                   downsample_factor=downsample, chat_template=AYA_VISION_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# --------------------------------------------------------------------------------------------------- InternVL


def make_tiny_internvl(out: Path, texts: list[str]) -> Path:
    """InternVLForConditionalGeneration in OpenGVLab/InternVL3-*-hf's layout: InternViT tower, pixel-shuffle
    projector (ratio 0.5), Qwen2 LM; images tiled by the processor (4 tokens per 32x32 tile)."""
    # InternVLProcessor reads its image tokens from tokenizer attributes, as the Hub tokenizer_config.json names them
    tokenizer = family_tokenizer(list(texts) + ["user assistant"], "<IMG_CONTEXT>", list(INTERNVL_IMAGE_TOKENS.values()),
                           eos="<|im_end|>", named=INTERNVL_IMAGE_TOKENS)
    patch = TINY_VISION["patch_size"]
    vision = InternVLVisionConfig(**{**TINY_VISION, "image_size": [TILE, TILE], "patch_size": [patch, patch]})
    config = InternVLConfig(vision_config=vision,
                            text_config=Qwen2Config(**TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer)),
                            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
                            image_seq_length=(TILE // patch) ** 2 // 4)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config)
    image_processor = GotOcr2ImageProcessorPil(size={"height": TILE, "width": TILE}, max_patches=4, **IMAGENET)
    video = {"video_processor_type": "InternVLVideoProcessor", "size": {"height": TILE, "width": TILE}, **IMAGENET}
    return save_with_video_processor(out, model, GenerationConfig(**special_ids(tokenizer)), "InternVLProcessor",
                                      image_processor, tokenizer, INTERNVL_TEMPLATE,
                                      {"image_seq_length": config.image_seq_length}, video)


BUILDERS = {
    "llava_next": make_tiny_llava_next,
    "llava_onevision": make_tiny_llava_onevision,
    "aya_vision": make_tiny_aya_vision,
    "internvl": make_tiny_internvl,
}
"""Builder per config.model_type."""


def _images_only_processor(path: Path):
    """The saved processor without its video processor, which needs torchvision: the class named in
    processor_config.json, built from the saved image processor, tokenizer, settings and chat template."""
    import transformers

    config = json.loads((path / "processor_config.json").read_text(encoding="utf-8"))
    cls = getattr(transformers, config["processor_class"])
    settings = {k: v for k, v in config.items() if k not in (*cls.get_attributes(), "processor_class")}
    if "feature_extractor" in cls.get_attributes():  # Gemma 4's audio one loads without torchvision
        settings["feature_extractor"] = AutoFeatureExtractor.from_pretrained(path)

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(path),
                      tokenizer=AutoTokenizer.from_pretrained(path), video_processor=None,
                      chat_template=(path / "chat_template.jinja").read_text(encoding="utf-8"), **settings)


def plain_processor(path: Path):
    """The saved processor as plain transformers loads it: whole, or without torchvision images only."""
    config = json.loads((path / "processor_config.json").read_text(encoding="utf-8"))
    if "video_processor" in config and not is_torchvision_available():
        return _images_only_processor(path)
    return AutoProcessor.from_pretrained(path)
