"""Fast generation: captions/s and p50 latency of `verbovision.infer.VLM` against plain `model.generate`, same weights.

Captions the first --n held-out images of the quickstart data (test/caption_short_en.json), greedy, up to
--max-new-tokens tokens, four ways:

- `generate, batch 1`: plain transformers, `AutoModelForImageTextToText` + `AutoProcessor`; the prompt built like
  LLaVA's eval loader (the image token, a newline, the question, in the model's template: plain text or its chat
  template), one image per `model.generate` call;
- `generate, batch 16`: the same, 16 images per call, left-padded;
- `VLM, batch 1` / `VLM, batch 16`: `VLM(model).caption(images, batch_size=...)` (greedy: VerboVision's own
  decoding loop, in which a caption that ends leaves the batch with its KV cache);
- `VLM compiled, batch 1` / `batch 16`: the same with `VLM(model, compiled=True)` (`--compile`: static KV cache and a
  torch.compile'd forward; every batch shape is compiled during the warm-up, not timed). After the timed rounds,
  batches of MIXED sizes show which shapes compile: batches are padded to row buckets, so only new buckets do.

Every call takes image files and returns texts: image decoding and preprocessing are timed in all four. Each
baseline's new tokens are decoded with skip_special_tokens and stripped, as VLM does, and the script fails unless
all four give identical texts for every image. The variants alternate round by round (and their order alternates
too), so that load from other jobs falls on all alike; captions/s is the median over --repeats rounds of all --n
images, with the range; p50 latency is the median time of one call (one request at batch 1, one batch of 16).
Timed in the same rounds: `VLM.caption` with max_new_tokens=1, everything but decoding (images, preprocessing,
vision tower, prompt prefill, one token), the most any decoding loop could reach with the same model kernels.
One torch thread by default: on a 2-core machine shared with other jobs, 2 threads can be pathologically slow.

    python benchmarks/generate_bench.py [--model quickstart/run/final] [--data quickstart/data/shapes] [--n 300]
    python benchmarks/generate_bench.py --no-record     # print the table only, nothing appended to RESULTS.md
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from results import held_out_records, publish, quickstart_options

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH = 16
MIXED = (3, 5, 7)
"""Batch sizes captioned with `--compile` after the timed rounds, to count the shapes they compile."""
LABELS = {"generate": "`model.generate`", "VLM": "`VLM.caption`", "VLM compiled": "`VLM.caption`, `--compile`"}


class PlainGenerate:
    """Captions with nothing but transformers: processor, `model.generate`, `batch_decode`."""

    def __init__(self, path: str, prompt: str, max_new_tokens: int, dtype: str = "float32", device: str = "cpu"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"
        self.max_new_tokens = max_new_tokens
        self.text = self.prompt_text(path, prompt)

    def prompt_text(self, path: str, question: str) -> str:
        """LLaVA's eval loader: `<image>\\n{question}` as the user turn, rendered in the template the model was
        trained with (VerboVision's metadata says which: `plain` is each prompt line followed by a newline)."""
        meta = Path(path) / "verbovision.json"
        template = json.loads(meta.read_text()).get("template", "chat") if meta.exists() else "chat"
        token = self.processor.image_token
        if template == "plain":
            return f"{token}\n{question}\n"
        if template != "chat":
            raise SystemExit(f"{path}: template {template!r}: this benchmark builds plain and chat prompts only")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"\n{question}"}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def __call__(self, paths: list[Path]) -> list[str]:
        import torch
        from PIL import Image

        images = [Image.open(p).convert("RGB") for p in paths]
        inputs = self.processor(text=[self.text] * len(images), images=images, return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)  # dtype: floating inputs only (pixels)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def run(caption, paths: list[Path], batch_size: int) -> tuple[float, list[float], list[str]]:
    """captions/s over all paths, the latency of each call, the texts."""
    texts, latencies = [], []
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        t0 = time.perf_counter()
        texts.extend(caption(paths[i : i + batch_size]))
        latencies.append(time.perf_counter() - t0)
    return len(paths) / (time.perf_counter() - start), latencies, texts


def main() -> None:
    parser = quickstart_options(__doc__)
    args = parser.parse_args()

    from verbovision.data.records import CAPTION_PROMPT
    from verbovision.infer.options import DecodeOptions
    from verbovision.infer.vlm import VLM

    records = held_out_records(args)
    paths = [r.images[0] for r in records]
    plain = PlainGenerate(args.model, CAPTION_PROMPT, args.max_new_tokens)
    vlm = VLM(args.model, device="cpu")
    vlm_compiled = VLM(args.model, device="cpu", compiled=True)
    options = DecodeOptions(max_new_tokens=args.max_new_tokens)

    first_token = DecodeOptions(max_new_tokens=1)

    def ours(batch: list[Path]) -> list[str]:
        return vlm.caption(batch, options=options, batch_size=BATCH)

    def ours_compiled(batch: list[Path]) -> list[str]:
        return vlm_compiled.caption(batch, options=options, batch_size=BATCH)

    def no_decoding(batch: list[Path]) -> list[str]:
        return vlm.caption(batch, options=first_token, batch_size=BATCH)

    variants = {("generate", 1): plain, ("generate", BATCH): plain, ("VLM", 1): ours, ("VLM", BATCH): ours,
                ("VLM compiled", 1): ours_compiled, ("VLM compiled", BATCH): ours_compiled,
                ("no decoding", 1): no_decoding, ("no decoding", BATCH): no_decoding}
    load_start = os.getloadavg()[0]
    for (_, batch_size), caption in variants.items():  # warm-up: first calls allocate, pick kernels, compile
        run(caption, paths[: 2 * batch_size], batch_size)
        run(caption, paths[len(paths) - (len(paths) % batch_size or batch_size) :], batch_size)  # the last batch
    rates = {key: [] for key in variants}
    latencies = {key: [] for key in variants}
    texts: dict[tuple, list[str]] = {}
    for round_ in range(args.repeats):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for key in order:
            rate, times, replies = run(variants[key], paths, key[1])
            rates[key].append(rate)
            latencies[key].extend(times)
            texts.setdefault(key, replies)
    reference = texts["generate", 1]
    for key, replies in texts.items():
        if key[0] == "no decoding":
            continue
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(reference, replies)) if a != b]
        assert len(replies) == len(reference) and not diff, f"{key} differs from generate at batch 1: {diff[:3]}"
    reuse = shape_reuse(ours_compiled, vlm_compiled, paths)
    report(args, len(paths), rates, latencies, sum(map(len, reference)) / len(reference), load_start, reuse)


def shape_reuse(caption, vlm, paths: list[Path]) -> str:
    """The `--compile` shapes (rows x cached tokens) after the timed rounds, and those batches of MIXED sizes add,
    with the graphs dynamo compiled for them."""
    from torch._dynamo.utils import counters

    def listed(shapes) -> str:
        return ", ".join(f"{rows}x{length}" for rows, length in sorted(shapes)) or "none"

    before, graphs = set(vlm.compiled.shapes), counters["stats"]["unique_graphs"]
    for rows in MIXED:
        caption(paths[:rows])
    return (f"`--compile` shapes (rows x cached tokens) after the timed rounds: {listed(before)}; batches of "
            f"{', '.join(map(str, MIXED))} images then added {listed(vlm.compiled.shapes - before)} "
            f"({counters['stats']['unique_graphs'] - graphs} graphs compiled).")


def report(args, n: int, rates: dict, latencies: dict, mean_chars: float, load_start: float, reuse: str) -> None:
    import torch
    import transformers

    median = {key: statistics.median(values) for key, values in rates.items()}
    lines = ["## Fast generation (benchmarks/generate_bench.py)", "",
             f"model {args.model}; the first {n} held-out images of {args.data}/test/caption_short_en.json "
             f"(captions of {mean_chars:.0f} characters on average), greedy, up to {args.max_new_tokens} new tokens; "
             "plain transformers (`AutoModelForImageTextToText` + `AutoProcessor`, `model.generate`, left padding) "
             "vs `VLM.caption` (eager and `--compile`), image decoding and preprocessing timed in all; all give identical texts "
             f"(asserted); captions/s: median (range) of {args.repeats} rounds of all {n} images, variants "
             "alternated; p50 latency: median time of one call (a request at batch 1, a batch of 16); "
             f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, torch threads: "
             f"{torch.get_num_threads()}, torch {torch.__version__}, transformers {transformers.__version__}, "
             f"Python {platform.python_version()}, one run; load average {load_start:.1f} at the start and "
             f"{os.getloadavg()[0]:.1f} at the end (other jobs share the machine).", "",
             "| variant | captions/s | p50 latency (ms) | vs generate, batch 1 | vs generate, batch 16 |",
             "|---|---:|---:|---:|---:|"]
    for key, values in rates.items():
        name, batch_size = key
        if name == "no decoding":
            continue
        lines.append(f"| {LABELS[name]}, batch {batch_size} | "
                     f"{median[key]:.1f} ({min(values):.1f}-{max(values):.1f}) | "
                     f"{1000 * statistics.median(latencies[key]):.1f} | "
                     f"{median[key] / median['generate', 1]:.2f}x | {median[key] / median['generate', BATCH]:.2f}x |")
    floor = {bs: median["no decoding", bs] for bs in (1, BATCH)}
    lines += ["", "Without decoding (`VLM.caption` with max_new_tokens=1: image decoding, preprocessing, vision "
              f"tower, prompt prefill, one token): {floor[BATCH]:.1f} captions/s at batch {BATCH} "
              f"({1000 * statistics.median(latencies['no decoding', BATCH]):.1f} ms per batch), {floor[1]:.1f} at "
              f"batch 1 ({1000 * statistics.median(latencies['no decoding', 1]):.1f} ms per request): the ceiling of "
              f"any decoding loop on these kernels, {floor[BATCH] / median['generate', BATCH]:.2f}x `generate` "
              f"batched and {floor[BATCH] / median['generate', 1]:.2f}x `generate` at batch 1.", "", reuse, ""]
    publish("\n".join(lines), record=not args.no_record)


if __name__ == "__main__":
    main()
