"""What a composed model is made of: the specs of its vision encoder, connector and language model."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class VisionSpec:
    """The vision encoder: a hub id or local directory, or a from-scratch size."""

    name: str | None = None
    """Hub id or local directory of a pretrained encoder (CLIP/SigLIP/ViT/DINOv2...); None builds from scratch."""
    arch: str = "siglip"
    """From-scratch architecture: siglip, clip, vit or swin."""
    hidden_size: int = 128
    """From scratch: width of the encoder."""
    layers: int = 4
    """From scratch: number of transformer layers."""
    heads: int = 4
    """From scratch: attention heads."""
    image_size: int = 64
    """From scratch: input resolution (square)."""
    patch_size: int = 8
    """From scratch: patch size in pixels."""
    feature_layer: int = -1
    """Which hidden state feeds the connector (-1 last, -2 penultimate as LLaVA-1.5 does)."""


@dataclass
class LanguageSpec:
    """The causal language model: a hub id or local directory, or a from-scratch size."""

    name: str | None = None
    """Hub id or local directory of a pretrained causal LM (Qwen2.5, Llama 3.2, GPT-2, SmolLM...)."""
    arch: str = "qwen2"
    """From-scratch architecture: qwen2, llama or gpt2."""
    hidden_size: int = 128
    """From scratch: model width."""
    layers: int = 4
    """From scratch: number of decoder layers."""
    heads: int = 4
    """From scratch: attention heads."""
    kv_heads: int | None = None
    """From scratch: key/value heads (grouped-query attention); None means equal to heads."""
    max_positions: int = 512
    """From scratch: longest sequence the model accepts."""
    vocab_size: int = 1024
    """From scratch: size of the BPE vocabulary trained on the data."""


@dataclass
class ConnectorSpec:
    """How image features become LM token embeddings."""

    type: str = "mlp"
    """linear, mlp (two layers) or pixel_shuffle (compress s x s patches into one token, then a gated MLP)."""
    act: str = "gelu"
    """Activation of the mlp connector: gelu or silu (pixel_shuffle always uses SiLU gating)."""
    factor: int = 2
    """pixel_shuffle: s, the side of the patch square merged into one token."""
    hidden_size: int | None = None
    """pixel_shuffle: width of the gated MLP (default 2 x LM width)."""


@dataclass
class ModelSpec:
    """A VLM to build: vision + connector + language, and the image placeholder token."""

    vision: VisionSpec = field(default_factory=VisionSpec)
    language: LanguageSpec = field(default_factory=LanguageSpec)
    connector: ConnectorSpec = field(default_factory=ConnectorSpec)
    image_token: str = "<image>"
    """Placeholder token for image features, e.g. <image> (LLaVA) or <|image_pad|> (Qwen)."""
