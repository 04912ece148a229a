"""Reading a recipe: YAML to the typed schema, with overrides, did-you-mean and cross-checks."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .schema import (
    ATTENTION,
    BEST_METRICS,
    COMPONENTS,
    DTYPES,
    SCST_BASELINES,
    SCST_REWARDS,
    STAGE_TYPES,
    TRAINABILITY,
    ModelBlock,
    Recipe,
    Stage,
)
from .sources import TEMPLATES, TRUNCATION, Source


def shipped_recipe(name: str) -> Path | None:
    """The recipe VerboVision ships under `name` (quickstart, geovlm...; with or without .yaml), if there is one."""
    from importlib import resources

    path = Path(str(resources.files("verbovision") / "recipes" / f"{name.removesuffix('.yaml')}.yaml"))
    return path if path.is_file() else None


def recipe_file(given: str | Path) -> Path:
    """The recipe file `verbo train RECIPE` means: a YAML file, else the shipped recipe of that bare name (a folder
    named like a recipe, such as the quickstart's output folder, does not hide it)."""
    path = Path(given)
    if path.is_file():
        return path
    shipped = shipped_recipe(path.name)
    if shipped and path.parent == Path("."):
        return shipped
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a recipe file; give a recipe YAML (such as recipes/quickstart.yaml)")
    # The README's `recipes/NAME.yaml` exists in a checkout of the repository, not where VerboVision was pip-installed.
    hint = (f"the shipped {path.stem} recipe is `verbo train {path.stem}`" if shipped else
            "give a recipe YAML file or the name of a shipped recipe (quickstart, geovlm...)")
    raise ConfigError(f"{path}: recipe not found; {hint}")


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = recipe_file(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(e)}") from None
    for override in overrides:
        apply_override(raw, override, path)
    return parse_recipe(raw, str(path))


def apply_override(raw: dict, override: str, where: Path | str = "command line") -> None:
    """Set `a.b.0.c=value` in the raw recipe; the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"{where}: override {override!r} must look like key.path=value")
    node: Any = raw
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: override {key}: {part!r} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = _override_value(value, where, key)
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = _override_value(value, where, key)
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{where}: override {key}: cannot descend into {part!r}")


def _override_value(value: str, where: Path | str, key: str):
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:  # often a value the shell split at its spaces: `a={b: 1, c: 2}` unquoted
        raise ConfigError(f"{where}: override {key}: {value!r} is not a YAML value ({_yaml_problem(e)}); in a shell, "
                          "quote an override that holds spaces or is meant as a string: "
                          "'stages.0.train={vision: frozen, language: full}'") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong, and where (PyYAML's own message spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1} column {mark.column + 1}" if mark else problem


def parse_recipe(raw: dict, where: str = "recipe") -> Recipe:
    recipe = _build(Recipe, raw, where, "")
    if not recipe.stages:
        raise ConfigError(f"{where}: stages: at least one stage is required")
    if recipe.model.quantize not in ("none", "4bit", "8bit"):
        raise ConfigError(f"{where}: model.quantize: {recipe.model.quantize!r}; training loads none, 4bit or 8bit")
    check_choice(recipe.model.dtype, DTYPES, f"{where}: model.dtype")
    if recipe.model.dtype == "float16":
        raise ConfigError(f"{where}: model.dtype: float16 trains without the loss scaling it needs; use bfloat16 "
                          "(or auto, float32)")
    check_choice(recipe.model.attn_implementation, ATTENTION, f"{where}: model.attn_implementation")
    if recipe.model.from_ is None:
        _check_scratch_sizes(recipe.model, f"{where}: model")
    for i, stage in enumerate(recipe.stages):
        dense = [c for c, mode in stage.train.items() if mode not in ("frozen", "lora")]
        if recipe.model.quantize != "none" and dense:
            raise ConfigError(f"{where}: stages.{i}.train: {', '.join(dense)} cannot train quantized weights; with "
                              f"model.quantize: {recipe.model.quantize} use lora or frozen")
    names = [stage.name for stage in recipe.stages]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{where}: stages.{i}.name: {name!r} names stages.{names.index(name)} too; give each "
                              "stage its own name (run.json, metrics.jsonl and the report tell stages apart by it)")
    for i, stage in enumerate(recipe.stages):
        _check_stage(stage, f"{where}: stages.{i}")
        if "lora" in stage.train.values() and not stage.merge and i < len(recipe.stages) - 1:
            raise ConfigError(f"{where}: stages.{i}.merge: false on a LoRA stage that another stage follows; the "
                              "next stage needs a base, set merge: true")
    return recipe


def _check_scratch_sizes(model: ModelBlock, where: str) -> None:
    """The sizes of a from-scratch encoder or LM (a negative width, a patch larger than the image would otherwise
    fail inside torch once the model is being built)."""
    sizes = {"vision": ("hidden_size", "layers", "heads", "image_size", "patch_size"),
             "language": ("hidden_size", "layers", "heads", "kv_heads", "max_positions", "vocab_size")}
    for component, names in sizes.items():
        spec = getattr(model, component)
        if spec.name:
            continue
        for name in names:
            value = getattr(spec, name)
            if value is not None and value < 1:
                raise ConfigError(f"{where}.{component}.{name}: must be >= 1")
    if not model.vision.name and model.vision.patch_size > model.vision.image_size:
        raise ConfigError(f"{where}.vision.patch_size: {model.vision.patch_size} is larger than image_size "
                          f"{model.vision.image_size}")


def check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    """`value` is one of `choices`, or an error naming `key` (with its file), the closest choice and all of them."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{key}: {value!r} unknown{hint}; use {', '.join(choices)}")


def _check_stage(stage: Stage, where: str) -> None:
    if stage.type not in STAGE_TYPES:
        raise ConfigError(f"{where}.type: {stage.type!r} unknown; supported: {', '.join(STAGE_TYPES)}")
    if stage.type == "scst":
        _check_scst(stage, where)
    if stage.template not in TEMPLATES:
        raise ConfigError(f"{where}.template: {stage.template!r} unknown; use {', '.join(TEMPLATES)}")
    if stage.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"{where}.schedule: {stage.schedule!r} unknown; use cosine, linear or constant")
    if stage.truncation not in TRUNCATION:
        raise ConfigError(f"{where}.truncation: {stage.truncation!r} unknown; use {' or '.join(TRUNCATION)}")
    if not stage.data.train:
        raise ConfigError(f"{where}.data.train: at least one training source is required")
    _check_weights(stage, where)
    for component, mode in stage.train.items():
        if component not in COMPONENTS:
            raise ConfigError(f"{where}.train.{component}: unknown component; use {', '.join(COMPONENTS)}")
        if mode not in TRAINABILITY and not (mode.startswith("last:") and mode[5:].isdigit()):
            raise ConfigError(f"{where}.train.{component}: {mode!r} must be frozen, full, lora, last:N or cross_attention")
    if isinstance(stage.gradient_checkpointing, list) and set(stage.gradient_checkpointing) - set(COMPONENTS):
        raise ConfigError(f"{where}.gradient_checkpointing: true, false or a list of {', '.join(COMPONENTS)}")
    if stage.merge and "lora" not in stage.train.values():
        raise ConfigError(f"{where}.merge: true needs a component trained with lora")
    if stage.packing is not None and (stage.type == "scst" or stage.packing < 1):
        raise ConfigError(f"{where}.packing: a token budget >= 1, and only for sft stages")
    if stage.best_metric not in BEST_METRICS:
        raise ConfigError(f"{where}.best_metric: {stage.best_metric!r} unknown; use one of {', '.join(BEST_METRICS)}")
    for i, benchmark in enumerate(stage.eval_benchmarks):
        if not benchmark.name:
            raise ConfigError(f"{where}.eval_benchmarks.{i}: give its name (e.g. coco-karpathy)")
    if stage.eval_benchmarks and not stage.data.val:
        raise ConfigError(f"{where}.eval_benchmarks: scored at each validation, which needs data.val records")
    if stage.best_metric != "val_loss" and not stage.data.val:
        raise ConfigError(f"{where}.best_metric: {stage.best_metric} needs data.val records to generate on")
    if stage.early_stopping and not stage.data.val:  # it counts validations without progress: there would be none
        raise ConfigError(f"{where}.early_stopping: counts validations, which need data.val records")
    if stage.feature_cache_dtype not in ("float16", "bfloat16", "float32"):
        raise ConfigError(f"{where}.feature_cache_dtype: use float16, bfloat16 or float32")
    _check_streams(stage, where)
    if stage.data_workers < 0:
        raise ConfigError(f"{where}.data_workers: must be >= 0")
    for name in ("batch_size", "grad_accum", "keep", "stream_buffer", "stream_shards", "log_every"):
        if getattr(stage, name) < 1:
            raise ConfigError(f"{where}.{name}: must be >= 1")
    _check_amounts(stage, where)
    _check_intervals(stage, where)


def _check_intervals(stage: Stage, where: str) -> None:
    """Validation, checkpoint and early-stopping intervals: null turns each to its default, and 0 (which silently did
    the same) is refused, saying so. max_grad_norm 0 is the common "no clipping", as null is."""
    for name, null in (("eval_every", "validate at the end of each epoch"), ("save_every", "checkpoint twice per epoch"),
                       ("early_stopping", "never stop early")):
        value = getattr(stage, name)
        if value is not None and value < 1:
            raise ConfigError(f"{where}.{name}: must be >= 1, or null to {null}")
    if stage.max_grad_norm is not None and not stage.max_grad_norm >= 0:
        raise ConfigError(f"{where}.max_grad_norm: must be >= 0 (0 or null: no clipping)")


def _check_weights(stage: Stage, where: str) -> None:
    for split in ("train", "val"):
        for i, source in enumerate(getattr(stage.data, split)):
            if not 0 <= source.weight < math.inf:
                raise ConfigError(f"{where}.data.{split}.{i}.weight: must be a number >= 0 (the share of "
                                  f"{source.path} drawn per epoch)")
    if not any(source.weight for source in stage.data.train):
        raise ConfigError(f"{where}.data.train: every source has weight 0, so nothing would train")


def _check_amounts(stage: Stage, where: str) -> None:
    """How long and how fast a stage trains, and its LoRA: a value that would train nothing (max_steps: -1, epochs: 0,
    lr: 0), train backwards (a negative lr) or fail inside PEFT is refused by name."""
    if stage.max_steps is not None and stage.max_steps < 1:
        raise ConfigError(f"{where}.max_steps: must be >= 1, or null to train for `epochs`")
    if stage.max_steps is None and not stage.epochs > 0:
        raise ConfigError(f"{where}.epochs: must be > 0 (or set max_steps)")
    for name in ("lr", "lr_vision", "lr_connector", "lr_language"):
        value = getattr(stage, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{where}.{name}: must be > 0 (a component that should not learn is `frozen`)")
    for name in ("warmup", "weight_decay"):
        if getattr(stage, name) < 0:
            raise ConfigError(f"{where}.{name}: must be >= 0")
    if stage.lora.r < 1:
        raise ConfigError(f"{where}.lora.r: must be >= 1")
    if not 0 <= stage.lora.dropout < 1:
        raise ConfigError(f"{where}.lora.dropout: must be in [0, 1)")


def _check_streams(stage: Stage, where: str) -> None:
    streamed = [source.format == "hf-stream" for source in stage.data.train]
    if not any(streamed):
        return
    if not all(streamed):
        raise ConfigError(f"{where}.data.train: streamed (hf-stream) and indexed sources cannot be mixed in one stage")
    # Both reorder a whole epoch, which a stream never holds.
    for name in ("packing", "group_by_length"):
        if getattr(stage, name):
            raise ConfigError(f"{where}.{name}: not available with streamed (hf-stream) training sources")
    if stage.type == "scst":
        raise ConfigError(f"{where}: scst stages need indexed training sources, not hf-stream")


def _check_scst(stage: Stage, where: str) -> None:
    if stage.scst_baseline not in SCST_BASELINES:
        raise ConfigError(f"{where}.scst_baseline: {stage.scst_baseline!r} unknown; use greedy or mean")
    minimum = 2 if stage.scst_baseline == "mean" else 1  # the mean baseline of a sample is over the other samples
    if stage.scst_samples < minimum:
        raise ConfigError(f"{where}.scst_samples: must be >= {minimum} with scst_baseline: {stage.scst_baseline}")
    for name, weight in stage.scst_reward.items():
        if name not in SCST_REWARDS:
            raise ConfigError(f"{where}.scst_reward.{name}: unknown metric; use {' or '.join(SCST_REWARDS)}")
        if weight < 0:
            raise ConfigError(f"{where}.scst_reward.{name}: weight must be >= 0")
    if not any(stage.scst_reward.values()):
        raise ConfigError(f"{where}.scst_reward: at least one metric needs a weight > 0")
    if stage.scst_temperature <= 0:
        raise ConfigError(f"{where}.scst_temperature: must be > 0")
    if stage.scst_top_k is not None and stage.scst_top_k < 1:
        raise ConfigError(f"{where}.scst_top_k: must be >= 1 (or null)")
    if stage.scst_top_p is not None and not 0 < stage.scst_top_p <= 1:
        raise ConfigError(f"{where}.scst_top_p: must be in (0, 1] (or null)")
    if stage.scst_max_new_tokens < 1:
        raise ConfigError(f"{where}.scst_max_new_tokens: must be >= 1")
    for name in ("scst_entropy", "scst_kl"):
        if getattr(stage, name) < 0:
            raise ConfigError(f"{where}.{name}: must be >= 0")
    if stage.keep_best and stage.data.val and stage.best_metric == "val_loss":
        # SCST trades cross-entropy for reward: keeping the lowest validation loss would mostly undo the stage.
        raise ConfigError(f"{where}.best_metric: val_loss would pick the checkpoint SCST changed least; "
                          "use a generation metric (e.g. cider) or keep_best: false")


def _yaml_name(f: dataclasses.Field) -> str:
    return f.name.rstrip("_")  # `from_` is written `from` in YAML


def _build(cls, raw: Any, where: str, key: str):
    if isinstance(raw, str) and cls is Source:
        raw = {"path": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {key or 'recipe'}: expected a mapping, got {raw!r}")
    fields = {_yaml_name(f): f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        path = f"{key}.{name}" if key else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {path}: unknown key{hint}")
        kwargs[fields[name].name] = _convert(hints[fields[name].name], value, where, path)
    required = [name for name, f in fields.items() if f.name not in kwargs
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise ConfigError(f"{where}: {key or 'recipe'}: {required[0]} is required")
    return cls(**kwargs)


def _convert(hint, value, where: str, path: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where, path)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, path)
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_convert(args[0], item, where, f"{path}.{i}") for i, item in enumerate(items)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {path}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, where, f"{path}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            pass
    if hint in (int, str, bool, float) and type(value) is hint:
        return value
    raise ConfigError(f"{where}: {path}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data, in YAML key names (for the run folder)."""

    def convert(obj):
        if dataclasses.is_dataclass(obj):
            return {_yaml_name(f): convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, list):
            return [convert(x) for x in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        return obj

    return convert(recipe)
