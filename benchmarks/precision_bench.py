"""The quickstart recipe trained in float32 and in bfloat16 weights (`model.dtype`), on the same data and seed: the
validation-loss curves side by side and each model's held-out scores, evaluated in its own dtype.

On a CUDA GPU `auto` is bfloat16, so this is how the quickstart behaves there against the float32 CPU run; a CPU
with AMX-BF16 / AVX512-BF16 computes the same bfloat16 arithmetic, so the comparison runs (slower) on such a CPU too.
Everything the quickstart trains is float32 either way (VerboVision keeps trainable weights and optimizer states in
float32); bfloat16 means its forward and backward run under bfloat16 autocast, and the saved model is bfloat16.

    python benchmarks/precision_bench.py [--out /tmp/precision] [--n 12000]
    python benchmarks/precision_bench.py --no-record     # print the table only, nothing appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from results import publish

DTYPES = ("float32", "bfloat16")
METRICS = ("exact_match", "Bleu_4", "CIDEr")


def val_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/precision", help="folder for the data and both runs")
    parser.add_argument("--n", type=int, default=None, help="synthetic images (default: the quickstart's)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()

    import torch
    import transformers

    from verbovision.config.parse import load_recipe, shipped_recipe
    from verbovision.data.synth import synth_shapes
    from verbovision.evaluate.run import evaluate
    from verbovision.model.store import default_device
    from verbovision.quickstart import IMAGES, TEST_FILE
    from verbovision.train.run import train_recipe

    out = Path(args.out)
    data = out / "data"
    if not (data / "dataset_info.json").exists():
        synth_shapes(data, n=args.n or IMAGES, seed=0, langs=("en",))
    curves, scores = {}, {}
    for dtype in DTYPES:
        run = out / dtype
        train_recipe(load_recipe(shipped_recipe("quickstart"), [f"data_root={data}", f"model.dtype={dtype}"]), run,
                     resume=(run / "run.json").exists())
        curves[dtype] = val_losses(run)
        result = evaluate(run / "final", data / TEST_FILE, out / f"eval-{dtype}", metrics=("exact_match", "bleu",
                          "cider"), batch_size=64, dtype=dtype, with_loss=False)
        scores[dtype] = result.values

    steps = sorted(set(curves["float32"]) & set(curves["bfloat16"]))
    gaps = [abs(curves["bfloat16"][s] - curves["float32"][s]) for s in steps]
    cpu = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    machine = torch.cuda.get_device_name() if default_device().type == "cuda" else cpu
    lines = ["## Quickstart in float32 and bfloat16 weights (benchmarks/precision_bench.py)", "",
             f"recipes/quickstart.yaml on {args.n or IMAGES} synthesized images, seed 0, once with model.dtype float32 "
             f"and once bfloat16 (trainable weights float32 in both; bfloat16: autocast, saved in bfloat16); each "
             f"evaluated in its own dtype on the {TEST_FILE} split, greedy; {time.strftime('%Y-%m-%d')}, {machine}, "
             f"torch {torch.__version__}, transformers {transformers.__version__}.", "",
             "| dtype | " + " | ".join(METRICS) + " | final val loss |", "|---|" + "---:|" * (len(METRICS) + 1)]
    for dtype in DTYPES:
        lines.append(f"| {dtype} | " + " | ".join(f"{scores[dtype][m]:.3f}" for m in METRICS)
                     + f" | {curves[dtype][steps[-1]]:.4f} |")
    lines += ["", "validation loss, float32 / bfloat16, at each validation: "
              + ", ".join(f"{s}: {curves['float32'][s]:.4f} / {curves['bfloat16'][s]:.4f}" for s in steps),
              f"largest gap {max(gaps):.4f} (at step {steps[gaps.index(max(gaps))]}), "
              f"mean gap {sum(gaps) / len(gaps):.4f} over {len(steps)} validations."]
    publish("\n".join(lines), record=not args.no_record)


if __name__ == "__main__":
    main()
