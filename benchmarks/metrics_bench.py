"""Benchmark verbovision.evaluate's metrics against pycocoevalcap on 5,000 images x 5 references.

Both sides start from raw captions, so PTB tokenization is included (pycocoevalcap's runs the Stanford
tokenizer in Java). The tokenized captions and the corpus scores must be identical (==, not approximately
equal); the timings go to stdout and are appended to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/metrics_bench.py [--images 5000] [--repeats 3] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from verbovision.evaluate.bleu import bleu  # noqa: E402
from verbovision.evaluate.captions import score_captions  # noqa: E402
from verbovision.evaluate.cider import CiderD  # noqa: E402
from verbovision.evaluate.ptb import ptb_tokenize, tokenize_captions  # noqa: E402
from verbovision.evaluate.rouge import rouge_l  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

# A COCO-like vocabulary. Each image gets a scene (subject, action, place, detail); its captions paraphrase the
# scene with synonyms, so references share n-grams the way COCO references do.
SUBJECTS = [["man", "guy", "person", "gentleman"], ["woman", "lady", "girl"], ["boy", "kid", "child"],
            ["dog", "puppy"], ["cat", "kitten"], ["giraffe"], ["zebra"], ["elephant"], ["horse", "pony"],
            ["bus", "city bus"], ["train", "passenger train"], ["plane", "airplane", "jet"], ["skier"],
            ["surfer"], ["skateboarder", "skater"], ["tennis player"], ["baseball player", "batter"],
            ["couple", "pair of people"], ["group of people", "crowd", "bunch of people"], ["bird", "seagull"],
            ["bear", "brown bear"], ["cow", "cattle"], ["sheep", "lamb"], ["motorcycle", "motorbike"],
            ["truck", "pickup truck"], ["chef", "cook"], ["teddy bear", "stuffed animal"], ["pizza"],
            ["clock tower", "clock"], ["fire hydrant", "hydrant"], ["laptop", "computer"], ["kite"]]
ADJECTIVES = ["young", "old", "large", "small", "white", "black", "red", "blue", "brown", "little", "big",
              "yellow", "green", "wooden", "black-and-white", "smiling", "tall", "happy", "colorful", "busy"]
ACTIONS = [["sitting on", "sits on", "is sitting on", "seated on"], ["standing in", "stands in", "is standing in"],
           ["walking down", "walks down", "strolling down"], ["riding", "rides", "is riding"],
           ["holding", "holds", "carrying"], ["playing with", "plays with"], ["looking at", "watching"],
           ["eating", "eats", "munching on"], ["parked next to", "parked by"], ["flying over", "flies over"],
           ["laying on", "lying on", "resting on"], ["jumping over", "leaping over"],
           ["running through", "runs through"], ["standing next to", "next to", "beside"],
           ["waiting at", "waits at"], ["crossing", "crosses"]]
PLACES = [["a field", "a grassy field", "the grass"], ["the street", "a city street", "the road"],
          ["a table", "a wooden table", "the table"], ["a beach", "the sand", "the shore"],
          ["the snow", "a snowy slope", "a ski slope"], ["a kitchen", "the kitchen counter"],
          ["a bench", "a park bench"], ["a wave", "the ocean", "the water"], ["a tennis court", "the court"],
          ["a fence", "a wooden fence"], ["a train station", "the platform", "the tracks"],
          ["a dirt road", "a dirt path"], ["a living room", "a couch"], ["a plate", "a white plate"],
          ["the sidewalk", "a sidewalk"], ["a building", "a tall building"], ["the sky", "a blue sky"],
          ["a parking lot", "the lot"], ["a zoo enclosure", "an enclosure"], ["a river", "a lake"]]
DETAILS = ["with a frisbee", "in front of a building", "on a sunny day", "near some trees", "at night",
           "next to a car", "with two people", "in the background", "covered in snow", "under an umbrella",
           "during the day", "with a bag", "near the water", "on a cloudy day", "by a window"]
# Less common constructions, so the tokenizer's general path is exercised at a realistic rate.
RARE = ["the man's hat", "it's raining", "a 3-year-old", "two (2) dogs", '"stop" sign', "St. Louis",
        "don't walk", "10 people", "a T-shirt", "cars, trucks, and buses"]


def caption(rng: random.Random, scene: tuple[int, int, int, str], drift: float) -> str:
    """One caption of the scene; each of subject, action and place is replaced at random with probability drift."""
    subject, action, place, detail = scene
    if rng.random() < drift:
        subject = rng.randrange(len(SUBJECTS))
    if rng.random() < drift:
        action = rng.randrange(len(ACTIONS))
    if rng.random() < drift:
        place = rng.randrange(len(PLACES))
    words = [rng.choice(["a", "the", "an", "two", "some", "one"])] if rng.random() < 0.8 else []
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    words += [rng.choice(SUBJECTS[subject]), rng.choice(ACTIONS[action]), rng.choice(PLACES[place])]
    if rng.random() < 0.4:
        words.append(detail if rng.random() < 0.6 else rng.choice(DETAILS))
    if rng.random() < 0.08:
        words.append(rng.choice(RARE))
    text = " ".join(words)
    if rng.random() < 0.15:
        text = text.replace(" " + words[-1], ", " + words[-1], 1)
    if rng.random() < 0.85:
        text = text[0].upper() + text[1:]
    return text + ("." if rng.random() < 0.7 else "")


def make_data(n_images: int, n_refs: int, seed: int = 0) -> tuple[dict[int, str], dict[int, list[str]]]:
    rng = random.Random(seed)
    predictions, references = {}, {}
    for image in range(n_images):
        scene = (rng.randrange(len(SUBJECTS)), rng.randrange(len(ACTIONS)), rng.randrange(len(PLACES)),
                 rng.choice(DETAILS))
        references[image] = [caption(rng, scene, drift=0.15) for _ in range(n_refs)]
        predictions[image] = caption(rng, scene, drift=0.4).lower().rstrip(".")  # a model's imperfect guess
    return predictions, references


Captions = dict[int, list[str]]
Run = tuple[dict[str, float], dict[str, float], tuple[list[str], list[list[str]]]]
"""A run's corpus scores, stage timings, and tokenized (hypotheses, references)."""


def run_ours(predictions: dict[int, str], references: Captions) -> Run:
    keys = list(references)
    hyps_raw = [predictions[k] for k in keys]
    refs_raw = [references[k] for k in keys]
    times = {}
    start = time.perf_counter()
    hyps = ptb_tokenize(hyps_raw)
    refs = list(tokenize_captions(dict(zip(keys, refs_raw))).values())
    times["tokenize"] = time.perf_counter() - start
    start = time.perf_counter()
    bleu(hyps, refs)
    times["BLEU"] = time.perf_counter() - start
    start = time.perf_counter()
    rouge_l(hyps, refs)
    times["ROUGE-L"] = time.perf_counter() - start
    start = time.perf_counter()
    CiderD().score(hyps, refs)
    times["CIDEr-D"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = score_captions(predictions, references, metrics=("bleu", "rouge_l", "cider"))
    times["total (score_captions)"] = time.perf_counter() - start
    return scores.corpus, times, (hyps, refs)


def run_pycocoevalcap(predictions: dict[int, str], references: Captions) -> Run:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    times, corpus = {}, {}
    start = time.perf_counter()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
    res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in references})
    times["tokenize"] = time.perf_counter() - start
    stages: list[tuple[str, Callable]] = [("BLEU", lambda: Bleu(4).compute_score(gts, res, verbose=0)),
                                          ("ROUGE-L", lambda: Rouge().compute_score(gts, res)),
                                          ("CIDEr-D", lambda: Cider().compute_score(gts, res))]
    for stage, scorer in stages:
        start = time.perf_counter()
        score, _ = scorer()
        times[stage] = time.perf_counter() - start
        if stage == "BLEU":
            corpus.update({f"Bleu_{k + 1}": s for k, s in enumerate(score)})
        else:
            corpus["ROUGE_L" if stage == "ROUGE-L" else "CIDEr"] = float(score)
    times["total (score_captions)"] = sum(times.values())
    return corpus, times, ([res[k][0] for k in references], [gts[k] for k in references])


def median_times(runs: list[dict[str, float]]) -> dict[str, float]:
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, numpy {np.__version__}, "
            f"{java[0] if java else 'java ?'}, load average {os.getloadavg()[0]:.1f} at the end")


def table(ours: dict[str, float], theirs: dict[str, float]) -> str:
    lines = ["| stage | ours (s) | pycocoevalcap (s) | speed-up |", "|---|---:|---:|---:|"]
    for stage in ours:
        lines.append(f"| {stage} | {ours[stage]:.3f} | {theirs[stage]:.3f} | {theirs[stage] / ours[stage]:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()

    predictions, references = make_data(args.images, args.refs)
    our_runs, their_runs = [], []
    for _ in range(args.repeats):
        their_corpus, their_time, their_tokens = run_pycocoevalcap(predictions, references)
        our_corpus, our_time, our_tokens = run_ours(predictions, references)
        assert our_tokens == their_tokens, "PTB tokenization differs from pycocoevalcap's"
        assert our_corpus == their_corpus, f"scores differ:\n ours {our_corpus}\n pycocoevalcap {their_corpus}"
        our_runs.append(our_time)
        their_runs.append(their_time)
    result = table(median_times(our_runs), median_times(their_runs))
    scores = ", ".join(f"{k} {v:.6f}" for k, v in our_corpus.items())
    print(f"{args.images} images x {args.refs} references, median of {args.repeats} runs; identical scores: {scores}")
    print(result)
    if not args.no_record:
        record(args, result, scores)


def record(args: argparse.Namespace, result: str, scores: str) -> None:
    if not RESULTS.exists() or RESULTS.stat().st_size == 0:
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n")
    with RESULTS.open("a") as f:
        f.write(f"\n## metrics_bench.py, {datetime.date.today().isoformat()}\n\n"
                f"{args.images} images x {args.refs} references (generated, seed 0), raw captions, PTB tokenization "
                f"included on both sides; median of {args.repeats} runs. Tokens and corpus scores identical (==): "
                f"{scores}.\n"
                f"Machine: {machine()}.\n\n{result}\n")


if __name__ == "__main__":
    main()
