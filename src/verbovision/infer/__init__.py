"""Generation: decode options, the VLM a user loads, the early-leaving greedy loop, prompts and messages, `verbo
predict` and `verbo chat`.

The Python API: `verbovision.load(path)` gives a `VLM`; `DecodeOptions` says how it decodes."""

__all__ = ["VLM", "DecodeOptions"]


def __getattr__(name: str):
    """`verbovision.infer.VLM` and `.DecodeOptions`, imported when first asked for: importing a light module of the
    package (its options, for a flag's default) then does not load torch and transformers."""
    if name == "VLM":
        from .vlm import VLM

        return VLM
    if name == "DecodeOptions":
        from .options import DecodeOptions

        return DecodeOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
