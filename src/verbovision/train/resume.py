"""What `verbo train --resume` may continue: a run folder, with the recipe it started with (config.yaml) changed only
where continuing with the change still trains the run that was started."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from ..config.parse import parse_recipe, to_dict
from ..config.schema import Recipe
from ..errors import ConfigError
from . import runinfo

CONTINUABLE = ("eval_every", "save_every", "log_every", "keep", "data_workers", "compile", "gradient_checkpointing",
               "cache_pixels")
"""Stage keys a resumed run may change: how often it validates, checkpoints and logs, how many checkpoints it keeps,
and how it computes the same steps (data workers, torch.compile, activation recomputation, pixels kept in memory)."""

LENGTHS = ("max_steps", "epochs")
"""Stage keys a resumed run may raise, for a stage not finished yet: it trains on from where it stopped (its lr
schedule then spans the new length from the step it resumes at)."""

RELOCATABLE = ("data_root",)
"""Recipe keys a resumed run may change: where its data lies (moved, or mounted elsewhere); the data itself is
checked against run.json's fingerprints."""

ABSENT = "(none)"


def check_resumed_run(recipe: Recipe, out: Path, run: dict, processes: int = 1) -> None:
    """Refuse to resume the run in `out` (its run.json: `run`) with another recipe or other data than it trains on,
    or in another number of `processes` than its checkpointed stage trained in."""
    check_resumed_recipe(recipe, out)
    check_resumed_processes(recipe, out, run, processes)
    current = runinfo.data_fingerprints(recipe)
    changed = [path for path, digest in run.get("data_fingerprints", {}).items() if current.get(path, digest) != digest]
    if changed:
        # Other records would make the resumed epochs differ from the ones its checkpoints were cut from.
        raise ConfigError(f"{out}: --resume: {', '.join(changed)} changed since the run started (run.json's "
                          "data_fingerprints); restore it, or start a new run with another --out")


def check_resumed_processes(recipe: Recipe, out: Path, run: dict, processes: int) -> None:
    """A stage resumed from a checkpoint goes on in as many processes as it trained in: batch_size is per process, so
    another count would change the global batch (and the epoch's steps, the checkpoint's place in them) partway, as
    a changed batch_size would, while run.json recorded the new count for the whole stage."""
    for index, stage in enumerate(recipe.stages):
        stage_dir = out / "stages" / f"{index}-{stage.name}"
        started = run.get("summary", {}).get(stage.name, {}).get("batch", {}).get("processes", processes)
        checkpointed = any(stage_dir.glob("checkpoints/step-*")) and not (stage_dir / "done.json").exists()
        if checkpointed and started != processes:
            raise ConfigError(f"{out}: --resume in {processes} process{'es' if processes > 1 else ''}, but stage "
                              f"{stage.name} trained in {started} (batch_size is per process: its batches would "
                              f"change partway); resume with --nproc {started}, or start a new run with another --out")


def check_resumed_recipe(recipe: Recipe, out: Path) -> None:
    """Compare `recipe` with the one the run in `out` was started or last resumed with (its config.yaml): print a note
    for each change in CONTINUABLE or LENGTHS, and refuse any other (model, data, batch size, lr, template, LoRA,
    seed...): continuing with it would leave a run whose steps followed two recipes, recorded as one."""
    saved_path = out / "config.yaml"
    if not saved_path.exists():
        return
    saved = to_dict(parse_recipe(yaml.safe_load(saved_path.read_text(encoding="utf-8")), str(saved_path)))
    finished = {i for i, stage in enumerate(recipe.stages) if (out / "stages" / f"{i}-{stage.name}/done.json").exists()}
    notes, refused = recipe_changes(saved, to_dict(recipe), finished)
    if refused:
        raise ConfigError(f"{out}: --resume with a recipe changed from the run's config.yaml: {'; '.join(refused)}; "
                          "revert them, or start a new run with another --out")
    for note in notes:
        print(f"verbo: resuming {out} with {note}", file=sys.stderr)


def recipe_changes(saved: dict, new: dict, finished: set[int]) -> tuple[list[str], list[str]]:
    """The changes from `saved` to `new` (recipes as to_dict gives them) as `key: old -> new`: those a resumed run
    may make (CONTINUABLE stage keys; LENGTHS raised, of a stage not in `finished`; RELOCATABLE keys), and the
    others."""
    allowed, refused = [], []
    for key, old, value in changed_keys(saved, new):
        parts = key.split(".")
        name = parts[-1] if parts[0] == "stages" and len(parts) == 3 else None  # a key of the stage itself
        raised = (name in LENGTHS and int(parts[1]) not in finished
                  and all(isinstance(v, (int, float)) for v in (old, value)) and value > old)
        keeps = name in CONTINUABLE or raised or key in RELOCATABLE
        (allowed if keeps else refused).append(f"{key}: {shown(old)} -> {shown(value)}")
    return allowed, refused


def changed_keys(old, new, key: str = ""):
    """(dotted key, old value, new value) of each value that differs; lists of different lengths differ as a whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in dict.fromkeys([*old, *new]):
            yield from changed_keys(old.get(name, ABSENT), new.get(name, ABSENT), f"{key}.{name}" if key else name)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from changed_keys(a, b, f"{key}.{i}")
    elif old != new:
        yield key, old, new


def shown(value) -> str:
    """A recipe value on one short line."""
    text = value if value == ABSENT else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
