"""VerboVision: build, train, fine-tune, evaluate and serve vision-language models."""

__version__ = "0.1.0"
