"""Serving throughput: `verbo serve` with continuous batching vs dynamic batching, same model, same run.

Trains a tiny VLM for a few steps (or takes --model), then starts `verbo serve` twice on 127.0.0.1, with
`--batching continuous` (a request joins the running batch at the next decoding step and leaves at its end) and with
`--batching dynamic` (a batch runs to its end; requests arriving meanwhile form the next one), both with the same
`--batch-size`. Each time --clients concurrent clients (the official openai client, one thread each) send --requests
requests in turn, each an image question with a max_tokens of 8, 16, 32 or 64 (varying by client and request), so
replies of different lengths share batches. Replies are greedy: both servers generate the same tokens (checked).
Reports requests/s and p50/p95 latency as the clients see them, and the server's /metrics (time to first token,
generated tokens/s).

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


def tiny_model(work: Path) -> tuple[Path, list[Path]]:
    """Synthetic shapes data and a tiny model trained on it for 30 steps (enough to write text); (model, 4 images)."""
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
    return work / "run/final", sorted((data / "images").glob("*.png"))[:4]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, batching: str, batch_size: int) -> tuple[subprocess.Popen, str]:
    """`verbo serve` on a free port. One torch thread: on a small machine the clients need the other cores, and
    torch's threads waiting on each other then cost more than they give."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "verbovision", "serve", str(model), "--port", str(port),
                             "--batching", batching, "--batch-size", str(batch_size), "--threads", "1",
                             "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


MAX_TOKENS = (8, 16, 32, 64)
QUESTIONS = ("Describe the image briefly.", "What is in the picture?")


def measure(url: str, model: Path, images: list[Path], clients: int, per_client: int) -> dict:
    """Requests/s and latency percentiles of `clients` concurrent clients, each sending `per_client` requests; the
    replies, and the server's /metrics after the run."""
    import httpx
    import openai

    uris = ["data:image/png;base64," + base64.b64encode(image.read_bytes()).decode() for image in images]

    def ask(client, index: int) -> str:
        content = [{"type": "image_url", "image_url": {"url": uris[index % len(uris)]}},
                   {"type": "text", "text": QUESTIONS[index % len(QUESTIONS)]}]
        reply = client.chat.completions.create(model=str(model), messages=[{"role": "user", "content": content}],
                                               max_tokens=MAX_TOKENS[index % len(MAX_TOKENS)], temperature=0)
        return reply.choices[0].message.content

    def client_session(number: int) -> list[tuple[float, str]]:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=600)
        session = []
        for request in range(per_client):
            start = time.perf_counter()
            text = ask(client, number + request)
            session.append((time.perf_counter() - start, text))
        return session

    client_session(0)  # warm-up: first-call costs are not serving throughput
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        sessions = list(pool.map(client_session, range(clients)))
    elapsed = time.perf_counter() - start
    latencies = sorted(t for session in sessions for t, _ in session)
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "replies": [text for session in sessions for _, text in session],
            "metrics": httpx.get(f"{url}/metrics").json()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model to serve (default: a tiny one trained here)")
    parser.add_argument("--images", nargs="+", help="images of the requests (default: 4 synthetic ones)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--batch-size", type=int, default=16, help="both servers' --batch-size")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.requests = 1
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, images = Path(args.model), [Path(image) for image in args.images]
        else:
            model, images = tiny_model(Path(tmp))
        results = {}
        for batching in ("continuous", "dynamic"):
            proc, url = start_server(model, batching, args.batch_size)
            try:
                results[batching] = measure(url, model, images, args.clients, args.requests)
            finally:
                proc.terminate()
                proc.wait(timeout=120)
    report(args, results)


def report(args, results: dict) -> None:
    import torch

    continuous, dynamic = results["continuous"], results["dynamic"]
    same = "identical" if continuous["replies"] == dynamic["replies"] else "DIFFERENT"
    lines = ["## Serving: continuous vs dynamic batching (benchmarks/serve_bench.py)", "",
             f"{args.clients} concurrent openai clients x {args.requests} requests, each 1 image + question, greedy, "
             f"max_tokens {'/'.join(map(str, MAX_TOKENS))} by turns, against `verbo serve --threads 1 --batch-size "
             f"{args.batch_size}` on 127.0.0.1; model: "
             f"{args.model or 'tiny (SigLIP 1x32 @32/8 + Qwen2 2x32, trained 30 steps)'}; {time.strftime('%Y-%m-%d')}, "
             f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, one run; load average "
             f"{os.getloadavg()[0]:.1f} at the end (other jobs share the machine: expect run-to-run noise). Replies "
             f"of both servers {same}.", "",
             "| server | requests | requests/s | p50 latency (s) | p95 latency (s) | TTFT p50 / p95 (s) | generated "
             "tokens | tokens/s while generating |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        m = r["metrics"]
        first = m["time_to_first_token_s"]
        lines.append(f"| {name} | {r['requests']} | {r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | "
                     f"{first['p50']:.3f} / {first['p95']:.3f} | {m['generated_tokens']} | "
                     f"{m['generated_tokens_per_s']:.0f} |")
    lines += ["", f"Continuous batching: {continuous['rps'] / dynamic['rps']:.2f}x the requests/s of dynamic batching; "
              f"p95 latency {continuous['p95']:.2f} s vs {dynamic['p95']:.2f} s. (TTFT and tokens are the server's "
              "/metrics, the warm-up request included.)", ""]
    publish("\n".join(lines), record=not args.quick)


if __name__ == "__main__":
    main()
