"""Helpers the test modules share: tiny recipes and stages, runs in subprocesses (killed and resumed, memory
measured), servers on 127.0.0.1, data writers, the model types the installed transformers has. Fixtures stay in
conftest.py; tiny random checkpoints of each family are built by tiny_families*.py."""

from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from packaging.version import Version
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from verbovision.cli import main
from verbovision.config.parse import parse_recipe
from verbovision.data.readers import scan
from verbovision.data.records import RecordError
from verbovision.data.rows import ReadOptions
from verbovision.families import forward_parameters
from verbovision.model.store import load_model, load_processor
from verbovision.train.run import train_recipe

BLOCK_VERBOVISION = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "verbovision":
            raise ImportError("verbovision is blocked in this test")
sys.meta_path.insert(0, Block())
"""
"""Preamble of a script run in a fresh interpreter where importing verbovision fails: what it loads must stand alone."""


BUILT_FOR_NEWER_TRANSFORMERS = {
    "qwen4_exp": "its indexed-attention layers are unknown to Qwen4-Exp there",
    "glm5_next": "its layer types (linear and indexed attention) are not among those it validates",
    "granite4_vision": "its Granite 4 Vision builds the projectors 768 wide whatever the tiny checkpoint says",
    "ernie4_5_vl_moe": "its ERNIE-4.5-VL video processor needs a font file the saved settings do not carry",
    "janus": "its Janus processor expands no image tokens with the tiny checkpoint's settings",
}
"""Model types whose tiny checkpoints (built with transformers 5.25's classes) an older transformers that has the type
cannot load or run, and why (seen with 5.17)."""

BUILDERS_CHECKED_WITH = Version("5.25.0")


def needs_model_type(model_type: str) -> None:
    """Skip, saying why, where the installed transformers has no such image-text model type (a family newer than the
    declared floor), or one older than the tiny checkpoint's builder needs."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        pytest.skip(f"transformers {transformers.__version__} has no {model_type}")
    if model_type in BUILT_FOR_NEWER_TRANSFORMERS and Version(transformers.__version__) < BUILDERS_CHECKED_WITH:
        pytest.skip(f"the tiny {model_type} checkpoint is built for transformers {BUILDERS_CHECKED_WITH}; in "
                    f"{transformers.__version__} {BUILT_FOR_NEWER_TRANSFORMERS[model_type]}")


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                   patch_size=8)


TINY_LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=512)


SAMPLED = {"temperature": 1.0, "seed": 0}
"""Seeded sampling: the tiny models' greedy replies never reach EOS, sampled ones do, after different lengths."""


def limit_cutting_some(generations) -> tuple[int, list[bool]]:
    """A max_new_tokens that cuts some of these replies but not all, and which ones it cuts.

    `generations` come from a longer limit; a reply of L tokens (its EOS included) that ended by itself ends the same
    under a limit K >= L and is cut under K < L (the same seed gives the same tokens up to the limit)."""
    ended = sorted(g.completion_tokens for g in generations if g.finish_reason == "stop")
    assert ended, "no reply ended by itself: nothing to tell cut replies from whole ones"
    limit = ended[0]
    cut = [g.finish_reason == "length" or g.completion_tokens > limit for g in generations]
    assert 0 < sum(cut) < len(cut), f"replies of {[g.completion_tokens for g in generations]} tokens"
    return limit, cut


FLOAT32 = "float32"
"""The weights' dtype of the tests' training runs, which compare numbers at float32 tolerances: on a GPU, `auto`
would train in bfloat16 (tests/test_dtype.py covers that path)."""

TINY_SCRATCH = {
    "vision": {"arch": "siglip", "hidden_size": 32, "layers": 1, "heads": 2, "image_size": 32, "patch_size": 8},
    "language": {"arch": "qwen2", "hidden_size": 32, "layers": 2, "heads": 2, "vocab_size": 300},
    "connector": {"type": "mlp", "act": "gelu"},
    "dtype": FLOAT32,
}


def tiny_recipe(data: Path, stages: list[dict]) -> dict:
    return {"name": "tiny", "seed": 0, "data_root": str(data), "model": copy.deepcopy(TINY_SCRATCH), "stages": stages}


def stage(name: str, **kw) -> dict:
    base = {"name": name, "data": {"train": ["train/caption_short_en.json"], "val": ["val/caption_short_en.json"]},
            "max_steps": 3, "batch_size": 4, "lr": 1e-3}
    return {**base, **kw}


def built_model(tmp_path, shapes_data) -> Path:
    recipe = parse_recipe(tiny_recipe(shapes_data, [stage("s", max_steps=1)]))
    train_recipe(recipe, tmp_path / "built")
    return tmp_path / "built/final"


CAPTIONS = {"train": ["train/caption_short_en.json"], "val": ["val/caption_short_en.json"]}


LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


def train_one_stage(tmp_path: Path, shapes_data: Path, base: Path, stage: dict) -> Path:
    run = tmp_path / "run"
    recipe = {"name": "family", "seed": 0, "data_root": str(shapes_data), "model": {"from": str(base), "dtype": FLOAT32},
              "stages": [stage]}
    train_recipe(parse_recipe(recipe), run)
    return run


def changed_parameters(base: Path, run: Path) -> set[str]:
    before = dict(load_model(base, device="cpu")[0].named_parameters())
    after = load_model(run / "final", device="cpu")[0].named_parameters()
    return {name for name, value in after if not torch.equal(before[name], value)}


def assert_changed_exactly(changed: set[str], must_change: list[str], allowed: list[str]) -> None:
    inside = lambda name, prefixes: any(name == p or name.startswith(p + ".") for p in prefixes)  # noqa: E731
    assert all(inside(name, allowed) for name in changed), sorted(n for n in changed if not inside(n, allowed))
    assert all(any(inside(name, [m]) for name in changed) for m in must_change), (must_change, sorted(changed))


def token_losses(model, batch) -> torch.Tensor:
    """Cross-entropy of every labelled next token, 0 elsewhere: [B, T-1]."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits  # [B, T, V]
    labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")  # [B, T-1]
    return losses * (labels != -100)


def verbo_train(*args: str) -> int:
    """`verbo train ARGS`. On a CUDA machine with fewer than two GPUs (one per process), in a fresh process that sees
    no GPU: the several-process runs then train on CPU processes (gloo) as in CI, and so do the one-process runs
    they are compared with."""
    if not torch.cuda.is_available() or torch.cuda.device_count() >= 2:
        return main(["train", *args])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "verbovision", "train", *args], env=env).returncode


def rows(run) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def curve(run) -> list[tuple]:
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in rows(run)]


def kill_at_step(cmd: list[str], run, step: int, stage: str | None = None, env: dict | None = None) -> None:
    """Run `cmd` and SIGKILL it once it has logged the loss of `step` (of `stage`, when named)."""
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (run / "metrics.jsonl").exists() and any(row.get("step", 0) >= step and "loss" in row
                                                    and stage in (None, row.get("stage")) for row in rows(run)):
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def killed_and_resumed(raw: dict, run, steps: tuple[int, int]) -> None:
    """Train `raw` into `run` in a subprocess, SIGKILL it at a random step in `steps`, then resume it to the end."""
    path = run.with_name(run.name + ".yaml")
    path.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "verbovision", "train", str(path), "--out", str(run)]
    kill_at_step(command, run, random.Random(os.getpid()).randint(*steps))
    assert subprocess.run(command + ["--resume"], capture_output=True).returncode == 0


def assert_same_losses(reference, run, tolerance: float = 1e-6) -> None:
    """The training losses logged by two runs: the same steps, the same values within `tolerance`."""
    expected = [row for row in curve(reference) if row[1] is not None]
    got = [row for row in curve(run) if row[1] is not None]
    assert [s for s, _, _ in got] == [s for s, _, _ in expected]
    assert max(abs(a - b) for (_, a, _), (_, b, _) in zip(expected, got)) <= tolerance


WORDS = ["red", "green", "blue", "yellow"]


SHAPES = ["circle", "square", "triangle", "star"]


IMAGE_SIDE = 384  # a noise PNG of this side is ~440 KB: incompressible, so the shards are as big as they look


def noise_samples(n: int, seed: int = 0) -> Iterator[tuple[bytes, str]]:
    """(PNG of noise, caption) pairs."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)).save(png, "PNG")
        yield png.getvalue(), f"a {WORDS[i % 4]} {SHAPES[(i // 4) % 4]}"


def shard_recipe(shards: Path, val: Path, format: str = "webdataset", **options) -> dict:
    raw = tiny_recipe(shards.parent, [stage(
        "wds", data={"train": [{"path": str(shards), "format": format}], "val": [str(val)]},
        train={"vision": "frozen", "connector": "full", "language": "lora"}, lora={"r": 4, "alpha": 8},
        template="plain", batch_size=4, log_every=1, feature_cache=False, **{"max_steps": None, **options})])
    raw["model"]["vision"]["image_size"] = 32
    return raw


def peak_rss_mb(recipe: dict, folder: Path) -> float:
    """Train in a fresh process; its peak resident memory in MB.

    Read from /proc's VmHWM, the peak of this program alone: getrusage's ru_maxrss would carry over the peak of the
    parent (pytest) it was forked from, whatever the child itself used.
    """
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    script = ("import sys\nfrom verbovision.cli import main\n"
              "code = main(['train', sys.argv[1], '--out', sys.argv[2]])\n"
              "status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
              "print(int(status))\nraise SystemExit(code)")
    result = subprocess.run([sys.executable, "-c", script, str(path), str(folder / "run")], capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def assert_memory_flat(tmp_path: Path, val: Path, write: Callable[[Path, int], int], format: str, n_big: int,
                       **options) -> None:
    """One epoch over 25 images, then over `n_big` (every image read once, from its file, as its batch is built), each
    in a fresh process, data written by `write(folder, n)` to small/data and big/data: the big run's peak stays
    within a cap of the small one's, well below what holding the extra images would cost."""
    small_mb = write(tmp_path / "small/data", 25) / 2**20
    big_mb = write(tmp_path / "big/data", n_big) / 2**20
    assert big_mb > 15 * small_mb and big_mb > 150, (small_mb, big_mb)
    # One epoch, given as steps: a stream may not know its length.
    runs = {size: shard_recipe(tmp_path / size / "data", val, format, max_steps=n // 4, **options)
            for size, n in (("small", 25), ("big", n_big))}
    baseline, peak = (peak_rss_mb(runs[size], tmp_path / size) for size in ("small", "big"))
    # Allocator noise: the big run's peak was seen up to ~140 MB above the small one's (CI, pyarrow's and torch's
    # per-thread arenas); what the cap guards against is holding the data (big_mb), at least twice the cap.
    cap = baseline + max(100, (big_mb - small_mb) / 2)
    assert peak < cap < baseline + big_mb - small_mb, (peak, baseline, big_mb)
    assert json.loads((tmp_path / "big/run/run.json").read_text())["stages"]["wds"]["steps"] == n_big // 4


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def kinds(path, **options) -> list:
    return [item.kind if isinstance(item, RecordError) else "ok" for item in scan(path, ReadOptions(**options))]


QUESTION = "Describe the image briefly."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(command: str, model: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`verbo serve|web MODEL` in a subprocess on a free port; yields the process and its base URL once healthy."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "verbovision", command, str(model), "--port", str(port),
                             "--log-level", "warning", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to ~2 minutes on a loaded machine
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("server did not become healthy")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def red_circle() -> Image.Image:
    """A 64x64 white picture with a red circle: one image the plain-transformers family checks prompt with."""
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill="red")
    return image


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_message(url: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every `verbo` subcommand, nested ones (`data synth`) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subcommands(sub, (*path, name))


def png_bytes(colour=(10, 120, 250), size=(40, 32), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


TEXTS = ["a red square above a blue circle", "How many shapes are there? Two.", "Uma forma azul é grande."]


CHAT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]


def picture(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (240, 240, 240))
    ImageDraw.Draw(image).rectangle([2, 2, width // 2, height // 2], fill=(200, 30, 30))
    return image


def finite(loss: torch.Tensor) -> bool:
    return loss is not None and math.isfinite(loss.item())


def plain_or_images_only_processor(out):
    """AutoProcessor; without torchvision a processor class holding a video processor can be neither built nor loaded
    by transformers, so VerboVision's images-only loading of the same class stands in for it."""
    try:
        return AutoProcessor.from_pretrained(out)
    except ImportError:
        assert not is_torchvision_available()
        processor = load_processor(out)
        assert processor.video_processor is None
        return processor


def check_in_plain_transformers(out, family: str, model_class: str, processor_class: str, prompt: str | None,
                                keys: set, image_tokens: int, plain_prompt: str | None = None,
                                vision_grad: bool = True):
    """A tiny checkpoint of `family` loads with the Auto classes as `model_class` and a `processor_class`, renders
    the chat `prompt` (None: it has no chat template, and `plain_prompt` is the prompt), turns it and a 48x40 picture
    into `keys` with `image_tokens` image tokens, generates, and its loss is finite (and reaches the vision tower,
    where its images are not discrete codes). Returns the prompt's inputs and the processor."""
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 5_000_000
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = plain_or_images_only_processor(out)
    assert model.config.model_type == family and type(model).__name__ == model_class
    assert processor_class in [cls.__name__ for cls in type(processor).__mro__]

    if prompt is None:
        assert processor.chat_template is None
        prompt = plain_prompt
    else:
        assert processor.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == prompt
    # BOS once: where the prompt has it, the tokenizer adds none. Some processors (Cosmos3-Edge's) return the
    # mm_token_type_ids their model requires only when asked.
    bos = processor.tokenizer.bos_token
    ask = dict(add_special_tokens=not (bos and prompt.startswith(bos)), return_tensors="pt")
    if "mm_token_type_ids" in keys:
        ask["return_mm_token_type_ids"] = True
    inputs = processor(text=[prompt], images=[picture(48, 40)], **ask)
    assert set(inputs) == keys
    assert keys <= forward_parameters(type(model))  # the forward names every output of the processor
    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == image_tokens

    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    n_prompt = inputs["input_ids"].shape[1]
    assert generated[0, :n_prompt].tolist() == inputs["input_ids"][0].tolist() and generated.shape[1] > n_prompt

    full = processor(text=[prompt + "a red square" + processor.tokenizer.eos_token], images=[picture(48, 40)], **ask)
    labels = full["input_ids"].clone()
    labels[:, :n_prompt] = -100
    loss = model(**full, labels=labels).loss
    assert math.isfinite(loss.item())
    if vision_grad:
        loss.backward()
        patch_embedding = next(p for n, p in model.named_parameters()
                               if ("vision" in n or "visual" in n) and "language_model" not in n)  # not ERNIE's experts
        assert patch_embedding.grad.abs().sum() > 0  # the loss reached the image through the vision tower
    return inputs, processor
