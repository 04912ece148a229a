"""Tiny random checkpoints of more LLaVA-derived families, built offline: VipLLaVA, LLaVA-NeXT-Video, Video-LLaVA,
Granite 4 Vision, Idefics2, Granite-Docling.
Same contract as tests/tiny_families.py: `make_tiny_<family>(out, texts)` saves a random float32 model and its real
processor class to `out`, laid out like the family's Hub checkpoints, with the family's chat template.

Quirks worth knowing (transformers 5.x):
- VipLLaVA: `LlavaProcessor` and a CLIP tower, as LLaVA-1.5; the projector concatenates several vision layers
  (`vision_feature_layers`, CLS dropped from each) behind a LayerNorm. Its Hub prompt is `###Human: <image>\n...
  ###Assistant:`.
- LLaVA-NeXT-Video: LLaVA-NeXT's anyres images (`LlavaNextImageProcessor`: `pixel_values` (B, 1 + tiles, 3, 32, 32) and
  `image_sizes`, 36 tokens for a square image here) plus videos; `LlavaNextVideoProcessor` holds a video processor
  (torchvision), so without torchvision the builder writes the files save_pretrained would write.
- Video-LLaVA: two CLIP towers of one config, `model.image_tower` and `model.video_tower`, one projector; the image
  processor (`VideoLlavaImageProcessor`, PIL only) resizes and crops to 32x32: 16 tokens per image (CLS dropped).
  `VideoLlavaProcessor` holds a video processor: saved as for LLaVA-NeXT-Video.
- Granite 4 Vision: LLaVA-NeXT's anyres tiling, but each tile's 4x4 patches become 2x2 tokens through window Q-Former
  projectors (`downsample_rate` "2/4"), and the image features are not one tensor: each layerwise projector (one per
  `deepstack_layer_map` vision depth) and each of the four spatial projectors (a 2x2 corner of every patch block)
  adds its output at the image tokens of its own LM layer; the image-token embeddings themselves are zeroed. Features
  for one LM layer overwrite each other, so the tiny LM has six layers for its six injection points. The Q-Former gets
  `vision hidden // 64` heads: the tiny tower has 64 channels. The image processor cuts the anyres grid into tiles
  of `crop_size` (class default 224), so crop_size must be the tile side. 10 image tokens for a square image here.
- Idefics2: images keep their aspect ratio (shortest edge 32, longest 64 here), padded to the batch's largest with
  `pixel_attention_mask`; a perceiver resampler reads the patches into `image_seq_len` latents (8 here), wrapped in
  `<fake_token_around_image>`. The processor finds `<image>` and the boundary token as tokenizer attributes
  (`image_token`, `image_boundary_token`) and adds `<end_of_utterance>` itself; the tokenizer adds `<s>`.
- Granite-Docling: Idefics3's prompt layout (per tile `<fake_token_around_image><row_R_col_C>` + `image_seq_len`
  `<image>`, a thumbnail after a split page), tiles from GotOcr2-style cropping (64x64 here, no thumbnail for one
  tile). The image processor also returns `rows` / `cols` (lists, which the processor pops) and a per-tile
  `pixel_attention_mask` (B, tiles). Its connector is `model.vision_model.connector`, inside the vision model; a
  DeepStack merger per `deepstack_visual_indexes` layer adds into the first LM layers.
- FastVLM has no builder: its vision tower is a timm FastViT (`timm_wrapper` config), and timm (which needs
  torchvision) is not installed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    Granite4VisionConfig,
    Granite4VisionForConditionalGeneration,
    Granite4VisionProcessor,
    Granite4VisionTextConfig,
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics2ImageProcessorPil,
    Idefics2Processor,
    LlamaConfig,
    LlavaNextImageProcessorPil,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaProcessor,
    MistralConfig,
    SiglipVisionConfig,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
    VipLlavaConfig,
    VipLlavaForConditionalGeneration,
)

from .tiny_families import TINY_LM, TINY_VISION, save_checkpoint, special_ids
from .tiny_families_llava_like import GRID_PINPOINTS, TILE, save_with_video_processor, family_tokenizer

__all__ = ["BUILDERS", "make_tiny_granite4_vision", "make_tiny_granite_docling", "make_tiny_idefics2", "make_tiny_llava_next_video", "make_tiny_video_llava", "make_tiny_vipllava"]

PATCHES = (TILE // TINY_VISION["patch_size"]) ** 2
"""Patch tokens of one 32x32 image (CLS not counted)."""
CLIP_SQUARE = dict(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE})

# llava-hf/vip-llava-7b-hf's prompt, as transformers' VipLlava docs render its chat template
# ("###Human: <image>\nWhat's shown in this image?###Assistant: This image shows a red stop sign.###Human: ...").
VIPLLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }}"
    "{% else %}{{ '###Human: ' if message['role'] == 'user' else '###Assistant: ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '###Assistant:' }}{% endif %}"
)

# The Vicuna layout of llava-hf/LLaVA-NeXT-Video-7B-hf and LanguageBind/Video-LLaVA-7B-hf ("USER: <video>\n...
# ASSISTANT:", as transformers' docstrings prompt them): LLaVA-1.5's template with videos after the images.
VICUNA_VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def llama_tokenizer(texts: list[str], prompt_words: str, specials: list[str] = ()):
    """A BPE with Llama's <s> / </s> (every text starts with <s>), `<image>` and the family's `specials`."""
    return family_tokenizer(list(texts) + [prompt_words], "<image>", ["<s>", "</s>", *specials], bos="<s>", eos="</s>")


def tiny_llama(tokenizer) -> LlamaConfig:
    return LlamaConfig(**TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer))


def token_ids(tokenizer, **tokens: str) -> dict[str, int]:
    """Config keyword -> the id of a token."""
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in tokens.items()}


# --------------------------------------------------------------------------------------------------- VipLLaVA


def make_tiny_vipllava(out: Path, texts: list[str]) -> Path:
    """VipLlavaForConditionalGeneration in llava-hf/vip-llava-7b-hf's layout: CLIP tower (several layers, CLS
    dropped), Llama LM, `LlavaProcessor` (16 image tokens)."""
    tokenizer = llama_tokenizer(texts, "###Human: ###Assistant:")
    # vip-llava-7b takes layers (-2, -5, -8, -11, 6) of 25 hidden states; here 3 of the 3
    config = VipLlavaConfig(vision_config=CLIPVisionConfig(**TINY_VISION), text_config=tiny_llama(tokenizer),
                            vision_feature_layers=[-2, 0, 1], image_seq_length=PATCHES,
                            **token_ids(tokenizer, image_token_id="<image>"))
    torch.manual_seed(0)
    model = VipLlavaForConditionalGeneration(config)
    processor = LlavaProcessor(CLIPImageProcessorPil(**CLIP_SQUARE), tokenizer, patch_size=TINY_VISION["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=VIPLLAVA_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# ------------------------------------------------------------------------------------------- LLaVA-NeXT-Video


def make_tiny_llava_next_video(out: Path, texts: list[str]) -> Path:
    """LlavaNextVideoForConditionalGeneration in llava-hf/LLaVA-NeXT-Video-7B-hf's layout: CLIP tower (penultimate
    layer, CLS dropped), Llama LM, anyres image tiles (36 tokens for a square image)."""
    tokenizer = llama_tokenizer(texts, "USER: ASSISTANT:", ["<video>"])
    config = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION), text_config=tiny_llama(tokenizer), vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_grid_pinpoints=GRID_PINPOINTS, image_seq_length=PATCHES,
        video_seq_length=PATCHES // 4, **token_ids(tokenizer, image_token_id="<image>", video_token_id="<video>"))
    torch.manual_seed(0)
    model = LlavaNextVideoForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(**CLIP_SQUARE, image_grid_pinpoints=GRID_PINPOINTS)
    settings = dict(patch_size=TINY_VISION["patch_size"], vision_feature_select_strategy="default",
                    num_additional_image_tokens=1, image_token="<image>", video_token="<video>")
    video = {"video_processor_type": "LlavaNextVideoVideoProcessor", **CLIP_SQUARE}
    return save_with_video_processor(out, model, GenerationConfig(**special_ids(tokenizer)), "LlavaNextVideoProcessor",
                                      image_processor, tokenizer, VICUNA_VIDEO_TEMPLATE, settings, video)


# ------------------------------------------------------------------------------------------------ Video-LLaVA


def make_tiny_video_llava(out: Path, texts: list[str]) -> Path:
    """VideoLlavaForConditionalGeneration in LanguageBind/Video-LLaVA-7B-hf's layout: image and video CLIP towers
    (penultimate layer, CLS dropped), Llama LM (16 image tokens)."""
    tokenizer = llama_tokenizer(texts, "USER: ASSISTANT:", ["<video>"])
    config = VideoLlavaConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION), text_config=tiny_llama(tokenizer), vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_seq_length=PATCHES, video_seq_length=8 * (PATCHES + 1),
        **token_ids(tokenizer, image_token_id="<image>", video_token_id="<video>"))
    torch.manual_seed(0)
    model = VideoLlavaForConditionalGeneration(config)
    settings = dict(patch_size=TINY_VISION["patch_size"], vision_feature_select_strategy="default",
                    num_additional_image_tokens=1, image_token="<image>", video_token="<video>")
    video = {"video_processor_type": "VideoLlavaVideoProcessor", **CLIP_SQUARE}
    return save_with_video_processor(out, model, GenerationConfig(**special_ids(tokenizer)), "VideoLlavaProcessor",
                                      VideoLlavaImageProcessor(**CLIP_SQUARE), tokenizer, VICUNA_VIDEO_TEMPLATE,
                                      settings, video)


# ----------------------------------------------------------------------------------------------- Granite 4 Vision



def granite_template(parts: str) -> str:
    """The Granite role layout (<|start_of_role|>ROLE<|end_of_role|>TEXT<|end_of_text|>) of ibm-granite's chat
    templates, a turn's typed `parts` rendered by the given Jinja; the Hub templates' system preamble, tool and
    `controls` handling are left out."""
    return ("{% for message in messages %}{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' }}"
            "{% if message['content'] is string %}{{ message['content'] }}{% else %}" + parts + "{% endif %}"
            "{{ '<|end_of_text|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}")


# Granite Vision: images first, each on its own line, as llava-next-style processors expect
GRANITE4_TEMPLATE = granite_template(
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}")
GRANITE4_QFORMER = dict(num_hidden_layers=1, cross_attention_frequency=1, intermediate_size=64,
                        max_position_embeddings=64, use_qformer_text_input=False)
"""One Q-Former layer per projector, as the config's own default (a dict given replaces the default whole)."""
GRANITE4_TOKENS = ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"]


def make_tiny_granite4_vision(out: Path, texts: list[str]) -> Path:
    """Granite4VisionForConditionalGeneration in ibm-granite/granite-vision-4.1-4b's layout: SigLIP tower, window
    Q-Former projectors (4x4 patch windows into 2x2 tokens) injecting two vision depths and four spatial groups into
    six LM layers (DeepStack), Granite LM, anyres tiles."""
    tokenizer = family_tokenizer(list(texts) + ["user assistant"], "<image>", GRANITE4_TOKENS, eos="<|end_of_text|>",
                           pad="<|end_of_text|>")
    # The Q-Former gets vision_hidden // 64 heads: the tower needs 64 channels for one
    vision = SiglipVisionConfig(**{**TINY_VISION, "hidden_size": 64}, vision_use_head=False)
    text = Granite4VisionTextConfig(**{**TINY_LM, "num_hidden_layers": 6}, vocab_size=len(tokenizer),
                                    **special_ids(tokenizer))
    side = TILE // TINY_VISION["patch_size"]
    config = Granite4VisionConfig(
        vision_config=vision, text_config=text, qformer_config=GRANITE4_QFORMER,
        vision_feature_select_strategy="full", image_grid_pinpoints=GRID_PINPOINTS, downsample_rate=f"2/{side}",
        deepstack_layer_map=[[1, 0], [2, 1]], spatial_vision_layer=-1, spatial_target_layers=[2, 3, 4, 5],
        image_seq_length=4, **token_ids(tokenizer, image_token_id="<image>"))
    torch.manual_seed(0)
    model = Granite4VisionForConditionalGeneration(config)
    # crop_size is also the tile side the anyres grid is cut into (its class default is 224)
    square = {"height": TILE, "width": TILE}
    image_processor = LlavaNextImageProcessorPil(size=square, crop_size=square, image_grid_pinpoints=GRID_PINPOINTS,
                                                 do_center_crop=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Granite4VisionProcessor(image_processor, tokenizer, patch_size=TINY_VISION["patch_size"],
                                        vision_feature_select_strategy="full", downsample_rate=f"2/{side}",
                                        chat_template=GRANITE4_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# ------------------------------------------------------------------------------------------------------ Idefics2

# HuggingFaceM4/idefics2-8b's chat template (its tokenizer_config.json): "User:<image>...<end_of_utterance>\n".
IDEFICS2_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS2_LATENTS = 8
"""The perceiver's latents: image tokens per image (64 on idefics2-8b)."""


def make_tiny_idefics2(out: Path, texts: list[str]) -> Path:
    """Idefics2ForConditionalGeneration in HuggingFaceM4/idefics2-8b's layout: SigLIP-like tower at native aspect
    ratio (up to 64x64 here), perceiver resampler to 8 latents, Mistral LM, no image splitting."""
    # The processor finds its image tokens as tokenizer attributes (image_token, image_boundary_token)
    tokenizer = family_tokenizer(list(texts) + ["User: Assistant:"], "<image>",
                           ["<s>", "</s>", "<fake_token_around_image>", "<end_of_utterance>"], bos="<s>",
                           eos="<end_of_utterance>", named={"image_boundary_token": "<fake_token_around_image>"})
    vision = {**TINY_VISION, "image_size": 2 * TILE}  # position embeddings for the largest image, 8x8 patches
    perceiver = dict(hidden_size=TINY_LM["hidden_size"], rms_norm_eps=1e-6, resampler_n_latents=IDEFICS2_LATENTS,
                     resampler_depth=1, resampler_n_heads=2, resampler_head_dim=16, num_key_value_heads=1)
    config = Idefics2Config(vision_config=vision, perceiver_config=perceiver, text_config=MistralConfig(
        **TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer)), **token_ids(tokenizer, image_token_id="<image>"))
    torch.manual_seed(0)
    model = Idefics2ForConditionalGeneration(config)
    image_processor = Idefics2ImageProcessorPil(size={"shortest_edge": TILE, "longest_edge": 2 * TILE},
                                                do_image_splitting=False)
    processor = Idefics2Processor(image_processor, tokenizer, image_seq_len=IDEFICS2_LATENTS,
                                  chat_template=IDEFICS2_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# ------------------------------------------------------------------------------------------- Granite-Docling

# ibm-granite/granite-docling-258M: the parts in their order, "<image>" in place
GRANITE_DOCLING_TEMPLATE = granite_template(
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}")
DOCLING_TILE = 2 * TILE
"""Granite-Docling's tile side: 8x8 patches, pixel-shuffled by its scale factor 4 into 2x2 = 4 tokens per tile."""


def make_tiny_granite_docling(out: Path, texts: list[str]) -> Path:
    """GraniteDoclingForConditionalGeneration in ibm-granite/granite-docling-258M's layout: SigLIP-like tower whose
    connector (pixel shuffle, projection, a DeepStack merger for vision layer 0) lives inside it, Granite LM, Idefics3's
    prompt layout (rows x columns of tiles + a thumbnail)."""
    from transformers import (  # newer than transformers 5.17
        GraniteDoclingConfig,
        GraniteDoclingForConditionalGeneration,
        GraniteDoclingImageProcessorPil,
        GraniteDoclingProcessor,
    )
    tiles = ["<fake_token_around_image>", "<global-img>"] + [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)]
    tokenizer = family_tokenizer(list(texts) + ["user assistant"], "<image>", GRANITE4_TOKENS + tiles,
                           eos="<|end_of_text|>", pad="<|end_of_text|>")
    vision = dict(TINY_VISION, image_size=DOCLING_TILE, out_hidden_size=TINY_LM["hidden_size"], scale_factor=4,
                  deepstack_visual_indexes=[0])
    text = dict(TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer))
    config = GraniteDoclingConfig(vision_config=vision, text_config=text, pad_token_id=tokenizer.pad_token_id,
                                  **token_ids(tokenizer, image_token_id="<image>"))
    torch.manual_seed(0)
    model = GraniteDoclingForConditionalGeneration(config)
    image_processor = GraniteDoclingImageProcessorPil(size={"height": DOCLING_TILE, "width": DOCLING_TILE},
                                                      max_patches=4)
    processor = GraniteDoclingProcessor(image_processor, tokenizer, image_seq_len=model.model.image_seq_len,
                                        chat_template=GRANITE_DOCLING_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


BUILDERS = {
    "vipllava": make_tiny_vipllava,
    "llava_next_video": make_tiny_llava_next_video,
    "video_llava": make_tiny_video_llava,
    "granite4_vision": make_tiny_granite4_vision,
    "idefics2": make_tiny_idefics2,
    "granite_docling": make_tiny_granite_docling,
}
"""Builder per config.model_type."""
