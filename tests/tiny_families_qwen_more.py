"""Tiny random checkpoints of the newer Qwen-VL-like families, built offline (as tests/tiny_families.py).

Each `make_tiny_*(out, texts)` saves a random float32 model and its processor to `out`, laid out like the family's
checkpoints on the Hub, so that `AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` (with torchvision: every processor here holds a video processor) load them with
no `trust_remote_code`. The model classes are looked up by name: transformers 5.17 (the floor) lacks some of them.

Quirks worth knowing (transformers 5.x):
- Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE: Qwen3-VL's tower and processor (tests/tiny_families_qwen_like.py
  `make_tiny_qwen3_vl`: `Qwen3VLProcessor`, Qwen2-VL's image processor, 4..16 image tokens, interleaved M-RoPE with
  `mm_token_type_ids`). The MoE LMs keep their experts as 3-D parameters (`mlp.experts.gate_up_proj`, `down_proj`),
  which `all-linear` LoRA does not reach; the router and the attention projections are linears.
- Qwen3.5 (and -MoE): no DeepStack (its vision config refuses `deepstack_visual_indexes`); a hybrid LM of gated
  delta-net linear-attention layers (`linear_attn`, a causal conv plus a recurrent state) and full-attention layers
  (`layer_types`, here one of each); rotary on a `partial_rotary_factor` of each head (the Hub's 0.25 of 256; here all
  16 dims, which M-RoPE's three sections then split).
"""

from __future__ import annotations

from pathlib import Path

import transformers

from .tiny_families import TINY_LM
from .tiny_families_qwen_like import make_tiny_qwen3_vl

__all__ = ["BUILDERS", "make_tiny_qwen3_5", "make_tiny_qwen3_5_moe", "make_tiny_qwen3_vl_moe"]

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


BUILDERS = {
    "qwen3_vl_moe": make_tiny_qwen3_vl_moe,
    "qwen3_5": make_tiny_qwen3_5,
    "qwen3_5_moe": make_tiny_qwen3_5_moe,
}
