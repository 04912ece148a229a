"""Tiny random checkpoints of MiniCPM-V 4.6 and 4.7, of the GLM-V families (Glmga, GLM-5-Next) and of Hy4-VL, built
offline. Same contract as tests/tiny_families.py:
`make_tiny_<family>(out, texts)` saves a random float32 model and its real processor class to `out`, laid out as
`save_pretrained` writes it, so that `AutoModelForImageTextToText.from_pretrained(out)` loads it and (with
torchvision) `AutoProcessor.from_pretrained(out)`.

Cohere2Vision (CohereLabs/command-a-vision's layout) has no builder: `Cohere2VisionImageProcessor`, the image
processor of its checkpoints, exists only in a torchvision version in transformers 5.25 (no `*Pil` twin).

Quirks worth knowing (transformers 5.25):
- MiniCPM-V 4.6: SigLIP-like tower with a window-attention merger after layer `insert_layer_id` (2x2 patches -> 1) and
  a downsampling merger (2x2 again: "16x" mode, 16 patches per token), a Qwen3.5 LM (hybrid: linear-attention and
  full-attention layers). The image processor NaViT-packs every image of a call into one row: `pixel_values`
  (1, 3, patch, n_patches * patch) and `target_sizes` (crops, 2) in patches; an image is resized to multiples of
  4 patches (here 48x40 -> 8x8 patches -> 4 tokens) and sliced into up to `max_slice_nums` crops only when larger
  than `scale_resolution` squared. It also returns `grids` and `num_patches_per_image`, which only the processor reads.
  The processor replaces each `<|image_pad|>` with `<image_id>N</image_id><image>` + tokens + `</image>` (+ one
  `<slice>...</slice>` per crop, a newline after each row); its image tokens are named tokenizer attributes.
- `MiniCPMV4_6Processor.__init__` reads its video processor's `slice_mode` and `downsample_mode`: built without
  torchvision (no video processor), it needs a stand-in holding them (verbovision.store does so from the saved
  settings; the builder writes them explicitly into processor_config.json's `video_processor`).
- MiniCPM-V 4.7: as 4.6, plus canvas M-RoPE: the model places image tokens on a 2-D canvas pinned by the
  `<image>`/`</image>`/`<slice>`/`</slice>` and newline token ids (config `image_start_id`...`newline_id`), computed
  from the whole row; the processor also returns `mm_token_type_ids`.
- Glmga: GLM-4.6V's model class (`Glm46VForConditionalGeneration`, GLM-4V tower and M-RoPE LM) and processor
  (`Glm46VProcessor`; transformers maps no processor to the type: processor_config.json names it) with the type's
  own image processor (Qwen2-VL's patching: patch 8, merge 2, here 4..16 tokens). The text holds
  `<|begin_of_image|><|image|><|end_of_image|>`; the processor expands `<|image|>` and returns `mm_token_type_ids`
  (1 on image tokens). The LM's rotary embedding covers half of each head (`partial_rotary_factor` 0.5), so the
  M-RoPE sections split a quarter of head_dim. `Glm46VProcessor` holds a video processor: saved as for MiniCPM-V.
- GLM-5-Next (zai-org/GLM-5.3-Flash): `Glm5NextProcessor` (GLM-4.6V's) and the same text layout; GLM-OCR-like tower;
  an LM of linear-attention (KDA) and MLA layers with a sparse-attention (DSA) indexer, MoE feed-forward layers after
  the dense ones, hyper-connection residual streams (`hc_mult`) and no rotary embedding. Its image processor sizes
  images by token count (`min_image_tokens`..`max_image_tokens`, here 4..16: 48x40 -> 9 tokens).
- Hy4-VL (tencent/Hy4): `HYV4VLProcessor` is Qwen2-VL's processor counting one extra (newline) token per merged row:
  (grid_h / 2) * (grid_w / 2 + 1) tokens (48x40 -> 6x4 patches -> 8); the image token is the tokenizer's
  `image_token` attribute. HunYuan-VL tower whose `patch_merger` (convolution, MLP, learned begin / end / newline
  embeddings) projects into the LM; an MLA + DSA + MoE LM with hyper-connections and M-RoPE over the rope slice of
  each head (`qk_rope_head_dim`, which the config also reports as `head_dim`). `HYV4VLProcessor` holds a video
  processor: saved as for MiniCPM-V.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Glm5NextConfig,
    Glm5NextForConditionalGeneration,
    Glm5NextImageProcessorPil,
    Glm46VForConditionalGeneration,
    GlmgaConfig,
    GlmgaImageProcessorPil,
    MiniCPMV4_6Config,
    MiniCPMV4_6ForConditionalGeneration,
)
from transformers.models.minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

from .tiny_families import QWEN2_VL_PIXELS, QWEN2_VL_VISION, TINY_LM, TINY_VISION, mrope_text_config, special_ids
from .tiny_families_llava_like import save_with_video_processor, family_tokenizer

__all__ = ["BUILDERS", "make_tiny_glm5_next", "make_tiny_glmga", "make_tiny_hy_v4_vl", "make_tiny_minicpmv4_6",
           "make_tiny_minicpmv4_7"]

MINICPMV_TOKENS = {"video_token": "<|video_pad|>", "image_start_token": "<image>", "image_end_token": "</image>",
                   "slice_start_token": "<slice>", "slice_end_token": "</slice>",
                   "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>"}
"""The image tokens MiniCPMV4_6Processor reads from tokenizer attributes (MiniCPM-V's markers)."""

MINICPMV_SIDE = 64
"""Images up to 64x64 pixels (8x8 patches of 8) are one crop; larger ones are sliced."""

MINICPMV_IMAGES = dict(patch_size=TINY_VISION["patch_size"], scale_resolution=MINICPMV_SIDE, max_slice_nums=4,
                       slice_mode=True, downsample_mode="16x")

# ChatML as Qwen3.5's chat template renders it, each image part as the image token. The Hub's chat_template.jinja
# (openbmb/MiniCPM-V-4.6, with tool calls and thinking) was not available offline; this keeps its turn layout only.
MINICPMV_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<|image_pad|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|video_pad|>' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _minicpmv_text_config(vocab_size: int, ids: dict) -> dict:
    """A tiny Qwen3.5 text config: one linear-attention (gated delta) layer, one full-attention layer."""
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    return dict(TINY_LM, model_type="qwen3_5_text", vocab_size=vocab_size, head_dim=head_dim,
                layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, **ids)


def _make_tiny_minicpmv(out: Path, texts: list[str], config_class, model_class, processor_class: str,
                        marker_ids: bool) -> Path:
    """MiniCPM-V 4.6 / 4.7 (`marker_ids`: the config names the canvas markers' token ids, as 4.7's does)."""
    tokenizer = family_tokenizer(list(texts) + ["user assistant"], "<|image_pad|>", list(MINICPMV_TOKENS.values()),
                           eos="<|im_end|>", named=MINICPMV_TOKENS)
    token = tokenizer.convert_tokens_to_ids
    markers = dict(image_start_id=token("<image>"), image_end_id=token("</image>"), slice_start_id=token("<slice>"),
                   slice_end_id=token("</slice>"), newline_id=token("\n")) if marker_ids else {}
    config = config_class(text_config=_minicpmv_text_config(len(tokenizer), special_ids(tokenizer)),
                          vision_config=dict(TINY_VISION, image_size=MINICPMV_SIDE), insert_layer_id=0,
                          image_size=MINICPMV_SIDE, image_token_id=tokenizer.image_token_id,
                          video_token_id=token("<|video_pad|>"), downsample_mode="16x", **markers)
    torch.manual_seed(0)
    model = model_class(config)
    image_processor = MiniCPMV4_6ImageProcessorPil(**MINICPMV_IMAGES)
    video = {"video_processor_type": "MiniCPMV4_6VideoProcessor", **MINICPMV_IMAGES}
    return save_with_video_processor(out, model, GenerationConfig(**special_ids(tokenizer)), processor_class,
                                      image_processor, tokenizer, MINICPMV_TEMPLATE, {}, video)


def make_tiny_minicpmv4_6(out: Path, texts: list[str]) -> Path:
    """MiniCPMV4_6ForConditionalGeneration in openbmb/MiniCPM-V-4.6's layout (4 tokens per 64x64 crop)."""
    return _make_tiny_minicpmv(out, texts, MiniCPMV4_6Config, MiniCPMV4_6ForConditionalGeneration,
                               "MiniCPMV4_6Processor", marker_ids=False)


def make_tiny_minicpmv4_7(out: Path, texts: list[str]) -> Path:
    """MiniCPMV4_7ForConditionalGeneration (canvas M-RoPE) in openbmb/MiniCPM-V-4.7-1B's layout."""
    from transformers import MiniCPMV4_7Config, MiniCPMV4_7ForConditionalGeneration  # newer than transformers 5.17
    return _make_tiny_minicpmv(out, texts, MiniCPMV4_7Config, MiniCPMV4_7ForConditionalGeneration,
                               "MiniCPMV4_7Processor", marker_ids=True)


# ------------------------------------------------------------------------------------------------------ GLM-V

GLM_TOKENS = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<|endoftext|>",
              "<|begin_of_image|>", "<|end_of_image|>", "<|video|>", "<|begin_of_video|>", "<|end_of_video|>"]

# GLM-4.5V/4.6V's chat template (zai-org/GLM-4.5V's chat_template.jinja) reduced to its turn layout: `[gMASK]<sop>`,
# `<|role|>\n` before each turn, an image part as `<|begin_of_image|><|image|><|end_of_image|>`, the generation
# prompt `<|assistant|>\n` (the Hub file's tool calls and thinking switches are left out; it writes no end of turn).
GLM_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|begin_of_video|><|video|><|end_of_video|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _make_tiny_glm_v(out: Path, texts: list[str], config_class, model_class, processor_class: str, image_processor,
                     video_processor: str, text: dict, vision: dict) -> Path:
    """A GLM-V checkpoint: `text` and `vision` are the sub-configs without the tokenizer's ids."""
    tokenizer = family_tokenizer(list(texts), "<|image|>", GLM_TOKENS, eos="<|endoftext|>", pad="<|endoftext|>")
    token = tokenizer.convert_tokens_to_ids
    config = config_class(
        text_config=dict(text, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=vision, image_token_id=token("<|image|>"), video_token_id=token("<|video|>"),
        image_start_token_id=token("<|begin_of_image|>"), image_end_token_id=token("<|end_of_image|>"),
        video_start_token_id=token("<|begin_of_video|>"), video_end_token_id=token("<|end_of_video|>"))
    torch.manual_seed(0)
    model = model_class(config)
    # GLM-V checkpoints stop at the end of text, a new user turn or a tool call
    generation = GenerationConfig(eos_token_id=[token(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")],
                                  pad_token_id=tokenizer.pad_token_id)
    video = {"video_processor_type": video_processor, **QWEN2_VL_VISION}
    return save_with_video_processor(out, model, generation, processor_class, image_processor, tokenizer,
                                      GLM_TEMPLATE, {}, video)


GLM4V_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TINY_LM["hidden_size"],
                    image_size=32, patch_size=QWEN2_VL_VISION["patch_size"],
                    temporal_patch_size=QWEN2_VL_VISION["temporal_patch_size"],
                    spatial_merge_size=QWEN2_VL_VISION["merge_size"])


def make_tiny_glmga(out: Path, texts: list[str]) -> Path:
    """Glm46VForConditionalGeneration with a GlmgaConfig: GLM-4V tower, GLM-4 LM with M-RoPE over half of each head."""
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    # (temporal, height, width) sections of the head_dim/4 rotated frequencies ([8, 12, 12] at 128, GLM-4.1V's)
    text = mrope_text_config(0, {}, partial_rotary_factor=0.5,
                             mrope_section=[head_dim // 8, head_dim // 16, head_dim // 16])
    image_processor = GlmgaImageProcessorPil(**QWEN2_VL_VISION, size={"shortest_edge": QWEN2_VL_PIXELS["min_pixels"],
                                                                      "longest_edge": QWEN2_VL_PIXELS["max_pixels"]})
    return _make_tiny_glm_v(out, texts, GlmgaConfig, Glm46VForConditionalGeneration, "Glm46VProcessor",
                            image_processor, "GlmgaVideoProcessor", text, GLM4V_VISION)


GLM5_NEXT_TEXT = dict(TINY_LM, num_key_value_heads=2, head_dim=16, q_lora_rank=16, kv_lora_rank=16,
                      qk_nope_head_dim=16, v_head_dim=16, moe_intermediate_size=16, n_routed_experts=4,
                      num_experts_per_tok=2, linear_head_dim=8, linear_num_heads=2, hc_mult=2, index_head_dim=8,
                      index_n_heads=2, index_topk=16, layer_types=["linear_attention", "indexed_attention"],
                      mlp_layer_types=["dense", "sparse"])
"""One KDA layer with a dense MLP, one MLA (DSA) layer with MoE."""


def make_tiny_glm5_next(out: Path, texts: list[str]) -> Path:
    """Glm5NextForConditionalGeneration in zai-org/GLM-5.3-Flash's layout (4..16 image tokens)."""
    image_processor = Glm5NextImageProcessorPil(**QWEN2_VL_VISION, min_image_tokens=4, max_image_tokens=16)
    return _make_tiny_glm_v(out, texts, Glm5NextConfig, Glm5NextForConditionalGeneration, "Glm5NextProcessor",
                            image_processor, "Glm5NextVideoProcessor", GLM5_NEXT_TEXT,
                            dict(GLM4V_VISION, projection_intermediate_size=64))


# ------------------------------------------------------------------------------------------------------ Hy4-VL

HY_TOKENS = {"bos": "<｜hy_begin▁of▁sentence｜>", "user": "<｜hy_User｜>", "assistant": "<｜hy_Assistant｜>",
             "system": "<｜hy_place▁holder▁no▁3｜>", "image_start": "<｜hy_place▁holder▁no▁100｜>",
             "image": "<｜hy_place▁holder▁no▁102｜>", "image_end": "<｜hy_place▁holder▁no▁101｜>",
             "video": "<｜hy_place▁holder▁no▁103｜>"}

# HunYuan-VL's prompt layout, as ms-swift's `hunyuan_ocr` template writes it (Hy4's own chat_template.jinja was not
# available offline): BOS, each turn's text followed by its role's token (a system turn by placeholder 3), a new BOS
# after each reply that is not the last; an image as start, image and end placeholder tokens.
HY_TEMPLATE = (
    "{{ '<｜hy_begin▁of▁sentence｜>' }}{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<｜hy_place▁holder▁no▁100｜><｜hy_place▁holder▁no▁102｜>"
    "<｜hy_place▁holder▁no▁101｜>' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ '<｜hy_place▁holder▁no▁3｜>' }}"
    "{% elif message['role'] == 'user' %}{{ '<｜hy_User｜>' }}"
    "{% else %}{{ '<｜hy_Assistant｜>' }}{% if not loop.last %}{{ '<｜hy_begin▁of▁sentence｜>' }}{% endif %}{% endif %}"
    "{% endfor %}"
)

HY_PATCHES = dict(patch_size=TINY_VISION["patch_size"], merge_size=2)


def make_tiny_hy_v4_vl(out: Path, texts: list[str]) -> Path:
    """HYV4VLForConditionalGeneration in tencent/Hy4's layout (4..16 merged patches per image, plus row newlines)."""
    from transformers import (  # newer than transformers 5.17
        HYV4VLConfig,
        HYV4VLForConditionalGeneration,
        HYV4VLImageProcessorPil,
    )
    tokens = HY_TOKENS
    tokenizer = family_tokenizer(list(texts), tokens["image"], [t for k, t in tokens.items() if k != "image"],
                           eos=tokens["assistant"], named={"video_token": tokens["video"]})
    token = tokenizer.convert_tokens_to_ids
    rope_dim = 8
    text = dict(TINY_LM, vocab_size=len(tokenizer), bos_token_id=token(tokens["bos"]),
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, q_lora_rank=16,
                kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=rope_dim, v_head_dim=16,
                moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, index_head_dim=8,
                index_n_heads=2, index_topk=16, hc_mult=2,
                # (temporal, height, width) sections of the rope slice's rope_dim/2 frequencies ([12, 10, 10] at 64)
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [rope_dim // 4, rope_dim // 8, rope_dim // 8]})
    vision = dict(TINY_VISION, spatial_merge_size=HY_PATCHES["merge_size"], out_hidden_size=TINY_LM["hidden_size"],
                  max_image_size=64)
    config = HYV4VLConfig(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id,
                          video_token_id=token(tokens["video"]))
    torch.manual_seed(0)
    model = HYV4VLForConditionalGeneration(config)
    image_processor = HYV4VLImageProcessorPil(**HY_PATCHES, **QWEN2_VL_PIXELS)
    video = {"video_processor_type": "HYV4VLVideoProcessor", **HY_PATCHES}
    return save_with_video_processor(out, model, GenerationConfig(**special_ids(tokenizer)), "HYV4VLProcessor",
                                      image_processor, tokenizer, HY_TEMPLATE, {}, video)


BUILDERS = {
    "minicpmv4_6": make_tiny_minicpmv4_6,
    "minicpmv4_7": make_tiny_minicpmv4_7,
    "glm5_next": make_tiny_glm5_next,
    "hy_v4_vl": make_tiny_hy_v4_vl,
    "glmga": make_tiny_glmga,
}
"""Builder per config.model_type."""
