"""VerboVision: build, train, fine-tune, evaluate and serve vision-language models."""

__version__ = "0.1.0"


def load(model: str, device: str | None = None):
    """Load a model directory, adapter or hub id for captioning and VQA: `verbovision.load(path).caption([img])`."""
    from .infer import VLM

    return VLM(model, device)
