"""Tiny random checkpoints of the newer Qwen-VL-like families, built offline (as tests/tiny_families.py).

Each `make_tiny_*(out, texts)` saves a random float32 model and its processor to `out`, laid out like the family's
checkpoints on the Hub, so that `AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` (with torchvision: every processor here holds a video processor) load them with
no `trust_remote_code`. The model classes are looked up by name: transformers 5.17 (the floor) lacks some of them.

Quirks worth knowing (transformers 5.x):
- Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE: Qwen3-VL's tower and processor (tests/tiny_families_qwen_like.py
  `make_tiny_qwen3_vl`: `Qwen3VLProcessor`, Qwen2-VL's image processor, 4..16 image tokens, interleaved M-RoPE with
  `mm_token_type_ids`). The MoE LMs keep their experts as 3-D parameters (`mlp.experts.gate_up_proj`, `down_proj`),
  and their router as a bare 2-D parameter (`mlp.gate.weight`), none of which `all-linear` LoRA reaches; the
  attention projections (and Qwen3.5-MoE's shared expert) are linears.
- Qwen3.5 (and -MoE): no DeepStack (its vision config refuses `deepstack_visual_indexes`); a hybrid LM of gated
  delta-net linear-attention layers (`linear_attn`, a causal conv plus a recurrent state) and full-attention layers
  (`layer_types`, here one of each); rotary on a `partial_rotary_factor` of each head (the Hub's 0.25 of 256; here all
  16 dims, which M-RoPE's three sections then split). The Hub's Qwen3.5 chat template (a thinking block) is not
  installed here; the tiny checkpoints carry Qwen3-VL's.
- Qwen4-Exp: Qwen3.5-MoE plus hyper-connections (`hc_count` residual streams), per-layer n-gram embeddings (PLE:
  hashed token n-grams, allowed on linear-attention layers only, read from `input_ids`, which the model recovers from
  the embeddings where it is given none) and "indexed" full attention (QSA: a token indexer picks which blocks of keys
  each query attends; every full-attention layer is one, so the QSA settings are required).
- Cosmos3-Omni: Qwen3-VL's architecture and processor under its own model type (its config overrides only that);
  the Hub checkpoint's chat template is not installed here, and the tiny one carries Qwen3-VL's.
- GLM-4.1V (glm4v), GLM-4.5V (glm4v_moe), GLM-4.6V (glm46v), GLM-OCR (glm_ocr): one layout. A Qwen2-VL-like tower
  (patch 8, merge 2: 48x40 pixels -> 48x32 -> 3x2 merged tokens) with learned position embeddings (`image_size` /
  patch: a 4x4 grid, interpolated per image), a conv `downsample` and `model.visual.merger`; a GLM-4 LM with M-RoPE
  from `mm_token_type_ids`. The processor (Glm4vProcessor; Glm46VProcessor for GLM-4.6V, and for GLM-OCR, which has
  no processor class of its own in transformers) expands `<|image|>`
  between `<|begin_of_image|>` and `<|end_of_image|>`; it holds a video processor (torchvision). Its image
  processor's `size` is in pixels *including the temporal factor 2*: `longest_edge` 2*64*64 lets 64x64 through.
  Prompts start with `[gMASK]<sop>`; replies end at `<|endoftext|>` or the next `<|user|>` (generation's EOS list).
  GLM-4.5V's LM is MoE from its second layer on (`first_k_dense_replace`), with a shared expert.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig

from verbovision.data.tokenizer import train_bpe_tokenizer

from .tiny_families import QWEN2_VL_VISION, TINY_LM, mrope_text_config, save_with_video_processor
from .tiny_families_qwen_like import make_tiny_qwen3_vl

__all__ = ["BUILDERS", "make_tiny_cosmos3_omni", "make_tiny_glm46v", "make_tiny_glm4v", "make_tiny_glm4v_moe",
           "make_tiny_glm_ocr", "make_tiny_qwen3_5", "make_tiny_qwen3_5_moe", "make_tiny_qwen3_vl_moe",
           "make_tiny_qwen4_exp"]

TINY_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
"""Four experts of half the dense MLP's width, two per token."""


def _qwen3_vl_like(out: Path, texts: list[str], architecture: str, text: dict, vision: dict | None = None) -> Path:
    """A family on Qwen3-VL's tower and processor: `architecture` names its config and model classes (Qwen3VLMoe ->
    Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration)."""
    classes = dict(config_class=getattr(transformers, f"{architecture}Config"),
                   model_class=getattr(transformers, f"{architecture}ForConditionalGeneration"))
    return make_tiny_qwen3_vl(out, texts, text=text, **classes, **({} if vision is None else {"vision": vision}))


def make_tiny_qwen3_vl_moe(out: Path, texts: list[str]) -> Path:
    """Qwen3VLMoeForConditionalGeneration (Qwen/Qwen3-VL-30B-A3B-Instruct layout): Qwen3-VL with a sparse-MoE LM.
    The Hub checkpoints ship Qwen3-VL's chat template."""
    return _qwen3_vl_like(out, texts, "Qwen3VLMoe", TINY_MOE)


# Qwen3.5's hybrid LM: a gated delta-net layer then a full-attention one, with tiny linear-attention heads.
QWEN3_5_TEXT = dict(layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                    linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4)


def _qwen3_5_text(**settings) -> dict:
    rope = dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=1.0, mrope_interleaved=True,
                mrope_section=[2, 3, 3])  # as Qwen3-VL's tiny text config: 8 rotary frequencies of a 16-dim head
    return dict(QWEN3_5_TEXT, rope_parameters=rope, head_dim=TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"],
                **settings)


def make_tiny_qwen3_5(out: Path, texts: list[str]) -> Path:
    """Qwen3_5ForConditionalGeneration (Qwen/Qwen3.5-* layout): Qwen3-VL's tower without DeepStack, a hybrid
    linear/full-attention LM."""
    return _qwen3_vl_like(out, texts, "Qwen3_5", _qwen3_5_text(), vision={})


def make_tiny_qwen3_5_moe(out: Path, texts: list[str]) -> Path:
    """Qwen3_5MoeForConditionalGeneration (Qwen/Qwen3.5-*-A*B layout): Qwen3.5 with sparse-MoE MLPs and a shared
    expert."""
    return _qwen3_vl_like(out, texts, "Qwen3_5Moe", _qwen3_5_text(**TINY_MOE, shared_expert_intermediate_size=32),
                          vision={})


QWEN4_EXP_TEXT = dict(
    TINY_MOE, shared_expert_intermediate_size=32, layer_types=["linear_attention", "indexed_attention"],
    hc_count=2, hc_lowrank=8,  # two residual streams, mixed through a rank-8 map
    # n-gram embeddings (bigrams, trigrams: 2 hashed heads each, tables of a prime size >= 97) into layer 1
    ple_layer_ids=[1], ple_embed_dim=16, heads_per_ngram=2, ngram_vocab_size_base=97,
    make_ngram_vocab_size_divisible_by=8, split_ngram_parts=1,
    # QSA: keys averaged over blocks of 4 tokens, the best 16 tokens' blocks attended per query
    indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=16, indexer_compress_ratio=4)


def make_tiny_qwen4_exp(out: Path, texts: list[str]) -> Path:
    """Qwen4ExpForConditionalGeneration (Qwen/Qwen4-Exp layout): Qwen3.5-MoE's tower and hybrid LM, with
    hyper-connections, per-layer n-gram embeddings on its linear-attention layer and a QSA-indexed attention layer."""
    return _qwen3_vl_like(out, texts, "Qwen4Exp", _qwen3_5_text(**QWEN4_EXP_TEXT), vision={})


def make_tiny_cosmos3_omni(out: Path, texts: list[str]) -> Path:
    """Cosmos3OmniForConditionalGeneration (nvidia/Cosmos3-Nano layout): Qwen3-VL's architecture under its own model
    type (the Reasoner of a unified checkpoint whose generator, sound and action towers transformers drops)."""
    return _qwen3_vl_like(out, texts, "Cosmos3Omni", {})


# --------------------------------------------------------------------------------------------------- GLM-4.xV

# The image-text core of zai-org/GLM-4.1V-9B-Thinking's chat_template.jinja (the Hub file, not installed here; its
# layout as transformers' GLM-4.1V docs and vLLM's GLM-4.1V example prompt show it): `[gMASK]<sop>`, `<|role|>`
# turns, images as <|begin_of_image|><|image|><|end_of_image|>; content parts' texts joined (its `visible_text`).
GLM4V_TEMPLATE = (
    "{%- macro visible_text(content) -%}{%- if content is string -%}{{- content }}{%- else -%}"
    "{%- for item in content -%}{%- if item.type == 'text' -%}{{- item.text }}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
    "[gMASK]<sop>{%- for msg in messages %}"
    "{%- if msg.role == 'system' %}<|system|>{{ '\\n' }}{{ visible_text(msg.content) }}"
    "{%- elif msg.role == 'user' %}<|user|>{{ '\\n' }}{%- if msg.content is string %}{{ msg.content }}{%- else %}"
    "{%- for item in msg.content %}{%- if item.type == 'video' or 'video' in item %}"
    "<|begin_of_video|><|video|><|end_of_video|>{%- elif item.type == 'image' or 'image' in item %}"
    "<|begin_of_image|><|image|><|end_of_image|>{%- elif item.type == 'text' %}{{ item.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{%- elif msg.role == 'assistant' %}<|assistant|>{{ '\\n' }}{{ visible_text(msg.content) }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|assistant|>{{ '\\n' }}{%- endif %}"
)
GLM_SPECIALS = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
                "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>"]


def _glm_tokenizer(texts: list[str]):
    """A byte-level BPE with GLM-4.xV's specials: `<|image|>` (`.image_token`), image/video brackets, `<|role|>`
    turns, `[gMASK]<sop>`; EOS = pad = <|endoftext|>; no chat template (the processor has it)."""
    tokenizer = train_bpe_tokenizer(list(texts) + ["Describe the picture."], "<|image|>", vocab_size=300)
    tokenizer.add_tokens(GLM_SPECIALS, special_tokens=True)
    tokenizer.chat_template = None
    return tokenizer


def _glm_ids(tokenizer) -> dict:
    token = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=token("<|image|>"), video_token_id=token("<|video|>"),
                image_start_token_id=token("<|begin_of_image|>"), image_end_token_id=token("<|end_of_image|>"),
                video_start_token_id=token("<|begin_of_video|>"), video_end_token_id=token("<|end_of_video|>"))


def _glm_like(out: Path, texts: list[str], architecture: str, processor: str, text: dict | None = None) -> Path:
    """A GLM-4.xV layout checkpoint: `architecture` names the config and model classes (Glm4v -> Glm4vConfig,
    Glm4vForConditionalGeneration), `processor` the processor class (Glm4v -> Glm4vProcessor,
    Glm4vImageProcessorPil, Glm4vVideoProcessor); `text`: LM settings beyond the dense tiny one."""
    tokenizer = _glm_tokenizer(texts)
    ends = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|user|>")]
    ids = dict(eos_token_id=ends, pad_token_id=tokenizer.pad_token_id)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TINY_LM["hidden_size"],
                  image_size=32, patch_size=QWEN2_VL_VISION["patch_size"],
                  temporal_patch_size=QWEN2_VL_VISION["temporal_patch_size"],
                  spatial_merge_size=QWEN2_VL_VISION["merge_size"])
    text_config = {**mrope_text_config(len(tokenizer), ids), **(text or {})}
    text_config["rope_parameters"]["partial_rotary_factor"] = 1.0  # the Hub's 0.5 of 128; here all 16 dims
    config = getattr(transformers, f"{architecture}Config")(text_config=text_config, vision_config=vision,
                                                            **_glm_ids(tokenizer))
    torch.manual_seed(0)
    model = getattr(transformers, f"{architecture}ForConditionalGeneration")(config)
    # `size` counts the temporal factor: 2 x 32x32 .. 2 x 64x64 pixels
    pixels = dict(size={"shortest_edge": 2 * 32 * 32, "longest_edge": 2 * 64 * 64})
    image_processor = getattr(transformers, f"{processor}ImageProcessorPil")(**QWEN2_VL_VISION, **pixels)
    video = dict(video_processor_type=f"{processor}VideoProcessor", **QWEN2_VL_VISION, **pixels)
    return save_with_video_processor(out, model, GenerationConfig(**ids), f"{processor}Processor", image_processor,
                                     tokenizer, GLM4V_TEMPLATE, video)


def make_tiny_glm4v(out: Path, texts: list[str]) -> Path:
    """Glm4vForConditionalGeneration (zai-org/GLM-4.1V-9B-* layout)."""
    return _glm_like(out, texts, "Glm4v", "Glm4v")


def make_tiny_glm4v_moe(out: Path, texts: list[str]) -> Path:
    """Glm4vMoeForConditionalGeneration (zai-org/GLM-4.5V layout): a dense first LM layer, then MoE with a shared
    expert."""
    moe = dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
               first_k_dense_replace=1)
    return _glm_like(out, texts, "Glm4vMoe", "Glm4v", moe)


def make_tiny_glm46v(out: Path, texts: list[str]) -> Path:
    """Glm46VForConditionalGeneration (zai-org/GLM-4.6V-Flash layout): GLM-4.1V's tower and LM, Glm46VProcessor."""
    return _glm_like(out, texts, "Glm46V", "Glm46V")


def make_tiny_glm_ocr(out: Path, texts: list[str]) -> Path:
    """GlmOcrForConditionalGeneration (zai-org/GLM-OCR layout): GLM-4.xV's architecture at OCR size, Glm46VProcessor."""
    return _glm_like(out, texts, "GlmOcr", "Glm46V")


BUILDERS = {
    "qwen3_vl_moe": make_tiny_qwen3_vl_moe,
    "qwen3_5": make_tiny_qwen3_5,
    "qwen3_5_moe": make_tiny_qwen3_5_moe,
    "qwen4_exp": make_tiny_qwen4_exp,
    "glm4v": make_tiny_glm4v,
    "glm4v_moe": make_tiny_glm4v_moe,
    "glm46v": make_tiny_glm46v,
    "glm_ocr": make_tiny_glm_ocr,
    "cosmos3_omni": make_tiny_cosmos3_omni,
}

