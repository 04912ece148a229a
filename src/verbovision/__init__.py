"""VerboVision: build, train, fine-tune, evaluate and serve vision-language models."""

import logging

from . import infer  # `verbovision.infer.DecodeOptions` as the README spells it; imports nothing heavy until used

__version__ = "0.1.0"
__all__ = ["infer", "load"]

# bitsandbytes (imported by PEFT's LoRA wherever it is installed) tries to fetch a CPU kernel from the hub at import
# and warns on every run that it could not, asking to install `kernels` (offline, `kernels` warns that it skipped
# the kernel's trust check); its own CPU code runs instead.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)


def load(model: str, device: str | None = None, dtype: str | None = None, quantize: str = "none"):
    """Load a model directory, adapter or hub id for captioning and VQA: `verbovision.load(path).caption([img])`.

    `dtype`: what the weights load in: auto (the default: bfloat16 on a GPU that supports it, else float32),
    float32, bfloat16 or float16. `quantize`, as `--quantize`: none, int8-dynamic (int8 linear layers on the CPU),
    8bit or 4bit (bitsandbytes, on a CUDA GPU; 4bit on the CPU too)."""
    from .infer import VLM

    return VLM(model, device, quantize=quantize, dtype=dtype)
