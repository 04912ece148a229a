"""Quantized loading: int8 dynamic quantization on CPU, bitsandbytes 8-bit/4-bit on CUDA GPUs and CPUs.

- `int8-dynamic` needs nothing beyond torch: after a normal float32 load, every `nn.Linear` is swapped for one that
  stores int8 weights and quantizes its input on the fly. It is for inference on CPU only; the result cannot be
  trained, merged or saved as a transformers checkpoint, so the model is marked (`verbovision_quantized`) and code
  that writes weights must refuse it.
- `8bit` / `4bit` are bitsandbytes quantization applied by `from_pretrained` (QLoRA trains on them); they need the
  `bitsandbytes` package, an optional install, and a CUDA GPU; 4-bit also runs on the CPU from bitsandbytes 0.49
  (`BITSANDBYTES_CPU`), where it saves memory rather than time (int8-dynamic is the fast CPU inference)."""

from __future__ import annotations

import warnings

import torch

from ..errors import ConfigError, VerboError
from ..families import Components

QUANTIZATION = ("none", "int8-dynamic", "8bit", "4bit")
QUANTIZED_ATTR = "verbovision_quantized"
"""Set on a model quantized in memory; its value is the mode. Merging and saving must refuse such a model."""

KEEP_FLOAT = ("connector",)
"""Components (see families.Components) whose Linear layers `quantize_dynamic_int8` leaves in float32. Measured on
the trained quickstart model (1,200 held-out images, greedy; float32 exact match 0.969): quantizing every Linear changed 20 captions (16 right ->
wrong, 2 wrong -> right) and cost 1.2 points of exact match; keeping the connector float changed 7 (3 and 3), exact
match unchanged, BLEU-4 and CIDEr-D within 0.001. Every image token passes through the connector, so its error
reaches the whole image; and it runs once per image, not per generated token, so float costs ~nothing in speed.
The output head (lm_head) IS quantized: with it float or int8 the 1,200 captions were identical, so it does not
measurably hurt here, and with a large vocabulary it is the biggest matmul of every decoding step."""


BITSANDBYTES_CPU = (0, 49)
"""The first bitsandbytes release whose CPU 4-bit quantization does not crash the process (0.46 to 0.48 segfaulted in
their native blockwise quantization, loading the tests' tiny models)."""


def quantization_config(mode: str, device: torch.device | None = None) -> dict:
    """Extra `from_pretrained` kwargs for `mode` on `device` (default: the current CUDA GPU, else the CPU): empty for
    "none" and "int8-dynamic" (applied after loading).

    "4bit" is the QLoRA setting (NF4, double quantization, bfloat16 compute); "8bit" is LLM.int8(). Both are
    bitsandbytes kernels: where they cannot run on `device` this raises VerboError saying what to install or use,
    rather than letting transformers fail later with a less direct message.
    """
    if mode not in QUANTIZATION:
        raise ConfigError(f"quantization {mode!r} unknown; choose one of {', '.join(QUANTIZATION)}")
    if mode in ("none", "int8-dynamic"):
        return {}
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    problem = _bitsandbytes_problem(mode, device)
    if problem:
        raise VerboError(f"{mode} quantization (bitsandbytes) cannot run here: {problem}")
    from transformers import BitsAndBytesConfig

    if mode == "4bit":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.bfloat16)
        dtype = torch.bfloat16  # the unquantized rest (norms, embeddings) in the compute dtype
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
        dtype = torch.float16  # LLM.int8() computes its outlier columns in float16
    # bitsandbytes places weights while loading; a quantized model cannot be moved with `.to()` afterwards.
    return {"quantization_config": config, "dtype": dtype, "device_map": {"": str(device)}}


def _bitsandbytes_problem(mode: str, device: torch.device) -> str | None:
    """Why bitsandbytes cannot quantize a model in `mode` on `device`, or None where it can."""
    if device.type not in ("cuda", "cpu"):
        return f"it has no kernels for {device.type}; use --device cuda or cpu"
    if mode == "8bit" and device.type == "cpu":
        # Its CPU int8 matmul takes inputs of up to 3 dimensions: a pixel-shuffle connector's 4 fail in inference.
        return "its 8-bit layers run on CUDA GPUs only; on the CPU use 4bit, or int8-dynamic for inference"
    try:
        import bitsandbytes
    except Exception:  # noqa: BLE001 - a broken CUDA setup raises more than ImportError
        int8 = "; on CPU, int8-dynamic needs nothing more" if device.type == "cpu" else ""
        return f"bitsandbytes is not installed (pip install bitsandbytes){int8}"
    release = tuple(int(part) for part in bitsandbytes.__version__.split(".")[:2])
    if device.type == "cpu" and release < BITSANDBYTES_CPU:
        wanted = ".".join(map(str, BITSANDBYTES_CPU))
        return f"bitsandbytes {bitsandbytes.__version__} crashes quantizing on the CPU: pip install -U " \
               f"'bitsandbytes>={wanted}'"
    return None


def quantize_dynamic_int8(model: torch.nn.Module, keep_float: tuple[str, ...] = KEEP_FLOAT) -> torch.nn.Module:
    """Swap the model's `nn.Linear` layers for int8 dynamic ones, in place, except those of the components in
    `keep_float`; returns the model.

    Weights are quantized once, per output channel (a per-tensor scale lets one large row crush the small ones);
    activations are quantized per batch at run time, so no calibration data is needed. The model must be a float32
    model on the CPU: the int8 kernels (fbgemm/x86) exist only there. It is put in eval mode, since the swapped
    layers have no gradients.
    """
    if getattr(model, QUANTIZED_ATTR, None) == "int8-dynamic":
        return model
    if hasattr(model, "peft_config"):
        raise VerboError("int8-dynamic cannot quantize a model with an unmerged adapter; merge it first (verbo merge)")
    linears = {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise VerboError(f"int8-dynamic runs on the CPU only; the model is on {', '.join(sorted(devices))} "
                         "(load it with device cpu, or use 8bit/4bit on a CUDA GPU)")
    dtypes = {m.weight.dtype for m in linears.values()}
    if dtypes - {torch.float32}:
        raise VerboError(f"int8-dynamic quantizes float32 weights; the model's are {dtypes} (load it in float32)")
    # torch.ao.quantization is deprecated in favour of torchao but works in this torch; silence just its notices.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        components = Components(model)
        spec = {name: per_channel_dynamic_qconfig for name in linears if components.of(name) not in keep_float}
        quantize_dynamic(model.eval(), spec, dtype=torch.qint8, inplace=True)
    setattr(model, QUANTIZED_ATTR, "int8-dynamic")
    return model


def is_quantized(model) -> bool:
    """Whether the model was quantized in memory by VerboVision or loaded with bitsandbytes."""
    return bool(getattr(model, QUANTIZED_ATTR, None) or getattr(model, "is_quantized", False))
