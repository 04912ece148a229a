"""SCST on the shapes data: held-out CIDEr-D of a deliberately under-trained cross-entropy model, before and after
an SCST stage, against a control that spends the same optimizer steps on more cross-entropy. Mean and spread over
seeds (each seed: its own initialisation, data order and sampling; the data is the same).

    python benchmarks/scst_bench.py            # prints a table, appends it to benchmarks/RESULTS.md
    python benchmarks/scst_bench.py --quick    # fewer steps and records (smoke test, not recorded)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from datetime import date
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from results import publish  # noqa: E402

from verbovision.config.parse import parse_recipe
from verbovision.data.sources import read_records
from verbovision.data.synth import synth_shapes
from verbovision.evaluate.metrics import score  # noqa: E402
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.train.run import train_recipe

# The quickstart's model and learning rate (a from-scratch ViT learns shapes at 6e-4, never at 2e-3).
MODEL = {"vision": {"arch": "siglip", "hidden_size": 128, "layers": 3, "heads": 4, "image_size": 64, "patch_size": 8},
         "language": {"arch": "qwen2", "hidden_size": 128, "layers": 3, "heads": 4, "vocab_size": 512},
         "connector": {"type": "pixel_shuffle", "act": "silu", "factor": 2}}
CAPTIONS = {"train": ["train/caption_short_en.json"]}
FULL = {"images": 3000, "ce_steps": 200, "extra_steps": 250, "batch": 32, "scst_batch": 16, "eval_records": 150,
        "scst_lr": 5e-5, "samples": 8, "baseline": "mean"}
"""Settings that give SCST a gain beyond seed noise here; the first recorded run (lr 2e-4, 5 samples, greedy baseline,
8 images per step) did not (see RESULTS.md)."""
QUICK = {**FULL, "images": 120, "ce_steps": 20, "extra_steps": 5, "batch": 8, "scst_batch": 4, "eval_records": 20}


def ce_stage(name: str, steps: int, batch: int) -> dict:
    return {"name": name, "template": "plain", "data": CAPTIONS, "max_steps": steps, "batch_size": batch, "lr": 6e-4,
            "schedule": "constant", "warmup": 0, "log_every": 10,
            "train": {"vision": "full", "connector": "full", "language": "full"}}


def scst_stage(config: dict) -> dict:
    return {"name": "scst", "type": "scst", "template": "plain", "data": CAPTIONS, "max_steps": config["extra_steps"],
            "batch_size": config["scst_batch"], "lr": config["scst_lr"], "schedule": "constant", "warmup": 0,
            "log_every": 10, "scst_samples": config["samples"], "scst_baseline": config["baseline"],
            "train": {"vision": "frozen", "connector": "full", "language": "full"}}


def held_out_cider(model_dir: Path, records: list) -> float:
    replies = VLM(model_dir, device="cpu").generate_records(records, DecodeOptions(max_new_tokens=32))
    result = score({r.id: reply for r, reply in zip(records, replies)}, {r.id: r.references for r in records},
                   ["cider"], ci=False)
    return result.values["CIDEr"]


def train(name: str, seed: int, data: Path, model: dict, stages: list[dict], out: Path) -> Path:
    recipe = {"name": name, "seed": seed, "data_root": str(data), "model": model, "stages": stages}
    train_recipe(parse_recipe(recipe), out)
    return out / "final"


def run_seed(seed: int, data: Path, work: Path, config: dict, records: list) -> dict[str, float]:
    """Held-out CIDEr-D of the under-trained CE model, after SCST, and after as many more CE steps."""
    ce = train("scst-bench-ce", seed, data, MODEL, [ce_stage("ce", config["ce_steps"], config["batch"])],
               work / f"ce-{seed}")
    start = {"from": str(ce.resolve())}  # both arms continue the same under-trained model
    scst = train("scst-bench-scst", seed, data, start, [scst_stage(config)], work / f"scst-{seed}")
    more_ce = train("scst-bench-more-ce", seed, data, start,
                    [ce_stage("more-ce", config["extra_steps"], config["batch"])], work / f"more-ce-{seed}")
    return {arm: held_out_cider(model, records) for arm, model in
            (("ce", ce), ("scst", scst), ("more_ce", more_ce))}


def table(results: list[dict[str, float]], config: dict, seeds: list[int]) -> str:
    rows = [("cross-entropy, under-trained", "ce"), (f"+ {config['extra_steps']} SCST steps", "scst"),
            (f"+ {config['extra_steps']} more cross-entropy steps (control)", "more_ce")]
    machine = f"{date.today()}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    lines = [f"### scst_bench — {machine}", "",
             f"shapes data ({config['images']} images, short English captions, one reference each), model "
             f"SigLIP 3x128 @64/8 + pixel shuffle + Qwen2 3x128 from scratch; CE {config['ce_steps']} steps x "
             f"{config['batch']} (lr 6e-4), then {config['extra_steps']} steps of SCST (batch {config['scst_batch']} "
             f"images x {config['samples']} samples, {config['baseline']} baseline, CIDEr-D reward, lr "
             f"{config['scst_lr']}, vision frozen) or of CE "
             f"(batch {config['batch']}); held-out CIDEr-D of "
             f"greedy captions on {config['eval_records']} validation images; seeds {seeds}.",
             "", "| model | CIDEr-D mean | std | per seed |", "|---|---:|---:|---|"]
    for label, key in rows:
        values = [r[key] for r in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {label} | {statistics.mean(values):.3f} | {spread:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in values)} |")
    gains = [r["scst"] - r["ce"] for r in results]
    control = [r["scst"] - r["more_ce"] for r in results]
    lines += ["", f"SCST gain over the under-trained model: {statistics.mean(gains):+.3f} (per seed "
              f"{', '.join(f'{g:+.3f}' for g in gains)}); over the same steps of cross-entropy: "
              f"{statistics.mean(control):+.3f} (per seed {', '.join(f'{g:+.3f}' for g in control)})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scst-lr", type=float, help=f"SCST learning rate (default {FULL['scst_lr']})")
    parser.add_argument("--samples", type=int, help=f"samples per image (default {FULL['samples']})")
    parser.add_argument("--baseline", choices=["greedy", "mean"], help="reward baseline (default greedy)")
    parser.add_argument("--scst-batch", type=int, help=f"images per SCST step (default {FULL['scst_batch']})")
    parser.add_argument("--steps", type=int, help=f"SCST (and control) steps (default {FULL['extra_steps']})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    chosen = {"scst_lr": args.scst_lr, "samples": args.samples, "baseline": args.baseline,
              "scst_batch": args.scst_batch, "extra_steps": args.steps}
    config = {**(QUICK if args.quick else FULL), **{k: v for k, v in chosen.items() if v is not None}}
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shapes"
        synth_shapes(data, n=config["images"], seed=1234, langs=("en",))
        records = read_records(data / "val/caption_short_en.json")[: config["eval_records"]]
        results = [run_seed(seed, data, Path(tmp), config, records) for seed in args.seeds]
    publish(table(results, config, args.seeds), record=not (args.quick or args.no_record))


if __name__ == "__main__":
    main()
