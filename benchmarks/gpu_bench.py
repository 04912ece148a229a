"""The GPU numbers of training, generation and serving at real model sizes, in one process (issues 19 and 20).

Parts (`--parts`, default all), each in its own try/except: a part that fails or cannot run here records why in its
row and the others go on.

1. peak: the measured bf16 matmul rate (8192^3 products, best of three rounds): the MFU denominator.
2. train: the geovlm shape (SigLIP-base 12x768 @224/16 + a Qwen2.5-0.5B-shaped LM 24x896, 14 heads, 2 KV heads, MLP
   4864, vocabulary 151,936, tied; pixel shuffle 2: 49 image tokens), random weights saved as the two "pretrained"
   components and built by `verbo train`'s own build (the recipe's model block, as recipes/geovlm.yaml composes it),
   on synthetic geometry VQA. Stage 1 (connector) and stage 2 (LoRA r64 on the LM + full connector) through
   `train_recipe` with the shipped settings (model.dtype and attention `auto`, feature cache on, `bf16: true`), batch
   16, against HF `Trainer` (float32 weights, bf16=True, pixel values every step) on the same model, data and batch:
   samples/s, tokens/s, MFU (torch's FLOP count of one step / step time / part 1's peak), peak GPU memory.
3. 7b: a LLaVA-1.5-7B shape (CLIP ViT-L/14-336 + Llama-2-7B, 576 image tokens), random bf16 weights made on the GPU,
   LoRA r128 on the LM (our trainability, loss and checkpointing), batch 4 x 2,048 tokens: peak GPU memory of bf16
   LoRA training, of QLoRA 4-bit (bitsandbytes, where it imports) and of bf16 inference (prefill + 32 tokens).
4. generate: the geovlm model, 256 images, batch 64, greedy, 32 new tokens: `VLM.caption` vs transformers'
   `generate` at bf16 and at float32, and at bf16 `VLM.caption` under `--compile` too (its one shape, 64 rows,
   compiled in the warm-up batch; bf16 only, the dtype served on GPUs, to keep to the time budget): captions/s and
   the share of captions identical to `generate`'s; the 7B shape's `generate` at batch 1 and 32: tokens/s and time
   to first token.
5. serve: `verbo serve` on the geovlm model, 64 concurrent openai clients with continuous batching against dynamic
   batching (replies compared), and one client at a time (needs starlette, uvicorn and openai).

Prints a table last and appends it to benchmarks/RESULTS.md with the device's name and the versions. `--tiny`
scales every shape down (CPU is fine; the same code path) for the test that keeps this script from rotting.

On the device machine (its image has no starlette, uvicorn or openai: they travel as wheels; see gpu_wheels.sh):
    bash benchmarks/gpu_wheels.sh        # here, once: the wheels into .whl/
    run tool: {"command": "bash benchmarks/gpu_run.sh", "carry": [".whl"], "timeout_s": 600}
Here:
    python benchmarks/gpu_bench.py --tiny --no-record
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from results import RESULTS, publish  # noqa: E402
from train_bench import measured_matmul_peak, run_trainer, step_flops, synchronize  # noqa: E402

from verbovision.config.schema import LoraSpec, Stage, StageData  # noqa: E402

IMAGE_TOKEN = "<|image_pad|>"
VQA = "train/geoqa_en.json"
PARTS = ("peak", "train", "7b", "generate", "serve")


@dataclass(frozen=True)
class Shapes:
    """Every size the benchmark uses: the real ones, or `--tiny`'s."""

    matmul: int
    vision: dict
    language: dict
    tokenizer_vocab: int
    llava_vision: dict
    llava_language: dict
    llava_batch: tuple[int, int]
    images: int
    batch: int
    warmup: int
    steps: int
    gen_images: int
    gen_batch: int
    new_tokens: int
    gen_batches_7b: tuple[int, ...]
    clients: int
    lora_steps: int = 3


FULL = Shapes(
    matmul=8192,
    vision={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "image_size": 224, "patch_size": 16},
    language={"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
              "rope_theta": 1000000.0, "tie_word_embeddings": True},
    tokenizer_vocab=1024,
    llava_vision={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "image_size": 336, "patch_size": 14, "projection_dim": 768},
    llava_language={"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                    "max_position_embeddings": 4096},
    llava_batch=(4, 2048), images=560, batch=16, warmup=5, steps=20, gen_images=256, gen_batch=64, new_tokens=32,
    gen_batches_7b=(1, 32), clients=64)

TINY = Shapes(
    matmul=256,
    vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8},
    language={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "vocab_size": 1024, "tie_word_embeddings": True},
    tokenizer_vocab=512,
    llava_vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "image_size": 56, "patch_size": 14, "projection_dim": 32},
    llava_language={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 256},
    llava_batch=(2, 64), images=20, batch=4, warmup=1, steps=2, gen_images=8, gen_batch=4, new_tokens=4,
    gen_batches_7b=(1, 2), clients=4, lora_steps=1)


class Skip(Exception):
    """A part that cannot run here, with the reason."""


@dataclass
class Bench:
    """One run: its options, its folder, what its parts share (the geovlm model, the measured peak) and the rows."""

    shapes: Shapes
    device: str
    work: Path
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @property
    def cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    def say(self, text: str) -> None:
        print(f"[gpu_bench {time.perf_counter() - self.started:6.1f}s] {text}", flush=True)

    def row(self, part: str, what: str, result: str) -> None:
        self.rows.append((part, what, result))
        self.say(f"{part} | {what} | {result}")

    @cached_property
    def peak(self) -> float:
        """Measured bf16 matmul FLOP/s on the device."""
        return measured_matmul_peak(torch.bfloat16, self.shapes.matmul, repeats=10, device=self.device)

    @cached_property
    def geovlm(self) -> tuple[Path, Path]:
        """(synthetic geometry data, the built geovlm-shaped model), made once for the parts that use them."""
        self.say("geovlm: synthetic data, random components, build")
        return geovlm_model(self.work, self.shapes, self.device)

    def measured(self, fn, *args, **kwargs):
        """fn's result and the peak GPU memory it allocated in GB (None on the CPU), the memory freed after it."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result = fn(*args, **kwargs)
        peak = torch.cuda.max_memory_allocated() / 1e9 if self.cuda else None
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        return result, peak


def memory(peak: float | None) -> str:
    return "n/a on CPU" if peak is None else f"{peak:.1f} GB"


# -- the geovlm shape ----------------------------------------------------------------------------------------------


def geovlm_recipe(data: Path, model: dict, stage: dict) -> dict:
    return {"name": "gpu-bench", "seed": 0, "data_root": str(data), "model": model, "stages": [stage]}


def geovlm_model(work: Path, shapes: Shapes, device: str) -> tuple[Path, Path]:
    """Synthetic geometry VQA, random "pretrained" SigLIP and Qwen2 components saved as local checkpoints (the LM with
    a BPE tokenizer trained on the data: no hub), and the VLM that a recipe's model block builds from them."""
    from transformers import AutoModel, AutoModelForCausalLM, Qwen2Config, SiglipVisionConfig

    from verbovision.config.parse import parse_recipe
    from verbovision.data.synth_geometry import synth_geometry
    from verbovision.data.tokenizer import train_bpe_tokenizer
    from verbovision.model.build import image_processor
    from verbovision.train.run import initial_model, training_texts

    data, vision, language = work / "geometry", work / "siglip", work / "qwen2"
    synth_geometry(data, n=shapes.images, seed=0, splits=(0.9, 0.05, 0.05))
    model = {"vision": {"name": str(vision)}, "language": {"name": str(language)},
             "connector": {"type": "pixel_shuffle", "act": "silu", "factor": 2}, "image_token": IMAGE_TOKEN}
    recipe = parse_recipe(geovlm_recipe(data, model, {"name": "build", "data": {"train": [VQA]}}))
    torch.manual_seed(0)
    with torch.device(device):  # random init of ~0.5B parameters is seconds on a GPU, a minute on a few cores
        AutoModel.from_config(SiglipVisionConfig(vision_use_head=False, **shapes.vision)).save_pretrained(vision)
        AutoModelForCausalLM.from_config(Qwen2Config(**shapes.language)).save_pretrained(language)
    side = shapes.vision["image_size"]
    image_processor("Siglip", size={"height": side, "width": side}).save_pretrained(vision)
    tokenizer = train_bpe_tokenizer(training_texts(recipe), IMAGE_TOKEN, shapes.tokenizer_vocab)
    with_vocabulary(tokenizer, shapes.language["vocab_size"]).save_pretrained(language)
    init = work / "init-run"
    init.mkdir()
    return data, Path(initial_model(recipe, init, {}))


def with_vocabulary(tokenizer, size: int):
    """The BPE tokenizer with a token for every id up to `size` (`<vN>`, never made from text): a random LM's captions
    pick ids over the whole vocabulary, and ids the tokenizer lacks would decode to nothing, hiding differences."""
    import json

    from tokenizers import models

    state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = state["vocab"]
    vocab.update({f"<v{i}>": i for i in range(len(vocab), size)})
    tokenizer.backend_tokenizer.model = models.BPE(vocab, [tuple(merge) for merge in state["merges"]])
    return tokenizer


STAGES = {"stage 1 (connector)": {"vision": "frozen", "connector": "full", "language": "frozen"},
          "stage 2 (LoRA r64 + connector)": {"vision": "frozen", "connector": "full", "language": "lora"}}
LORA = {"r": 64, "alpha": 128, "dropout": 0.0}


def stage_dict(train: dict, shapes: Shapes) -> dict:
    """A stage as shipped (feature cache on, model dtype and attention auto), bf16, checkpointed only at its end,
    logged every `warmup` steps: the step reads its loss from the GPU only when it logs, as a user's run does."""
    steps = shapes.warmup + shapes.steps
    assert shapes.steps % shapes.warmup == 0, "the timed steps end on a logged step"
    return {"name": "bench", "data": {"train": [VQA]}, "train": train, "lora": LORA, "max_steps": steps,
            "batch_size": shapes.batch, "lr": 1e-4, "warmup": 0, "log_every": shapes.warmup, "save_every": steps,
            "template": "chat", "keep_best": False, "bf16": True}


def train_ours(bench: Bench, data: Path, init: Path, train: dict, name: str) -> float:
    """samples/s of `train_recipe` over the steps after the warm-up ones."""
    from verbovision.config.parse import parse_recipe
    from verbovision.train.run import train_recipe
    from verbovision.train.runinfo import read_metrics

    shapes, run = bench.shapes, bench.work / f"ours-{name.split()[1]}"
    train_recipe(parse_recipe(geovlm_recipe(data, {"from": str(init)}, stage_dict(train, shapes))), run)
    times = [r["time"] for r in read_metrics(run) if "loss" in r]  # the first logged at the warm-up's end
    return shapes.steps * shapes.batch / (times[-1] - times[0])


def part_train(bench: Bench) -> None:
    data, init = bench.geovlm
    shapes = bench.shapes
    for name, train in STAGES.items():
        stage = Stage(train=train, lora=LoraSpec(**LORA), data=StageData(train=[]))
        bench.say(f"train: {name}, counting FLOPs")
        flops = {impl: step_flops(init, data / VQA, stage, shapes.batch, bench.device, features=impl == "ours")
                 for impl in ("ours", "Trainer")}
        bench.say(f"train: {name}, ours")
        ours, ours_peak = bench.measured(train_ours, bench, data, init, train, name)
        bench.say(f"train: {name}, Trainer")
        base, base_peak = bench.measured(run_trainer, bench.work, data / VQA, init, stage, shapes.steps,
                                         shapes.batch, shapes.warmup, True, bench.device)
        base = base["samples_per_s"]
        for impl, rate, peak in (("ours", ours, ours_peak), ("Trainer", base, base_peak)):
            step_flop, tokens = flops[impl]
            mfu = step_flop * rate / shapes.batch / bench.peak
            bench.row("train", f"{name}, {impl}", f"{rate:.1f} samples/s, {tokens * rate / shapes.batch:.0f} "
                      f"tokens/s, MFU {mfu:.1%} ({step_flop / shapes.batch / 1e9:.3g} GFLOP/sample), peak "
                      f"{memory(peak)}")
        bench.row("train", f"{name}, ours / Trainer", f"{ours / base:.2f}x samples/s")


# -- the LLaVA-1.5-7B shape ----------------------------------------------------------------------------------------


def llava_model(shapes: Shapes, device: str):
    """A LLaVA-1.5-7B-shaped model with random bf16 weights made where they will run (no float32 copy anywhere)."""
    from transformers import AutoModelForImageTextToText, CLIPVisionConfig, LlamaConfig, LlavaConfig

    from verbovision.model.attention import attention_for

    text = LlamaConfig(**shapes.llava_language)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**shapes.llava_vision), text_config=text,
                         image_token_id=text.vocab_size - 64, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_seq_length=image_tokens(shapes))
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForImageTextToText.from_config(
            config, dtype=torch.bfloat16, attn_implementation=attention_for(config, torch.bfloat16, device))


def image_tokens(shapes: Shapes) -> int:
    return (shapes.llava_vision["image_size"] // shapes.llava_vision["patch_size"]) ** 2


def llava_inputs(model, shapes: Shapes, batch: int, length: int, labelled: bool) -> dict:
    """Random token ids of `length` with the image's tokens after the first, random pixels; with `labelled`, the
    second half of each row is the reply the loss is taken on."""
    config, side = model.config, shapes.llava_vision["image_size"]
    ids = torch.randint(1, config.image_token_id, (batch, length), device=model.device)
    ids[:, 1 : 1 + image_tokens(shapes)] = config.image_token_id
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn(batch, 3, side, side, device=model.device, dtype=torch.bfloat16)}
    if labelled:
        labels = ids.clone()
        labels[:, : length // 2] = -100
        inputs["labels"] = labels
    return inputs


def lora_steps(model, shapes: Shapes, device: str) -> float:
    """A few LoRA r128 steps as our stage takes them (trainability, float32 adapters, checkpointing, fused AdamW,
    the loss, bf16 autocast); returns the last loss."""
    from verbovision.families import family_of
    from verbovision.model.loss import token_loss
    from verbovision.model.trainable import configure_trainable, enable_checkpointing, param_groups

    stage = Stage(train={"vision": "frozen", "connector": "full", "language": "lora"},
                  lora=LoraSpec(r=128, alpha=256, dropout=0.0), data=StageData(train=[]), gradient_checkpointing=True)
    family = family_of(model.config)
    model, _ = configure_trainable(model, stage)
    enable_checkpointing(model, stage.gradient_checkpointing)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, stage), fused=torch.device(device).type == "cuda")
    batch = llava_inputs(model, shapes, *shapes.llava_batch, labelled=True)
    for _ in range(shapes.lora_steps):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = token_loss(model, batch, device, family)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.item()


def quantize_language_4bit(model, device: str):
    """QLoRA's base: every Linear of the LM (not the output head) as a bitsandbytes NF4 layer, double-quantized,
    computing in bf16; the bf16 weights are freed layer by layer."""
    if torch.device(device).type != "cuda":
        raise Skip("QLoRA 4-bit needs a CUDA GPU")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise Skip("bitsandbytes not installed") from None
    for parent in list(model.model.language_model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True,
                                          device="meta")
                layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True).to(device)
                if child.bias is not None:
                    layer.bias = child.bias
                setattr(parent, name, layer)
    return model


def greedy(model, inputs: dict, new_tokens: int):
    """transformers' greedy `generate` of exactly `new_tokens` tokens (random weights rarely say EOS; never stop)."""
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


def prompt_length(shapes: Shapes) -> int:
    return image_tokens(shapes) + 64


def part_7b(bench: Bench) -> None:
    shapes, device = bench.shapes, bench.device
    batch, length = shapes.llava_batch

    def train(quantized: bool) -> float:
        model = llava_model(shapes, device)
        if quantized:
            model = quantize_language_4bit(model, device)
            if bench.cuda:  # the peak of training on the 4-bit base, not of making it from bf16
                torch.cuda.reset_peak_memory_stats()
        return lora_steps(model, shapes, device)

    for label, quantized in ((f"bf16 LoRA r128 training, batch {batch} x {length}, checkpointing", False),
                             (f"QLoRA 4-bit r128 training, batch {batch} x {length}, checkpointing", True)):
        bench.say(f"7b: {label}")
        try:
            loss, peak = bench.measured(train, quantized)
            bench.row("7b", label, f"peak {memory(peak)} (loss {loss:.2f})")
        except Skip as e:
            bench.row("7b", label, f"skipped: {e}")

    def infer():
        model = llava_model(shapes, device).eval()
        if bench.cuda:  # the peak of inference, not of the random init's temporaries
            torch.cuda.reset_peak_memory_stats()
        greedy(model, llava_inputs(model, shapes, 1, prompt_length(shapes), labelled=False), shapes.new_tokens)

    bench.say("7b: bf16 inference")
    _, peak = bench.measured(infer)
    bench.row("7b", f"bf16 inference, batch 1, {prompt_length(shapes)}-token prompt + {shapes.new_tokens} tokens",
              f"peak {memory(peak)}")


# -- generation ----------------------------------------------------------------------------------------------------


def part_generate(bench: Bench) -> None:
    data, init = bench.geovlm
    shapes = bench.shapes
    paths = sorted((data / "images").glob("*.png"))[: shapes.gen_images]
    for dtype in ("bfloat16", "float32"):
        bench.say(f"generate: geovlm, {dtype}")
        rates, same = captions_vs_generate(bench, init, paths, dtype, compiled=dtype == "bfloat16")
        what = f"geovlm {dtype}, {len(paths)} images, batch {shapes.gen_batch}, {shapes.new_tokens} tokens"
        ours = [f"{name} {rates[name]:.1f} captions/s ({rates[name] / rates['generate']:.2f}x)" for name in same]
        identical = ", ".join(f"{share:.0%}" for share in same.values())
        bench.row("generate", what, f"{', '.join(ours)}, generate {rates['generate']:.1f}; identical {identical}")
    bench.say("generate: 7B shape")
    model = llava_model(shapes, bench.device).eval()
    for batch in shapes.gen_batches_7b:
        inputs = llava_inputs(model, shapes, batch, prompt_length(shapes), labelled=False)
        greedy(model, inputs, 2)  # warm-up
        first, whole = (timed(greedy, model, inputs, n, device=bench.device) for n in (1, shapes.new_tokens))
        bench.row("generate", f"7B shape generate, batch {batch}, {shapes.new_tokens} tokens",
                  f"{batch * shapes.new_tokens / whole:.1f} tokens/s, time to first token {1000 * first:.0f} ms")


def captions_vs_generate(bench: Bench, init: Path, paths: list[Path], dtype: str,
                         compiled: bool) -> tuple[dict, dict]:
    """captions/s of `VLM.caption` (and with `compiled`, of it under `--compile`) and of transformers' `generate`
    (each after a warm-up batch, which compiles), all loaded in `dtype`; and for each of ours, the share of images it
    captions as `generate` does."""
    from generate_bench import PlainGenerate, run

    from verbovision.infer.vlm import VLM

    shapes = bench.shapes
    ours = {"VLM.caption": VLM(init, device=bench.device, dtype=dtype)}
    if compiled:
        ours["--compile"] = VLM(init, device=bench.device, dtype=dtype, compiled=True)
    plain = PlainGenerate(str(init), ours["VLM.caption"].caption_prompt, shapes.new_tokens, dtype, bench.device)

    def captioner(vlm):
        return lambda batch: vlm.caption(batch, batch_size=shapes.gen_batch, max_new_tokens=shapes.new_tokens)

    rates, texts = {}, {}
    for name, caption in [*((name, captioner(vlm)) for name, vlm in ours.items()), ("generate", plain)]:
        run(caption, paths[: shapes.gen_batch], shapes.gen_batch)  # warm-up: allocation, kernel choice, compiling
        rates[name], _, texts[name] = run(caption, paths, shapes.gen_batch)
    same = {name: sum(a == b for a, b in zip(texts[name], texts["generate"])) / len(paths) for name in ours}
    return rates, same


def timed(fn, *args, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn(*args)
    synchronize(device)
    return time.perf_counter() - start


# -- serving -------------------------------------------------------------------------------------------------------


def part_serve(bench: Bench) -> None:
    """`verbo serve` with continuous batching against dynamic batching (issue 20's comparison) under the same
    concurrent clients, and continuous batching with one client at a time; replies compared."""
    for module in ("starlette", "uvicorn", "openai"):
        try:
            __import__(module)
        except ImportError:
            raise Skip(f"{module} not installed (carry the wheels: benchmarks/gpu_wheels.sh)") from None
    from serve_bench import measure, start_server

    data, init = bench.geovlm
    clients = bench.shapes.clients
    images = sorted((data / "images").glob("*.png"))[:4]
    results = {}
    for batching, sessions in (("continuous", ((clients, 2), (1, 8))), ("dynamic", ((clients, 2),))):
        proc, url = start_server(init, batching, clients)
        try:
            for concurrent, per_client in sessions:
                bench.say(f"serve: {batching}, {concurrent} client(s)")
                r = results[batching, concurrent] = measure(url, init, images, concurrent, per_client)
                first = r["metrics"]["time_to_first_token_s"]
                bench.row("serve", f"verbo serve --batching {batching} --batch-size {clients}, {concurrent} "
                          f"concurrent client(s) x {per_client}",
                          f"{r['rps']:.2f} requests/s, p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, time to first "
                          f"token p50 {first['p50']} s")
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    continuous, dynamic = results["continuous", clients], results["dynamic", clients]
    same = sum(a == b for a, b in zip(continuous["replies"], dynamic["replies"])) / len(dynamic["replies"])
    bench.row("serve", f"continuous / dynamic, {clients} clients",
              f"{continuous['rps'] / dynamic['rps']:.2f}x requests/s; replies identical {same:.0%}")


def part_peak(bench: Bench) -> None:
    n = bench.shapes.matmul
    bench.row("peak", f"bf16 matmul {n}^3, best of 3 rounds", f"{bench.peak / 1e12:.1f} TFLOP/s")


RUNNERS = {"peak": part_peak, "train": part_train, "7b": part_7b, "generate": part_generate, "serve": part_serve}


def run_part(bench: Bench, part: str) -> None:
    """Run one part; a failure or skip becomes its row, and the run goes on."""
    bench.say(f"part {part}")
    try:
        RUNNERS[part](bench)
    except Skip as e:
        bench.row(part, "", f"skipped: {e}")
    except Exception as e:  # noqa: BLE001 - one part's failure must not lose the others' numbers
        line = (str(e).strip().splitlines() or [""])[0][:300]
        bench.row(part, "", f"failed: {type(e).__name__}: {line}")


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def report(bench: Bench, args) -> str:
    import peft
    import transformers

    cuda = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
    lines = [f"## GPU benchmarks (benchmarks/gpu_bench.py{' --tiny' if args.tiny else ''})", "",
             f"{device_name(bench.device)}; {time.strftime('%Y-%m-%d')}; torch {torch.__version__}{cuda}, "
             f"transformers {transformers.__version__}, peft {peft.__version__}, Python {platform.python_version()}; "
             f"parts: {', '.join(args.parts)}; {time.perf_counter() - bench.started:.0f} s in all; one run, random "
             "weights, synthetic data.", "", "| part | what | result |", "|---|---|---|"]
    lines += [f"| {part} | {what} | {result} |" for part, what, result in bench.rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and few steps (CPU is fine)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file the table is appended to")
    parser.add_argument("--no-record", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: {', '.join(unknown)} unknown; choose among {', '.join(PARTS)}")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        bench = Bench(TINY if args.tiny else FULL, args.device, Path(tmp))
        for part in args.parts:
            run_part(bench, part)
        publish(report(bench, args), record=not args.no_record, results=args.results)


if __name__ == "__main__":
    main()
