"""`verbo quickstart`, `build`, `train` and `merge`: the commands that make a model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError, VerboError
from ..files import blocking_file
from .common import Command, add_dtype_option


def _quickstart_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="quickstart", help="output folder (default: quickstart)")
    p.add_argument("--n", type=int, help="number of synthetic images (default: 12000)")


def cmd_quickstart(args: argparse.Namespace) -> None:
    from ..quickstart import IMAGES, quickstart

    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n {args.n}: the demo needs at least 1 image")
    blocking = blocking_file(args.out)
    if blocking:
        raise ConfigError(f"--out {args.out}: {blocking} is a file, not a folder; choose another --out")
    quickstart(Path(args.out), n=IMAGES if args.n is None else args.n)


QUICKSTART = Command("offline demo: synth data -> train -> eval -> captions -> report", _quickstart_arguments,
                     cmd_quickstart, "examples:\n  verbo quickstart --out quickstart")


def _build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vision", required=True, help="hub id or directory of a vision encoder (SigLIP, CLIP, ViT...)")
    p.add_argument("--language", required=True, help="hub id or directory of a causal LM")
    p.add_argument("--connector", default="mlp", choices=["linear", "mlp", "pixel_shuffle"],
                   help="how image features become LM embeddings")
    p.add_argument("--act", choices=["gelu", "silu"], help="mlp: the connector's activation (default: gelu); "
                                                           "pixel_shuffle's gated MLP is SiLU")
    p.add_argument("--factor", type=int, help="pixel_shuffle: s x s patches per image token (default: 2)")
    p.add_argument("--feature-layer", type=int, default=-1, help="encoder hidden state fed to the connector")
    p.add_argument("--image-token", default="<image>", help="the text token that stands for an image feature")
    p.add_argument("--out", required=True, help="folder of the composed model (a standard checkpoint)")


def cmd_build(args: argparse.Namespace) -> None:
    from ..config.model import ConnectorSpec, LanguageSpec, ModelSpec, VisionSpec
    from ..model.build import CONNECTOR_FIELDS, build_vlm, describe, save_model, spec_record
    from ..model.store import check_model_out

    check_model_out(args.out, {"vision encoder": args.vision, "language model": args.language})
    if not args.language:
        raise ConfigError("--language needs a pretrained LM (hub id or directory); from-scratch LMs are built by "
                          "`verbo train` from a recipe, which trains their tokenizer on the data")
    given = {key: value for key, value in (("act", args.act), ("factor", args.factor)) if value is not None}
    unused = [f"--{key}" for key in given if key not in CONNECTOR_FIELDS[args.connector]]
    if unused:
        raise ConfigError(f"{', '.join(unused)}: the {args.connector} connector has no such setting")
    if args.connector == "pixel_shuffle":
        given.setdefault("act", "silu")  # the only one its gated MLP (Cohere2Vision's) has
    spec = ModelSpec(
        vision=VisionSpec(name=args.vision, feature_layer=args.feature_layer),
        language=LanguageSpec(name=args.language),
        connector=ConnectorSpec(type=args.connector, **given),
        image_token=args.image_token,
    )
    model, processor = build_vlm(spec)
    save_model(model, processor, args.out, {"model_spec": spec_record(spec), "template": "chat"})
    print(f"{describe(model)} saved to {args.out}")


BUILD = Command(
    "compose a pretrained vision encoder + connector + LM into a standard checkpoint", _build_arguments, cmd_build,
    "examples:\n  verbo build --vision google/siglip-base-patch16-224 --language Qwen/Qwen2.5-0.5B-Instruct "
    "--connector pixel_shuffle --act silu --factor 2 --image-token '<|image_pad|>' --out models/geovlm-init")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML, or the name of a shipped recipe (quickstart, "
                                                     "geovlm...: the files of recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override recipe keys")
    p.add_argument("--out", help="run folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    p.add_argument("--nproc", type=int,
                   help="data-parallel processes (GPUs, or CPU processes with gloo); batch_size is per process "
                        "(default: the --accelerate-config's num_processes, else 1)")
    p.add_argument("--accelerate-config", help="an Accelerate config (configs/accelerate/: DeepSpeed ZeRO-2/3, FSDP) "
                                               "to launch the processes with")


def _processes(args: argparse.Namespace) -> int:
    """--nproc, else the num_processes of --accelerate-config (which would otherwise be ignored), else 1; a count or
    config that would be ignored (a run in one plain process instead) or fail later is an error."""
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: the number of processes is at least 1")
    config = args.accelerate_config
    if not config:
        return args.nproc or 1
    if not Path(config).is_file():
        raise ConfigError(f"--accelerate-config {config}: no such file (configs/accelerate/ has examples)")
    nproc = args.nproc
    if nproc is None:
        import yaml

        try:
            nproc = int((yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}).get("num_processes", 1))
        except (OSError, ValueError, AttributeError, yaml.YAMLError) as e:
            raise ConfigError(f"--accelerate-config {config}: cannot read its num_processes ({e})") from None
    if nproc == 1:
        raise ConfigError(f"--accelerate-config launches 2 or more processes (--nproc, else its num_processes: here "
                          f"1); for one process: accelerate launch --config_file {config} -m verbovision train ...")
    return nproc


def cmd_train(args: argparse.Namespace) -> None:
    from ..config.parse import load_recipe, recipe_file
    from ..train.run import train_and_report

    path = recipe_file(args.recipe)
    if path != Path(args.recipe):
        print(f"verbo: training the shipped recipe {path}", file=sys.stderr)
    recipe = load_recipe(path, args.overrides)
    out = Path(args.out or Path("runs") / recipe.name)
    nproc = _processes(args) if "LOCAL_RANK" not in os.environ else 1  # a launched process is one of them
    if nproc > 1:  # not yet launched: start the processes, each runs this
        from ..train.distributed import launch
        from ..train.preflight import check_processes

        check_processes(recipe, nproc)
        from ..train.run import folder_state, forget_failed_start

        argv = ["train", str(path), *args.overrides, "--out", str(out)] + (["--resume"] if args.resume else [])
        before = folder_state(out)
        errors = launch(nproc, argv, args.accelerate_config)
        if errors:
            forget_failed_start(out, *before)  # as one process does; here once all of them have stopped
            raise VerboError("; ".join(errors))
        return
    if train_and_report(recipe, out, resume=args.resume):  # the main process: the others wrote nothing
        print(f"run folder: {out}  (final model: {out / 'final'}, report: {out / 'report.md'})")


TRAIN = Command(
    "run a recipe's training stages", _train_arguments, cmd_train,
    "examples:\n  verbo train recipes/quickstart.yaml data_root=data/shapes --out runs/qs\n"
    "  verbo train recipes/geovlm.yaml stages.0.lr=3e-4 stages.1.epochs=2 --out runs/geo\n"
    "  verbo train recipes/geovlm.yaml --out runs/geo --resume\n"
    "  verbo train recipes/geovlm.yaml --nproc 8 --accelerate-config configs/accelerate/zero2.yaml\n"
    "  accelerate launch --config_file configs/accelerate/fsdp.yaml -m verbovision train recipes/geovlm.yaml")


def _merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", metavar="ADAPTER_OR_RUN", help="a LoRA adapter directory, or a run (its last adapter)")
    p.add_argument("--out", required=True, help="folder of the merged model (a standard checkpoint)")
    p.add_argument("--tolerance", type=float,
                   help="largest logit difference accepted (default: 1e-4 for float32 weights; for 16-bit ones, "
                        "8 units of their precision at the largest logit)")
    add_dtype_option(p)


def cmd_merge(args: argparse.Namespace) -> None:
    from ..merge import merge_adapter

    print(merge_adapter(args.adapter, args.out, tolerance=args.tolerance, dtype=args.dtype).summary())


MERGE = Command(
    "merge a LoRA adapter into its base (read from metadata) and verify the logits", _merge_arguments, cmd_merge,
    "examples:\n  verbo merge runs/pt/stages/0-pretrain/adapter --out models/pt-merged\n"
    "  verbo merge runs/pt --out models/pt-merged      # the run's last adapter")
