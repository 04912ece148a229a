"""Which attention implementation a model loads with (transformers' `attn_implementation`): the fused kernels where
the model class supports them, the recipe's `model.attn_implementation` where it names one."""

from __future__ import annotations

import importlib.util

import torch

from ..errors import ConfigError

HALF = (torch.float16, torch.bfloat16)


def attention_for(config, dtype: torch.dtype, device: torch.device | str, requested: str = "auto") -> str | None:
    """The attention implementation to load a model of `config` with: `requested` unless it is `auto`; else
    FlashAttention-2 on CUDA in half precision where the flash_attn package is installed and the model class supports
    it (it runs in float16 / bfloat16 only), else PyTorch's fused scaled_dot_product_attention where the class
    supports it, else eager. None where transformers has no image-text class for the config (loading says why)."""
    if requested == "flash_attention_2" and not _has_flash_attn():
        raise ConfigError("model.attn_implementation: flash_attention_2 needs the flash_attn package (pip install "
                          "flash-attn, CUDA); use auto or sdpa")
    if requested != "auto":
        return requested
    model_class = _image_text_class(config)
    if model_class is None:
        return None
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda and dtype in HALF and model_class._supports_flash_attn and _has_flash_attn():
        return "flash_attention_2"
    return "sdpa" if model_class._supports_sdpa else "eager"


def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _image_text_class(config) -> type | None:
    """The class AutoModelForImageTextToText loads for `config`, None where it has none."""
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText._model_mapping[type(config)]
    except KeyError:
        return None
