"""Generation: decode options, the VLM a user loads, the early-leaving greedy loop, prompts and messages, `verbo
predict` and `verbo chat`.

The Python API: `verbovision.load(path)` gives a `VLM`; `DecodeOptions` says how it decodes."""

from .options import DecodeOptions
from .vlm import VLM

__all__ = ["VLM", "DecodeOptions"]
