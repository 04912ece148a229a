"""Before the first step: every stage of a recipe checked against the data it reads and the model it trains, so that
a mistake in the last stage (`last:8` on a 4-layer language model, a missing file, a chat template the model lacks)
fails before the first stage has trained.

Every stage trains the architecture the run starts from: a stage's model is the previous stage's, whole or with its
LoRA adapter merged back in. So one weightless copy of the starting model (on the meta device) answers for them all."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..config.schema import Recipe
from ..data.encoding import Encoder
from ..data.rows import source_path
from ..data.streams import is_stream
from ..errors import ConfigError, DataError, VerboError
from ..evaluate.metrics import HUMAN_ANSWER_METRICS
from ..families import family_of
from ..model.store import adapter_base, check_model_location, explained_import_error, is_adapter, load_processor
from ..model.trainable import trained_modules
from .scst import check_reward_references
from .setup import validation_records

JAVA_METRICS = ("meteor",)
"""best_metric values computed by a Java program (pycocoevalcap's METEOR)."""


def check_data_files(recipe: Recipe) -> None:
    """Every stage's data files (and image folders) exist; streamed sources are opened when their stage starts. A
    best_metric that runs a Java program (METEOR) has Java to run it."""
    root = Path(recipe.data_root)
    for index, stage in enumerate(recipe.stages):
        if stage.best_metric in JAVA_METRICS and shutil.which("java") is None:
            raise ConfigError(f"stages.{index} ({stage.name}): best_metric {stage.best_metric} runs the official Java "
                              "program and java is not found: install a Java runtime (e.g. apt install default-jre) "
                              "or choose another best_metric")
        for source in stage.data.train + stage.data.val:
            if is_stream(source):
                continue
            path = source_path(source, root)
            if not path.exists():
                raise DataError(f"stages.{index} ({stage.name}): {path}: data file not found")
            if source.image_root and not (root / source.image_root).is_dir():
                raise DataError(f"stages.{index} ({stage.name}): image_root {root / source.image_root} of {path}: "
                                "no such folder")


def check_processes(recipe: Recipe, processes: int) -> None:
    """What the stages can train in `processes` processes: SCST in one only (checked before any stage trains, or
    before `--nproc` launches any process)."""
    for index, stage in enumerate(recipe.stages):
        if processes > 1 and stage.type == "scst":
            raise ConfigError(f"stages.{index} ({stage.name}): scst stages run in one process (several are not "
                              "supported yet); train the recipe without --nproc, or its scst stage on its own")


def check_stages(recipe: Recipe, base: str) -> None:
    """Every stage's trainable components, LoRA targets and template against the model the run starts from."""
    check_model_location(base)
    if is_adapter(base) and recipe.model.quantize != "none":
        raise ConfigError(f"model.from {base}: an adapter, which would be merged into {recipe.model.quantize} "
                          f"weights (lossy); merge it in full precision first (verbo merge {base} --out DIR) and start "
                          "from DIR")
    source = adapter_base(base) if is_adapter(base) else base  # as load_model reads an adapter: onto its base
    model = model_skeleton(source)
    processor = load_processor(source)
    family = family_of(model.config)
    for index, stage in enumerate(recipe.stages):
        try:
            # The encoder first: it refuses a family VerboVision cannot feed, the reason users need before any other
            Encoder(processor, stage.template, stage.max_length, stage.truncation, family)
            trained_modules(model, stage)
        except VerboError as e:
            raise ConfigError(f"stages.{index} ({stage.name}): {e}") from None
        if stage.best_metric in HUMAN_ANSWER_METRICS:  # one its validation records cannot score
            validation_records(recipe, stage)
        if stage.type == "scst":
            check_reward_references(recipe, stage)


def model_skeleton(path: str) -> torch.nn.Module:
    """The model's modules as its config builds them, with no weights (parameters on the meta device)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path))
    except ImportError as e:  # a module of the model needs a package (FastVLM's timm tower)
        raise explained_import_error(e, path, "model") from None
