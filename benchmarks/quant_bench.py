"""Int8 dynamic quantization on CPU: captions/s and caption metrics, float32 vs int8-dynamic, same run, same images.

Loads a trained model twice on the CPU, quantizes the second copy with
`verbovision.model.quantize.quantize_dynamic_int8`, and captions the first --n held-out images of the quickstart data
(test/caption_short_en.json), greedy, at batch 1 and at batch 16. The two models alternate round by round (and which
goes first alternates too), so that load from other jobs on the machine falls on both alike; captions/s is the median
over --repeats rounds, with the range. The batch-16 captions of the first round are scored (exact match, CIDEr-D,
BLEU-4 via `verbovision.evaluate.metrics.score`). One torch thread by default: on a 2-core machine shared with other
jobs, 2 threads made batch-1 captioning 60x slower (0.8 vs 52 captions/s, threads spinning on each other), which would
drown the effect measured here.

    python benchmarks/quant_bench.py [--model quickstart/run/final] [--data quickstart/data/shapes] [--n 300]
    python benchmarks/quant_bench.py --no-record     # print the table only, nothing appended to RESULTS.md
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
import warnings

from results import held_out_records, publish, quickstart_options

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METRICS = (("exact_match", "exact match"), ("CIDEr", "CIDEr-D"), ("Bleu_4", "BLEU-4"))


def weights_mb(model) -> float:
    """Size of the serialized state dict (shared tensors counted once, as torch.save stores them)."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def timed(vlm, records, options, batch_size: int) -> tuple[float, list[str]]:
    start = time.perf_counter()
    replies = vlm.generate_records(records, options, batch_size)
    return len(records) / (time.perf_counter() - start), replies


def main() -> None:
    parser = quickstart_options(__doc__)
    args = parser.parse_args()

    import torch

    from verbovision.evaluate.metrics import score
    from verbovision.infer.options import DecodeOptions
    from verbovision.infer.vlm import VLM
    from verbovision.model.quantize import quantize_dynamic_int8

    records = held_out_records(args)
    models = {"float32": VLM(args.model, device="cpu"), "int8-dynamic": VLM(args.model, device="cpu")}
    quantize_dynamic_int8(models["int8-dynamic"].model)
    options = DecodeOptions(max_new_tokens=args.max_new_tokens)
    load_start = os.getloadavg()[0]

    speed = {(name, bs): [] for name in models for bs in (1, 16)}
    captions: dict[str, list[str]] = {}
    for vlm in models.values():  # warm-up: first calls allocate and pick kernels
        vlm.generate_records(records[:16], options, 16)
        vlm.generate_records(records[:2], options, 1)
    for batch_size in (16, 1):
        for round_ in range(args.repeats):
            order = list(models) if round_ % 2 == 0 else list(reversed(models))
            for name in order:
                rate, replies = timed(models[name], records, options, batch_size)
                speed[name, batch_size].append(rate)
                if batch_size == 16 and name not in captions:
                    captions[name] = replies
    references = {r.id: r.references for r in records}
    scores = {name: score({r.id: c for r, c in zip(records, replies)}, references,
                          ("exact_match", "bleu", "cider"), ci=False).values
              for name, replies in captions.items()}
    same = sum(a == b for a, b in zip(captions["float32"], captions["int8-dynamic"])) / len(records)
    sizes = {name: weights_mb(vlm.model) for name, vlm in models.items()}
    quantized = sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in models["int8-dynamic"].model.modules())
    kept = [n for n, m in models["int8-dynamic"].model.named_modules() if type(m) is torch.nn.Linear]
    report(args, records, speed, scores, same, sizes, (quantized, kept), load_start)


def report(args, records, speed, scores, same, sizes, layers, load_start) -> None:
    import torch

    quantized, kept = layers
    median = {key: statistics.median(rates) for key, rates in speed.items()}

    def rate(name: str, bs: int) -> str:
        rates = speed[name, bs]
        return f"{median[name, bs]:.1f} ({min(rates):.1f}-{max(rates):.1f})"

    lines = ["## Int8 dynamic quantization on CPU (benchmarks/quant_bench.py)", "",
             f"model {args.model}; the first {len(records)} held-out images of {args.data}/test/caption_short_en.json, "
             f"greedy, up to {args.max_new_tokens} new tokens; float32 vs int8-dynamic ({quantized} Linear layers "
             f"int8 with per-channel weights; kept float32, as the connector: {', '.join(kept) or 'none'}) "
             f"loaded side by side and alternated round by round; captions/s: median (range) of {args.repeats} "
             f"rounds of all {len(records)} images; metrics on the batch-16 captions; {time.strftime('%Y-%m-%d')}, "
             f"{platform.machine()}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}, torch "
             f"{torch.__version__}, one run; load average {load_start:.1f} at the start and "
             f"{os.getloadavg()[0]:.1f} at the end (other jobs share the machine).", "",
             "| model | captions/s, batch 1 | captions/s, batch 16 | exact match | CIDEr-D | BLEU-4 | weights (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("float32", "int8-dynamic"):
        values = " | ".join(f"{scores[name][key]:.4f}" for key, _ in METRICS)
        lines.append(f"| {name} | {rate(name, 1)} | {rate(name, 16)} | {values} | {sizes[name]:.1f} |")
    deltas = " | ".join(f"{scores['int8-dynamic'][key] - scores['float32'][key]:+.4f}" for key, _ in METRICS)
    lines.append(f"| int8 vs float32 | {median['int8-dynamic', 1] / median['float32', 1]:.2f}x | "
                 f"{median['int8-dynamic', 16] / median['float32', 16]:.2f}x | {deltas} | "
                 f"{sizes['int8-dynamic'] / sizes['float32']:.2f}x |")
    lines += ["", f"int8-dynamic captions identical to float32's: {same:.1%} ({round(same * len(records))} of "
              f"{len(records)}).", ""]
    publish("\n".join(lines), record=not args.no_record)


if __name__ == "__main__":
    main()
