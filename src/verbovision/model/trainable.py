"""What trains in a stage: per component frozen / full / lora / last:N / cross_attention, and the optimizer's
parameter groups. Components are found by module name in every family (see families.Components)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.pytorch_utils import Conv1D

from ..config.schema import COMPONENTS, Stage
from ..errors import ConfigError
from ..families import Components, is_cross_attention, is_output_head
from .store import peft_wrapping


def last_layers(model: nn.Module, components: Components, component: str, n: int) -> list[str]:
    """Module names of the last `n` blocks of a component (its longest ModuleList) plus the norms after them."""
    modules = components.modules(model, component)  # in registration order: embeddings, blocks, final norm
    lists = [(name, m) for name, m in modules if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ConfigError(f"train.{component}: last:{n}, but the {component} component has no list of layers; "
                          "use full, frozen or lora")
    list_name, layers = max(lists, key=lambda item: len(item[1]))
    if n > len(layers):
        raise ConfigError(f"train.{component}: last:{n}, but the {component} component has {len(layers)} layers; "
                          f"use last:1 to last:{len(layers)} or full")
    blocks = [f"{list_name}.{i}" for i in range(len(layers) - n, len(layers))]
    after = [name for name, _ in modules].index(list_name)
    norms = [name for name, m in modules[after:]
             if not name.startswith(list_name + ".") and "norm" in type(m).__name__.lower()]
    return blocks + norms


def cross_attention(model: nn.Module, components: Components, component: str) -> list[str]:
    """Module names of a component's cross-attention (and its norms), for `cross_attention` training."""
    names = [name for name, _ in components.modules(model, component) if is_cross_attention(name)]
    if not names:
        raise ConfigError(f"train.{component}: cross_attention, but the {component} component has no "
                          "cross-attention modules (only encoder-decoder models have them)")
    return names


def lora_targets(model: nn.Module, components: Components, trained: list[str], target) -> list[str]:
    """Full names of the linear layers LoRA wraps in the given components; never the output head over the vocabulary
    (PEFT's all-linear leaves it out too)."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)) or components.of(name) not in trained:
            continue
        if is_output_head(name):
            continue
        if target == "all-linear" or name.split(".")[-1] in target:
            names.append(name)
    if not names:
        raise ConfigError(f"lora: no linear layers match target {target!r} in {trained}")
    return names


def _modules_for(model: nn.Module, components: Components, component: str, mode: str) -> list[str]:
    """The modules a full / last:N / cross_attention mode trains."""
    if mode == "full":
        return list(components.prefixes[component])
    if mode.startswith("last:"):
        return last_layers(model, components, component, int(mode[5:]))
    if mode == "cross_attention":
        return cross_attention(model, components, component)
    return []


def trained_modules(model: nn.Module, stage: Stage) -> tuple[list[str], list[str]]:
    """What a stage trains on a model: the modules it trains whole (full / last:N / cross_attention) and the linear
    layers LoRA wraps. Changes nothing, so every stage of a recipe can be checked before the first trains; a mode
    the model cannot take is an error naming the component."""
    components = Components(model)
    modes = {c: stage.train.get(c, "frozen") for c in COMPONENTS}
    for component, mode in modes.items():
        if mode != "frozen" and not components.prefixes[component]:
            raise ConfigError(f"train.{component}: {mode}, but {type(model).__name__} has no {component} component")
    trained = [m for c, mode in modes.items() for m in _modules_for(model, components, c, mode)]
    lora_components = [c for c, mode in modes.items() if mode == "lora"]
    targets = lora_targets(model, components, lora_components, stage.lora.target) if lora_components else []
    if not targets and not any(_in(name, trained) for name, _ in model.named_parameters()):
        raise ConfigError("train: every component is frozen: nothing would train")
    return trained, targets


def _in(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def configure_trainable(model: nn.Module, stage: Stage):
    """Freeze and unfreeze per component; wrap with PEFT when a component uses LoRA. Returns (model, uses_lora)."""
    trained, targets = trained_modules(model, stage)
    model.requires_grad_(False)
    if not targets:
        for name, param in model.named_parameters():
            if _in(name, trained):
                param.requires_grad_(True)
        return train_in_float32(model), False
    if stage.train.get("vision") == "lora":
        warnings.warn("LoRA on the vision tower: serving engines such as vLLM apply LoRA to the language model only; "
                      "merge the adapter before serving there.", stacklevel=2)
    bare = [name for name, _ in model.named_parameters() if name in trained]
    if bare:
        warnings.warn(f"LoRA stage: {', '.join(bare)} stay frozen: they are parameters outside any module, and PEFT "
                      "adapters save whole modules only; train them in a stage without LoRA.", stacklevel=2)
        trained = [m for m in trained if m not in bare]
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=stage.lora.r,
        lora_alpha=stage.lora.alpha,
        lora_dropout=stage.lora.dropout,
        target_modules=targets,
        modules_to_save=_callable_modules(model, trained) or None,
    )
    with peft_wrapping():  # PEFT keeps LoRA weights float32 on a 16-bit base (autocast_adapter_dtype)
        return train_in_float32(get_peft_model(model, config, autocast_adapter_dtype=True)), True


def train_in_float32(model: nn.Module) -> nn.Module:
    """What trains in float32, whatever the frozen weights' dtype (mixed precision: the updates, and the optimizer
    states made like them, keep their small steps; the forward meets the two dtypes under autocast)."""
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def train_mode(model: nn.Module, training: bool = True) -> None:
    """`model.train(training)`, except that batch norms whose parameters are frozen stay in eval mode: training mode
    would update their running statistics, so a frozen component (Emu3's VQ-VAE) would change, and no adapter
    carries those buffers: the merged model would differ from base + adapter."""
    model.train(training)
    for module in model.modules():
        # the type first: a model has few batch norms and many modules whose parameters it need not walk
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad
                                                                           for p in module.parameters()):
            module.eval()


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block (dropout off: validation, generation, a merge's logit check), back in
    the mode it was in after it (`train_mode`, so frozen batch norms stay in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        train_mode(model, was_training)


def _callable_modules(model: nn.Module, names: list[str]) -> list[str]:
    """Module names for PEFT's modules_to_save, which copies modules that have a forward: a container (Qwen3-VL's
    ModuleList of DeepStack mergers) stands for its children."""
    modules = dict(model.named_modules())
    out = []
    for name in names:
        if isinstance(modules[name], (nn.ModuleList, nn.ModuleDict)):
            out += _callable_modules(model, [f"{name}.{child}" for child, _ in modules[name].named_children()])
        else:
            out.append(name)
    return out


def param_groups(model: nn.Module, stage: Stage) -> list[dict]:
    """AdamW groups: per component learning rate; no weight decay on biases and norms (1-D tensors)."""
    components = Components(model)
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            component = components.of(name) or "language"
            groups.setdefault((component, param.ndim >= 2), []).append(param)
    lrs = {"vision": stage.lr_vision, "connector": stage.lr_connector, "language": stage.lr_language}
    return [
        {"params": params, "lr": lrs[component] or stage.lr, "weight_decay": stage.weight_decay if decay else 0.0,
         "name": f"{component}{'' if decay else '.no_decay'}"}
        for (component, decay), params in groups.items()
    ]


def enable_checkpointing(model: nn.Module, which: bool | list[str]) -> None:
    """Activation checkpointing (recompute in the backward pass what the forward pass would keep) on every layer
    (True), or on the layers of the listed components only: the long-sequence language model, say, and not the
    vision tower whose activations are small or frozen."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers releases before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if which is True:
        return
    components = Components(model)
    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer) and components.of(name) not in which:
            module.gradient_checkpointing = False


def disable_checkpointing(model: nn.Module) -> None:
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:  # transformers releases before the rename
        model.gradient_checkpointing_disable()
