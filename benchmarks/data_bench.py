"""Image throughput: what VerboVision's training loader delivers vs the transformers image processor alone.

Same images (generated 640x480 JPEG photos), same image processor (SigLIP's, 224 x 224), same machine, one run;
the loaders take turns for a few rounds and each one's fastest epoch counts (other work only slows epochs down):

    hf                    PIL open + convert("RGB"), then the image processor on batches: the usual HF path
    ours                  our Collator: robust open_image (EXIF, modes, truncation and bomb checks) + the same
                          processor + token padding, in the main process
    ours, 2 workers       the same Collator in a torch DataLoader with 2 worker processes
    ours, fast decode     Collator(fast_decode=True): JPEGs decoded at the smallest DCT scale >= 224 px
    ours, fast, 2 workers both

    python benchmarks/data_bench.py              # prints a table, appends it to benchmarks/RESULTS.md
    python benchmarks/data_bench.py --quick      # fewer images, no RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from verbovision.config.model import LanguageSpec, ModelSpec, VisionSpec
from verbovision.data.batching import Collator
from verbovision.data.encoding import Encoder
from verbovision.data.records import Record, Turn
from verbovision.data.tokenizer import train_bpe_tokenizer
from verbovision.model.build import build_vlm

BATCH = 16
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def make_photos(folder: Path, n: int, size=(640, 480)) -> list[Path]:
    """Smooth random pictures saved as JPEG quality 90, like downscaled photos."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        path = folder / f"{i:05d}.jpg"
        small.resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def make_encoder() -> Encoder:
    """A processor as `verbo build` makes it: SigLIP's image processor at 224 x 224 and a small BPE tokenizer."""
    spec = ModelSpec(vision=VisionSpec(arch="siglip", hidden_size=32, layers=1, heads=2, image_size=224, patch_size=16),
                     language=LanguageSpec(arch="qwen2", hidden_size=32, layers=1, heads=2, vocab_size=300),
                     image_token="<|image_pad|>")
    tokenizer = train_bpe_tokenizer(["a photo of something user assistant system"], spec.image_token, 300)
    _, processor = build_vlm(spec, tokenizer)
    return Encoder(processor, "plain", max_length=4096)


def best_rates(loaders: dict, images: int, repeats: int) -> dict[str, float]:
    """Images per second of each loader's fastest epoch; the loaders take turns, so a spell of other work on the
    machine slows one round of all of them rather than one loader."""
    best = {name: float("inf") for name in loaders}
    names = list(loaders)
    for round_ in range(repeats):
        # each round starts with the next loader, so none always runs just after another's workers shut down
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            loaders[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: images / seconds for name, seconds in best.items()}


def hf_epoch(paths: list[Path], image_processor) -> None:
    for i in range(0, len(paths), BATCH):
        images = [Image.open(p).convert("RGB") for p in paths[i : i + BATCH]]
        image_processor(images, return_tensors="pt")["pixel_values"]  # [B, 3, 224, 224]


def ours_epoch(examples, encoder: Encoder, workers: int, fast: bool) -> None:
    # A new loader per epoch, as training makes one: worker start-up is part of the cost.
    loader = DataLoader(examples, batch_size=BATCH, collate_fn=Collator(encoder, fast_decode=fast),
                        num_workers=workers)
    for batch in loader:
        assert batch["pixel_values"].shape[1:] == (3, 224, 224) and not batch["skipped"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="images")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (epochs per loader); the fastest counts")
    parser.add_argument("--quick", action="store_true", help="64 images, 1 round, no RESULTS.md")
    args = parser.parse_args()
    n, repeats = (64, 1) if args.quick else (args.n, args.repeats)
    torch.set_num_threads(1)  # the loaders are what is measured; one thread each, like DataLoader workers get
    encoder = make_encoder()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), n)
        examples = [encoder.encode(Record(str(i), [p], [Turn("user", "<image>"), Turn("assistant", "a photo")], "b"))
                    for i, p in enumerate(paths)]
        hf_epoch(paths[:BATCH], encoder.processor.image_processor)  # warm-up
        loaders = {"hf image processor alone": lambda: hf_epoch(paths, encoder.processor.image_processor)}
        for name, workers, fast in [("ours", 0, False), ("ours, 2 workers", 2, False),
                                    ("ours, fast decode", 0, True), ("ours, fast decode, 2 workers", 2, True)]:
            loaders[name] = lambda workers=workers, fast=fast: ours_epoch(examples, encoder, workers, fast)
        rows = list(best_rates(loaders, n, repeats).items())
    baseline = rows[0][1]
    table = ["| loader | images/s | vs hf |", "|---|---|---|"]
    table += [f"| {name} | {rate:.1f} | {rate / baseline:.2f}x |" for name, rate in rows]
    processor = type(encoder.processor.image_processor).__name__
    header = (f"\n## Data loading (benchmarks/data_bench.py)\n\n{n} JPEG photos 640x480 -> {processor} 224x224, "
              f"batch {BATCH}, best of {repeats} epochs; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, one run; load average {os.getloadavg()[0]:.1f} at the end (other jobs "
              f"share the machine: differences under ~1.3x are within its noise).\n\n")
    report = header + "\n".join(table) + "\n"
    print(report)
    if not args.quick:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(report)


if __name__ == "__main__":
    main()
