"""`verbo train`: run a recipe's stages, each starting from the previous stage's model.

Run folder layout:
    config.yaml           the resolved recipe
    run.json              metadata: versions and git commit (of the first start; `resumes`: of each resume), data
                          fingerprints, stage outputs, adapters and their bases
    init/                 the built model (when the recipe builds one)
    stages/<i>-<name>/    checkpoints/step-N/ (for --resume), best.safetensors, adapter/, model/
    final -> ...          the last stage's model (or adapter)
    metrics.jsonl, tensorboard/, loss.png, report.md"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..config.parse import to_dict
from ..config.schema import Recipe
from ..data.records import SkipLog, require_usable
from ..data.rows import source_path
from ..data.sources import source_records
from ..data.tokenizer import train_bpe_tokenizer
from ..errors import ConfigError
from ..files import blocking_file, read_json, write_atomic, write_json
from ..model.build import build_vlm, save_model, spec_record
from ..model.store import run_final
from . import runinfo
from .distributed import Processes
from .loop import run_stage, seed_everything
from .preflight import check_data_files, check_processes, check_stages
from .resume import check_resumed_run
from .state import StageResult


def train_recipe(recipe: Recipe, out: str | Path, resume: bool = False, procs: Processes | None = None) -> dict:
    """Run the recipe's stages into the run folder `out`. A run that fails before its first step (a mistyped path, a
    stage that cannot start) takes back what it wrote into a new or empty `out`: there is nothing to resume, and the
    corrected command then runs as typed. An interrupted one (Ctrl-C) keeps it for --resume. `procs`: this run's
    processes (default: one, unless launched by --nproc or `accelerate launch`)."""
    out = Path(out)
    blocking = blocking_file(out)
    if blocking:
        raise ConfigError(f"{out}: {blocking} is a file, not a folder; choose another --out for the run")
    check_data_files(recipe)
    before = folder_state(out)
    procs = procs or Processes()
    try:
        return run_recipe(procs, recipe, out, resume)
    except Exception:
        # Several processes: `verbo train --nproc` takes it back once all have stopped (one process removing the
        # folder would pull init/ from under the others, which then fail on it with a traceback).
        if not procs.distributed:
            forget_failed_start(out, *before)
        raise


def folder_state(out: Path) -> tuple[bool, bool]:
    """Whether the run folder `out` is absent, and whether it is absent or empty (a run starting afresh in it)."""
    absent = not out.exists()
    return absent, absent or not any(out.iterdir())


def forget_failed_start(out: Path, absent: bool, fresh: bool) -> None:
    """Take back what a run that started afresh (`folder_state` before it) wrote into `out`, if it never took a step."""
    if fresh and not took_a_step(out):
        remove_failed_start(out, absent)


def took_a_step(out: Path) -> bool:
    """Whether a run has logged, checkpointed or finished anything of a stage."""
    stages = out / "stages"
    return ((out / "metrics.jsonl").exists() or any(stages.glob("*/checkpoints/*"))
            or any(stages.glob("*/done.json")))


def remove_failed_start(out: Path, absent: bool) -> None:
    """Remove what a run that never took a step wrote: the folder, or (where it was there, empty) what is in it."""
    for path in [out] if absent else list(out.iterdir()):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_recipe(procs: Processes, recipe: Recipe, out: Path, resume: bool) -> dict:
    check_processes(recipe, procs.world_size)
    if procs.is_main_process:
        check_out_folder(out, resume)
        if resume and (out / "run.json").exists():
            check_resumed_run(recipe, out, read_json(out / "run.json"), procs.world_size)
    procs.barrier()
    out.mkdir(parents=True, exist_ok=True)
    run = read_json(out / "run.json")
    run = runinfo.resumed(run) if run else runinfo.describe_run(recipe)
    if procs.is_main_process:
        write_atomic(out / "config.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True))
        write_json(out / "run.json", run)
    seed_everything(recipe.seed)
    base = procs.main_process_first(lambda: initial_model(recipe, out, run))
    check_stages(recipe, base)
    logger = runinfo.MetricsLogger(out, write=procs.is_main_process)
    results = []
    for index, stage in enumerate(recipe.stages):
        stage_dir = out / "stages" / f"{index}-{stage.name}"
        done = read_json(stage_dir / "done.json")
        if done:
            # Its folders where the run is now: the run may have moved, or be named by another path, since it finished.
            result = StageResult(**{**done, **{key: str(stage_dir / Path(done[key]).name)
                                               for key in ("model_dir", "adapter_dir") if done[key]}})
        else:
            result = run_stage(procs, recipe, index, stage, base, stage_dir, logger, run, resume)
            if procs.is_main_process:
                write_json(stage_dir / "done.json", result.__dict__)
            procs.barrier()
        results.append(result)
        base = result.model_dir
        run.setdefault("stages", {})[stage.name] = {k: v for k, v in result.__dict__.items() if k != "history"}
        if result.adapter_dir:
            run.setdefault("adapters", [])
            rel = str(Path(result.adapter_dir).relative_to(out))
            if rel not in run["adapters"]:
                run["adapters"].append(rel)
        if procs.is_main_process:
            write_json(out / "run.json", run)
    logger.close()
    if procs.is_main_process:
        final = out / "final"
        if final.is_symlink() or final.exists():
            final.unlink()
        final.symlink_to(Path(results[-1].model_dir).relative_to(out))
        runinfo.plot_losses(out)
    procs.barrier()
    return run


def check_out_folder(out: Path, resume: bool) -> None:
    """A run starts in a new or empty folder, and --resume continues a run folder (one with run.json; an empty or
    new one starts the run): other files would mix with the run's, or be taken for a run's."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / "run.json").exists():
        raise ConfigError(f"{out}: not empty and not a run folder (no run.json); choose another --out for the run")
    if not resume:
        raise ConfigError(f"{out}: run folder exists and is not empty; pass --resume to continue it or choose --out")


def initial_model(recipe: Recipe, out: Path, run: dict) -> str:
    """The model the first stage starts from: an existing VLM, or one built (and saved to init/) for this run."""
    if recipe.model.from_:
        return run_final(recipe.model.from_)
    init = out / "init"
    if (init / "config.json").exists():
        return str(init)
    spec = recipe.model.spec()
    tokenizer = None
    if not spec.language.name:
        tokenizer = train_bpe_tokenizer(training_texts(recipe), spec.image_token, spec.language.vocab_size)
    model, processor = build_vlm(spec, tokenizer)
    metadata = {"model_spec": spec_record(spec), "template": recipe.stages[0].template}
    save_model(model, processor, init, metadata)
    run["init"] = {"parameters": sum(p.numel() for p in model.parameters()), "architecture": type(model).__name__}
    return str(init)


def training_texts(recipe: Recipe):
    """Every turn of every training source, plus the chat template's role names, for training a tokenizer. A source
    with no usable record is an error here already (as it is when its stage starts): a tokenizer trained without its
    text would be kept in init/ by --resume."""
    yield "user assistant system\n"
    root = Path(recipe.data_root)
    for stage in recipe.stages:
        for what, sources in (("training records", stage.data.train), ("validation records", stage.data.val)):
            for source in sources:
                skips, usable = SkipLog(), 0
                for record in source_records(source, root, skips):
                    usable += 1
                    for turn in record.turns:
                        yield turn.text
                require_usable(usable, skips, f"{what} in {source_path(source, root)}", f"stage {stage.name}")


def train_and_report(recipe: Recipe, out: Path, resume: bool = False, evaluation: dict | None = None) -> Path | None:
    """Train, then write report.md with the loss curves, skipped records and sample outputs of the final model; in
    the main process only (None in the others), as the run's other files are."""
    from .report import sample_captions, write_report

    procs = Processes()
    train_recipe(recipe, out, resume, procs)
    if not procs.is_main_process:
        return None
    return write_report(out, sample_captions(out / "final", recipe), evaluation)
