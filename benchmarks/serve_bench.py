"""Serving throughput: `verbo serve` with dynamic batching vs one request at a time, same model, same run.

Trains a tiny VLM for a few steps (or takes --model), then starts `verbo serve` twice on 127.0.0.1: with
`--batch-size 16` (concurrent requests share a batch) and with `--batch-size 1` (each request runs alone). Each time
16 concurrent clients (the official openai client, one thread each) send the same image question several times;
replies are greedy, so both servers generate exactly the same tokens. Reports requests/s and p50/p95 latency.

    python benchmarks/serve_bench.py            # prints a table, appends it to benchmarks/RESULTS.md
    python benchmarks/serve_bench.py --quick    # fewer requests (smoke test), nothing appended
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from results import publish

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TINY = {"vision": {"arch": "siglip", "hidden_size": 32, "layers": 1, "heads": 2, "image_size": 32, "patch_size": 8},
        "language": {"arch": "qwen2", "hidden_size": 32, "layers": 2, "heads": 2, "vocab_size": 300},
        "connector": {"type": "mlp", "act": "gelu"}}


def tiny_model(work: Path) -> tuple[Path, Path]:
    """Synthetic shapes data and a tiny model trained on it for 30 steps (enough to write text); (model, an image)."""
    import yaml

    from verbovision.cli import main as verbo
    from verbovision.data.synth import synth_shapes

    data = work / "data"
    synth_shapes(data, n=40, seed=0, langs=("en",))
    stage = {"name": "full", "data": {"train": ["train/caption_short_en.json"]}, "max_steps": 30, "batch_size": 4,
             "lr": 3e-3, "train": {"vision": "full", "connector": "full", "language": "full"}}
    recipe = {"name": "serve-bench", "seed": 0, "data_root": str(data), "model": TINY, "stages": [stage]}
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert verbo(["train", str(work / "recipe.yaml"), "--out", str(work / "run")]) == 0
    return work / "run/final", sorted((data / "images").glob("*.png"))[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, batch_size: int) -> tuple[subprocess.Popen, str]:
    """`verbo serve` on a free port. One torch thread: on a small machine the clients need the other cores, and
    torch's threads waiting on each other then cost more than they give."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "verbovision", "serve", str(model), "--port", str(port),
                             "--batch-size", str(batch_size), "--threads", "1", "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def measure(url: str, model: Path, image: Path, clients: int, per_client: int, max_tokens: int) -> dict:
    """Requests/s and latency percentiles of `clients` concurrent clients, each sending `per_client` requests."""
    import openai

    uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                             {"type": "text", "text": "Describe the image briefly."}]}]

    def client_session(_) -> list[float]:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=600)
        latencies = []
        for _ in range(per_client):
            start = time.perf_counter()
            client.chat.completions.create(model=str(model), messages=messages, max_tokens=max_tokens, temperature=0)
            latencies.append(time.perf_counter() - start)
        return latencies

    client_session(0)  # warm-up: first-call costs are not serving throughput
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(t for session in pool.map(client_session, range(clients)) for t in session)
    elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model to serve (default: a tiny one trained here)")
    parser.add_argument("--image", help="image of the requests (default: a synthetic one)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.requests = 2
    with tempfile.TemporaryDirectory() as tmp:
        model, image = (Path(args.model), Path(args.image)) if args.model else tiny_model(Path(tmp))
        results = {}
        for name, batch_size in (("dynamic batching (batch <= 16)", 16), ("one at a time (batch 1)", 1)):
            proc, url = start_server(model, batch_size)
            try:
                results[name] = measure(url, model, image, args.clients, args.requests, args.max_tokens)
            finally:
                proc.terminate()
                proc.wait(timeout=120)
    report(args, results)


def report(args, results: dict) -> None:
    import torch

    batched, single = results.values()
    lines = ["## Serving (benchmarks/serve_bench.py)", "",
             f"{args.clients} concurrent openai clients x {args.requests} requests, each 1 image + question, greedy, "
             f"{args.max_tokens} new tokens, against `verbo serve --threads 1` on 127.0.0.1; model: "
             f"{args.model or 'tiny (SigLIP 1x32 @32/8 + Qwen2 2x32, trained 30 steps)'}; {time.strftime('%Y-%m-%d')}, "
             f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, one run; load average "
             f"{os.getloadavg()[0]:.1f} at the end (other jobs share the machine).", "",
             "| server | requests | requests/s | p50 latency (s) | p95 latency (s) |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['requests']} | {r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} |")
    lines += ["", f"Dynamic batching: {batched['rps'] / single['rps']:.1f}x the requests/s of one request at a time; "
              f"p50 latency {batched['p50']:.2f} s vs {single['p50']:.2f} s.", ""]
    publish("\n".join(lines), record=not args.quick)


if __name__ == "__main__":
    main()
