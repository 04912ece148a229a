"""Shared fixtures: tiny random models of real architectures, saved as local checkpoints, and synthetic data.

Nothing touches the network: every "pretrained" model here is a random tiny one saved to a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Nothing in the tests downloads: a hub id that reaches the hub fails at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
# Equality tests compare float32 paths; on GPUs TF32 matmuls and convolutions would round them apart. The variable
# reaches the subprocesses the tests start (verbo commands) as well as this one.
os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
# `make test` runs pytest-xdist workers, one per core: each computes on one thread (set before torch is imported; the
# verbo commands a test starts inherit it). Tiny models gain nothing from intra-op threads, and two workers' thread
# pools contending for the same cores made the suite several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
    SiglipVisionConfig,
    ViTConfig,
)

from verbovision.data.synth import synth_shapes
from verbovision.data.tokenizer import train_bpe_tokenizer
from verbovision.model.build import image_processor

from .helpers import TINY_LM, TINY_VISION, stage, tiny_recipe

VISION_CONFIGS = {
    "siglip": lambda: SiglipVisionConfig(**TINY_VISION),
    "clip": lambda: CLIPVisionConfig(**TINY_VISION),
    "vit": lambda: ViTConfig(**TINY_VISION),
}


def _lm_config(arch: str, vocab: int):
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=512, vocab_size=vocab)
    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    return cls(**TINY_LM, vocab_size=vocab)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    synth_shapes(out, n=40, seed=0, langs=("en", "pt"))
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer_texts():
    words = "a an the large small red green blue yellow purple orange circle square triangle star and there is are "
    words += "um uma círculo estrela vermelho vermelha grande pequeno pequena describe image briefly angle answer"
    return [words, "Describe the image briefly.", "How many shapes are there?", "user assistant system\n"]


@pytest.fixture(scope="session")
def tiny_vision(tmp_path_factory):
    """Save a tiny random vision encoder (with an image processor) per architecture; returns arch -> directory."""

    def make(arch: str) -> str:
        out = tmp_path_factory.mktemp(f"vision-{arch}")
        torch.manual_seed(0)
        AutoModel.from_config(VISION_CONFIGS[arch]()).save_pretrained(out)
        image_processor("Siglip", size={"height": 32, "width": 32}).save_pretrained(out)
        return str(out)

    return {arch: make(arch) for arch in VISION_CONFIGS}


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, tiny_tokenizer_texts):
    """Save a tiny random causal LM + BPE tokenizer per architecture; returns arch -> directory."""

    def make(arch: str) -> str:
        out = tmp_path_factory.mktemp(f"lm-{arch}")
        tokenizer = train_bpe_tokenizer(tiny_tokenizer_texts, "<|image_pad|>", vocab_size=300)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(_lm_config(arch, len(tokenizer))).save_pretrained(out)
        tokenizer.save_pretrained(out)
        return str(out)

    return {arch: make(arch) for arch in ("qwen2", "llama", "gpt2")}


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, shapes_data):
    """template -> a tiny model trained with that template for a few steps on the short captions (prompt "Describe
    the image briefly."), so that it writes text; each trained once per session."""
    import yaml

    from verbovision.cli import main


    models = {}

    def train(template: str) -> Path:
        if template not in models:
            root = tmp_path_factory.mktemp(f"{template}-model")
            trains = {"vision": "full", "connector": "full", "language": "full"}
            recipe = tiny_recipe(shapes_data, [stage("full", template=template, train=trains, max_steps=30, lr=3e-3)])
            (root / "r.yaml").write_text(yaml.safe_dump(recipe))
            assert main(["train", str(root / "r.yaml"), "--out", str(root / "run")]) == 0
            models[template] = root / "run/final"
        return models[template]

    return train


@pytest.fixture(scope="session")
def model_dir(trained_model) -> Path:
    """A tiny chat-template model that writes text (see trained_model)."""
    return trained_model("chat")


@pytest.fixture(scope="session")
def plain_model_dir(trained_model) -> Path:
    """A tiny plain-template model that writes text, as the quickstart's is trained (see trained_model)."""
    return trained_model("plain")


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, shapes_data) -> Path:
    """A tiny two-stage run whose last stage leaves an unmerged LoRA adapter."""
    import yaml

    from verbovision.cli import main


    root = tmp_path_factory.mktemp("cli")
    recipe = tiny_recipe(shapes_data, [
        stage("full", train={"vision": "full", "connector": "full", "language": "full"}, max_steps=30, lr=3e-3),
        stage("lora", train={"vision": "frozen", "connector": "frozen", "language": "lora"},
              lora={"r": 4, "alpha": 8, "dropout": 0.0}, max_steps=3),
    ])
    (root / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(root / "r.yaml"), "--out", str(root / "run")]) == 0
    return root / "run"


