"""Training throughput: VerboVision's loop vs the plain Hugging Face path (`Trainer` + pixel values every step).

Same model weights, same data, same machine, one run. Each variant runs in its own subprocess so its peak RSS is
its own. Stage 1: frozen encoder + frozen LM, the connector trains. Stage 2: LoRA on the LM, connector trains.
Both at float32 and with bf16 autocast (ours: `bf16: true`; Trainer: `bf16=True`), each against the same precision.
Also reports model FLOP utilisation: FLOPs of one step (torch's flop counter) / step time, divided by the peak
matmul FLOP/s measured here at the same dtype.

    python benchmarks/train_bench.py            # prints a table, appends it to benchmarks/RESULTS.md
    python benchmarks/train_bench.py --quick    # fewer steps, a smaller model (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from results import publish  # noqa: E402

from verbovision.config.schema import LoraSpec, Stage, StageData  # noqa: E402

SMALL = {"vision": {"arch": "siglip", "hidden_size": 384, "layers": 6, "heads": 6, "image_size": 224,
                    "patch_size": 16},
         "language": {"arch": "qwen2", "hidden_size": 512, "layers": 6, "heads": 8, "vocab_size": 1024},
         "connector": {"type": "mlp", "act": "gelu"}}
QUICK = {"vision": {**SMALL["vision"], "hidden_size": 96, "layers": 2, "heads": 2, "image_size": 64},
         "language": {**SMALL["language"], "hidden_size": 128, "layers": 2, "heads": 2},
         "connector": SMALL["connector"]}
STAGES = {
    "stage1": {"vision": "frozen", "connector": "full", "language": "frozen"},
    "stage2": {"vision": "frozen", "connector": "full", "language": "lora"},
    "full": {"vision": "full", "connector": "full", "language": "full"},
    "lora-gc": {"vision": "frozen", "connector": "full", "language": "lora"},
    "stage2-compile": {"vision": "frozen", "connector": "full", "language": "lora"},
}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries it over exec, so a child would
    report at least its parent's peak."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def measured_matmul_peak(dtype=torch.float32, n: int = 1024, repeats: int = 20, device: str = "cpu") -> float:
    """FLOP/s of n x n x n matrix products on `device`, the best of three timed rounds (random data: zeros run
    faster than real data on some GPUs)."""
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    rounds = []
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        rounds.append(time.perf_counter() - start)
    return 2 * n**3 * repeats / min(rounds)


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a host clock read without this times the queue)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


OPTIONS = {"lora-gc": {"gradient_checkpointing": True}, "stage2-compile": {"compile": "inductor"}}
"""Stage options of the variants of our loop that have any."""


CAPTIONS = "train/caption_short_en.json"


def stage_dict(stage: str, steps: int, batch: int, bf16: bool = False) -> dict:
    return {"name": stage, "data": {"train": [CAPTIONS]}, "train": STAGES[stage],
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "max_steps": steps, "batch_size": batch, "lr": 1e-4,
            "log_every": 1, "template": "chat", "keep_best": False, "feature_cache": True, "bf16": bf16,
            **OPTIONS.get(stage, {})}


def prepare(work: Path, model_block: dict, n_images: int) -> tuple[Path, Path]:
    """Synthesize data and build the initial model once, so every variant starts from identical weights."""
    from verbovision.config.parse import parse_recipe
    from verbovision.data.synth import synth_shapes
    from verbovision.train.run import initial_model

    data = work / "data"
    synth_shapes(data, n=n_images, seed=0, langs=("en",))
    raw = {"name": "bench", "data_root": str(data), "model": model_block,
           "stages": [stage_dict("stage1", 1, 1)]}
    init = work / "init-run"
    init.mkdir()
    return data, Path(initial_model(parse_recipe(raw), init, {}))


def run_ours(work: Path, data: Path, init: Path, stage: str, steps: int, batch: int, warmup: int, bf16: bool) -> dict:
    from verbovision.config.parse import parse_recipe
    from verbovision.train.run import train_recipe
    from verbovision.train.runinfo import read_metrics

    raw = {"name": "ours", "data_root": str(data), "model": {"from": str(init)},
           "stages": [stage_dict(stage, warmup + steps, batch, bf16)]}
    run = work / f"ours-{stage}-{bf16}"
    start = time.perf_counter()
    train_recipe(parse_recipe(raw), run)
    total = time.perf_counter() - start
    times = [r["time"] for r in read_metrics(run) if "loss" in r]
    return {"samples_per_s": steps * batch / (times[-1] - times[warmup - 1]), "wall_s": total}


def bench_stage(stage: str) -> Stage:
    """The trainability (and LoRA settings) of one of STAGES, for code that configures a model without a recipe."""
    raw = stage_dict(stage, 1, 1)
    return Stage(train=raw["train"], lora=LoraSpec(**raw["lora"]), data=StageData(train=[]),
                 gradient_checkpointing=raw.get("gradient_checkpointing", False))


def run_trainer(work: Path, records_file: Path, init: Path, stage: Stage, steps: int, batch: int, warmup: int,
                bf16: bool, device: str = "cpu") -> dict:
    """The plain path: a Dataset that loads, preprocesses and tokenizes per item; Trainer; pixel values each step.
    The model loads in float32 (transformers' default), `bf16` is the Trainer's autocast."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from verbovision.data.batching import Collator
    from verbovision.data.encoding import Encoder
    from verbovision.data.images import load_image
    from verbovision.data.sources import read_records
    from verbovision.model.store import load_model
    from verbovision.model.trainable import configure_trainable

    model, processor = load_model(init, device=device, dtype="float32")
    model, _ = configure_trainable(model, stage)
    model.train()
    encoder = Encoder(processor, "chat")
    records = read_records(records_file)

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(records)

        def __getitem__(self, i):
            example = encoder.encode(records[i])
            return {"example": example, "image": load_image(example.images[0])}

    padder = Collator(encoder)

    def collate(items):
        batch = padder.pad([item["example"] for item in items])
        batch.update(encoder.pixel_inputs([item["image"] for item in items]))
        return batch

    stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            stamps.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(work / f"trainer-{bf16}"), per_device_train_batch_size=batch,
                             max_steps=warmup + steps, learning_rate=1e-4, report_to=[], save_strategy="no",
                             logging_strategy="no", dataloader_num_workers=0, remove_unused_columns=False,
                             use_cpu=torch.device(device).type == "cpu",
                             gradient_checkpointing=bool(stage.gradient_checkpointing), bf16=bf16)
    trainer = Trainer(model=model, args=args, train_dataset=Items(), data_collator=collate,
                      callbacks=[Stamp()])
    start = time.perf_counter()
    trainer.train()
    return {"samples_per_s": steps * batch / (stamps[-1] - stamps[warmup - 1]),
            "wall_s": time.perf_counter() - start}


def step_flops(init: Path, records_file: Path, stage: Stage, batch: int, device: str = "cpu",
               features: bool = True) -> tuple[float, float]:
    """FLOPs of one training step (forward + backward) counted by torch, and the tokens of its batch: our path's
    step (`features`: from cached vision features, as a stage with a frozen encoder trains), or with pixel values
    (the vision tower in the step, as the Trainer's)."""
    from torch.utils.flop_counter import FlopCounterMode

    from verbovision.data.batching import Collator
    from verbovision.data.encoding import Encoder
    from verbovision.data.sources import read_records
    from verbovision.families import family_of
    from verbovision.model.features import FeatureCache
    from verbovision.model.loss import token_loss
    from verbovision.model.store import load_model, weights_dtype
    from verbovision.model.trainable import configure_trainable

    model, processor = load_model(init, device=device)
    family = family_of(model.config)
    model, _ = configure_trainable(model, stage)
    encoder = Encoder(processor, "chat", family=family)
    examples = [encoder.encode(r) for r in read_records(records_file)[:batch]]
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp), model, processor) if features else None
        if cache:
            cache.ensure([e.images[0] for e in examples])
        batch_inputs = Collator(encoder, features=cache)(examples).batch
        model.train()
        half = weights_dtype(model) != torch.float32  # 16-bit weights: a stage's forward runs under autocast
        with FlopCounterMode(display=False) as counter:
            with torch.autocast(torch.device(device).type, dtype=weights_dtype(model), enabled=half):
                loss = token_loss(model, batch_inputs, device, family)
            loss.backward()
    return float(counter.get_total_flops()), float(batch_inputs["attention_mask"].sum())


def child(args) -> None:
    work, data, init = Path(args.work), Path(args.data), Path(args.init)
    if args.impl == "ours":
        result = run_ours(work, data, init, args.stage, args.steps, args.batch, args.warmup, args.bf16)
    else:
        result = run_trainer(work, data / CAPTIONS, init, bench_stage(args.stage), args.steps, args.batch, args.warmup,
                             args.bf16)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


def spawn(args, impl: str, stage: str, work: Path, data: Path, init: Path, bf16: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--impl", impl, "--stage", stage, "--work", str(work),
           "--data", str(data), "--init", str(init), "--steps", str(args.steps), "--batch", str(args.batch),
           "--warmup", str(args.warmup), *(["--bf16"] if bf16 else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    for name in ("impl", "stage", "work", "data", "init"):
        parser.add_argument(f"--{name}")
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.steps, args.batch = 5, 4
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, init = prepare(work, QUICK if args.quick else SMALL, n_images=max(64, (args.steps + args.warmup) *
                                                                                 args.batch * 2))
        peaks = {bf16: measured_matmul_peak(torch.bfloat16 if bf16 else torch.float32) for bf16 in (False, True)}
        rows = []
        for stage in ("stage1", "stage2"):
            flops, _ = step_flops(init, data / CAPTIONS, bench_stage(stage), args.batch)
            for bf16 in (False, True):
                ours, base = (spawn(args, impl, stage, work, data, init, bf16) for impl in ("ours", "trainer"))
                mfu = flops * ours["samples_per_s"] / args.batch / peaks[bf16]
                rows.append((stage, bf16, ours, base, mfu))
        compiled = spawn(args, "ours", "stage2-compile", work, data, init)["samples_per_s"]
        memory = {stage: spawn(args, "ours", stage, work, data, init)["peak_rss_mb"] for stage in ("full", "lora-gc")}
    report(args, rows, memory, peaks, compiled)


def report(args, rows, memory, peaks, compiled) -> None:
    config = "quick" if args.quick else "small (SigLIP 6x384 @224/16 + Qwen2 6x512, mlp connector)"
    lines = [f"### train_bench — {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}", "",
             f"config: {config}; batch {args.batch}; {args.steps} timed steps after {args.warmup} warm-up; "
             f"measured matmul peak {peaks[False] / 1e9:.1f} GFLOP/s float32, {peaks[True] / 1e9:.1f} bfloat16; "
             "each precision against the Trainer at the same precision", "",
             "| stage | precision | ours samples/s | Trainer samples/s | ratio | MFU (ours) | peak RSS ours / Trainer (MB) |",
             "|---|---|---|---|---|---|---|"]
    for stage, bf16, ours, base, mfu in rows:
        lines.append(f"| {stage} | {'bf16 autocast' if bf16 else 'float32'} | {ours['samples_per_s']:.2f} | "
                     f"{base['samples_per_s']:.2f} | {ours['samples_per_s'] / base['samples_per_s']:.2f}x | "
                     f"{mfu:.2f} | {ours['peak_rss_mb']:.0f} / {base['peak_rss_mb']:.0f} |")
    ours = {(stage, bf16): result for stage, bf16, result, _, _ in rows}
    trainer = {stage: base["samples_per_s"] for stage, bf16, _, base, _ in rows if not bf16}
    lines += ["", "ours with bf16 autocast vs the float32 Trainer: " + ", ".join(
                  f"{stage} {ours[stage, True]['samples_per_s'] / trainer[stage]:.2f}x" for stage in trainer),
              "peak RSS of our loop (float32): " + ", ".join(f"{k} {v:.0f} MB" for k, v in memory.items())
              + f", stage2 (LoRA) {ours['stage2', False]['peak_rss_mb']:.0f} MB",
              f"stage2 with `compile: inductor` (our loop, float32): {compiled:.2f} samples/s "
              f"({compiled / ours['stage2', False]['samples_per_s']:.2f}x eager)", ""]
    publish("\n".join(lines), record=not args.quick)


if __name__ == "__main__":
    main()
