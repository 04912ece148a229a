"""What trains in a stage: per component frozen / full / lora / last:N, and the optimizer's parameter groups.

Components are named by module prefix so one rule serves every VLM that keeps transformers' usual layout
(`model.vision_tower`, `model.multi_modal_projector`, `model.language_model`, `lm_head`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import ConfigError
from .recipe import COMPONENTS, Stage

COMPONENT_PREFIXES = {
    "vision": ("model.vision_tower",),
    "connector": ("model.multi_modal_projector",),
    "language": ("model.language_model", "lm_head"),
}
_PEFT_PREFIX = "base_model.model."


def component_of(name: str) -> str | None:
    name = name.removeprefix(_PEFT_PREFIX)
    for component, prefixes in COMPONENT_PREFIXES.items():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return component
    return None


def _check_layout(model: nn.Module) -> None:
    names = {n for n, _ in model.named_modules()}
    missing = [p for prefixes in COMPONENT_PREFIXES.values() for p in prefixes if p not in names]
    if missing:
        raise ConfigError(f"{type(model).__name__}: per-component training needs modules {missing}, not found")


def last_layers(model: nn.Module, component: str, n: int) -> list[str]:
    """Module names of the last `n` blocks of a component (its longest ModuleList) plus norms after them."""
    prefix = COMPONENT_PREFIXES[component][0]
    lists = [(name, m) for name, m in model.named_modules() if name.startswith(prefix) and isinstance(m, nn.ModuleList)]
    if not lists:
        raise ConfigError(f"{component}: no layer list found for last:{n}")
    list_name, layers = max(lists, key=lambda item: len(item[1]))
    if n > len(layers):
        raise ConfigError(f"{component}: last:{n} but the component has {len(layers)} layers")
    blocks = [f"{list_name}.{i}" for i in range(len(layers) - n, len(layers))]
    norms = [name for name, m in model.named_modules()
             if name.startswith(prefix) and not name.startswith(list_name) and "norm" in name.split(".")[-1].lower()
             and not any(True for _ in m.children())]
    return blocks + norms


def lora_targets(model: nn.Module, components: list[str], target) -> list[str]:
    """Full names of the linear layers LoRA wraps in the given components (never the output head)."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)) or component_of(name) not in components or name == "lm_head":
            continue
        if target == "all-linear" or name.split(".")[-1] in target:
            names.append(name)
    if not names:
        raise ConfigError(f"lora: no linear layers match target {target!r} in {components}")
    return names


def configure_trainable(model: nn.Module, stage: Stage):
    """Freeze and unfreeze per component; wrap with PEFT when a component uses LoRA. Returns (model, uses_lora)."""
    _check_layout(model)
    modes = {c: stage.train.get(c, "frozen") for c in COMPONENTS}
    model.requires_grad_(False)
    full = [p for c, mode in modes.items() if mode == "full" for p in COMPONENT_PREFIXES[c]]
    partial = [m for c, mode in modes.items() if mode.startswith("last:") for m in last_layers(model, c, int(mode[5:]))]
    lora_components = [c for c, mode in modes.items() if mode == "lora"]
    if not lora_components:
        for name, param in model.named_parameters():
            if any(name == m or name.startswith(m + ".") for m in full + partial):
                param.requires_grad_(True)
        _report_nothing_trains(model)
        return model, False
    if "vision" in lora_components:
        warnings.warn("LoRA on the vision tower: serving engines such as vLLM apply LoRA to the language model only; "
                      "merge the adapter before serving there.", stacklevel=2)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=stage.lora.r,
        lora_alpha=stage.lora.alpha,
        lora_dropout=stage.lora.dropout,
        target_modules=lora_targets(model, lora_components, stage.lora.target),
        modules_to_save=(full + partial) or None,
    )
    model = get_peft_model(model, config)
    _report_nothing_trains(model)
    return model, True


def _report_nothing_trains(model: nn.Module) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("every component is frozen: nothing would train")


def param_groups(model: nn.Module, stage: Stage) -> list[dict]:
    """AdamW groups: per component learning rate; no weight decay on biases and norms (1-D tensors)."""
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            component = component_of(name) or "language"
            groups.setdefault((component, param.ndim >= 2), []).append(param)
    lrs = {"vision": stage.lr_vision, "connector": stage.lr_connector, "language": stage.lr_language}
    return [
        {"params": params, "lr": lrs[component] or stage.lr, "weight_decay": stage.weight_decay if decay else 0.0,
         "name": f"{component}{'' if decay else '.no_decay'}"}
        for (component, decay), params in groups.items()
    ]
