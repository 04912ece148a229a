"""`verbo quickstart`: the whole pipeline offline in minutes on a CPU.

Synthesize the shapes dataset, train the quickstart recipe's tiny VLM from scratch, evaluate it on the held-out
short English captions, caption a few test images, and write the run's report.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config.parse import load_recipe, shipped_recipe
from .data.synth import synth_shapes
from .errors import ConfigError
from .evaluate.run import evaluate
from .files import read_json
from .train.report import sample_captions, write_report
from .train.run import train_recipe

TEST_FILE = "test/caption_short_en.json"
IMAGES = 12000
"""Synthetic images: more distinct images teach the from-scratch encoder shapes faster than more epochs."""


def quickstart(out: Path, n: int = IMAGES, overrides: list[str] = ()) -> dict:
    start = time.time()
    data = out / "data" / "shapes"
    made = read_json(data / "dataset_info.json")
    if made and made["n"] != n:  # its run trained on those: a rerun continues it, on them
        raise ConfigError(f"--out {out}: holds a quickstart on {made['n']} images; rerun it with --n {made['n']}, or "
                          f"choose another --out for {n}")
    if not made:
        print(f"[1/4] synthesizing {n} shapes images -> {data}")
        synth_shapes(data, n=n, seed=0, langs=("en",))
    recipe = load_recipe(shipped_recipe("quickstart"), [f"data_root={data}", *overrides])
    run = out / "run"
    print(f"[2/4] training {recipe.name} from scratch -> {run}")
    train_recipe(recipe, run, resume=(run / "run.json").exists())
    print("[3/4] evaluating on the held-out test split")
    scores = evaluate(run / "final", data / TEST_FILE, out / "eval", metrics=("exact_match", "bleu", "cider"),
                      batch_size=64)
    report = write_report(run, sample_captions(run / "final", recipe), scores.summary())
    print("[4/4] captions of test images:")
    for row in scores.predictions[:5]:
        print(f"  {Path(row['image']).name}: {row['prediction']!r}  (reference: {row['references'][0]!r})")
    minutes = (time.time() - start) / 60
    print(f"\nexact match (short English captions, {len(scores.predictions)} test images): "
          f"{scores.values['exact_match']:.3f}")
    print(f"BLEU-4: {scores.values['Bleu_4']:.3f}   CIDEr-D: {scores.values['CIDEr']:.3f}")
    print(f"wall time: {minutes:.1f} min; report: {report}")
    return scores.values
