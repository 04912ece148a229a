"""`verbo eval --endpoint`: an OpenAI-compatible server as the model, here the real `verbo serve` of a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from verbovision.cli import main
from verbovision.data.records import Record, Turn
from verbovision.errors import DataError
from verbovision.infer.endpoint import CACHE_FILE, messages, parameters
from verbovision.infer.messages import messages_record
from verbovision.infer.options import DecodeOptions

from .helpers import free_port, picture, running
from .test_benchmarks import coco_karpathy_dir

FLAGS = ["--metrics", "bleu,rouge_l,cider,exact_match", "--max-new-tokens", "8"]


@contextmanager
def proxy(target: str, answer: int | None = None, fail_first: list[int] = ()) -> Iterator[tuple[str, dict]]:
    """A server in front of `target` that answers the first `fail_first` requests with those statuses, then forwards
    `answer` chat completions (all, when None) and holds the later ones unanswered until it closes, so a client
    killed while waiting has exactly `answer` replies. Yields its URL and its counts: "completions" forwarded,
    "bodies" of every chat completion request in order, "held" an Event set when one is held."""
    counts = {"completions": 0, "bodies": [], "held": threading.Event()}
    lock = threading.Lock()
    failures = list(fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._forward(None)

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                counts["bodies"].append(body)
                status = failures.pop(0) if failures else None
                if status is None:
                    counts["completions"] += 1
                    hold = answer is not None and counts["completions"] > answer
            if status is not None:
                return self._send(status, json.dumps({"error": {"message": "busy"}}).encode())
            if hold:
                counts["held"].set()
                return closing.wait()
            self._forward(body)

        def _forward(self, body):
            reply = httpx.request(self.command, target + self.path, content=body,
                                  headers={"Content-Type": "application/json"}, timeout=120)
            self._send(reply.status_code, reply.content)

        def _send(self, status: int, content: bytes):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args):
            pass

    closing = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", counts
    finally:
        closing.set()
        server.shutdown()
        server.server_close()


def served(url: str) -> int:
    """Chat completions the server has answered."""
    return httpx.get(f"{url}/health").json()["requests"]


def rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_endpoint_scores_as_the_model_itself_and_a_killed_run_resumes_from_its_cache(model_dir, shapes_data,
                                                                                      tmp_path):
    data = ["--data", str(shapes_data / "train/caption_short_en.json"), *FLAGS]
    assert main(["eval", str(model_dir), *data, "--out", str(tmp_path / "direct")]) == 0
    records = len(rows(tmp_path / "direct"))
    out = tmp_path / "served"
    with running("serve", model_dir) as (_, url):
        with proxy(url, answer=5) as (proxy_url, counts):
            run = subprocess.Popen([sys.executable, "-m", "verbovision", "eval", "--endpoint", f"{proxy_url}/v1",
                                    *data, "--out", str(out), "--concurrency", "1"])
            try:
                assert counts["held"].wait(timeout=300), "the run never asked for its 6th reply"
            finally:
                run.kill()
                run.wait(timeout=60)
        assert len((out / CACHE_FILE).read_text().splitlines()) == 5  # the 5 replies received, each flushed
        assert served(url) == 5

        assert main(["eval", "--endpoint", f"{url}/v1", *data, "--out", str(out)]) == 0
        assert served(url) == records  # the 5 cached replies were not asked again
        assert main(["eval", "--endpoint", f"{url}/v1", *data, "--out", str(out)]) == 0
        assert served(url) == records

        benchmark = ["--benchmark", "coco-karpathy", "--data-dir", str(coco_karpathy_dir(tmp_path / "coco")),
                     "--limit", "3", "--max-new-tokens", "8"]
        assert main(["eval", "--endpoint", f"{url}/v1", *benchmark, "--out", str(tmp_path / "bench-served")]) == 0
    assert main(["eval", str(model_dir), *benchmark, "--out", str(tmp_path / "bench-direct")]) == 0
    for name in ("predictions.jsonl", "captions_karpathy_results.json"):
        assert (tmp_path / "bench-served/coco-karpathy" / name).read_text() == \
            (tmp_path / "bench-direct/coco-karpathy" / name).read_text()

    assert rows(out) == rows(tmp_path / "direct")
    direct = json.loads((tmp_path / "direct/report.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"] == {k: v for k, v in direct["metrics"].items() if k not in ("val_loss", "perplexity")}
    assert report["ci95"] == direct["ci95"]
    assert "not the model's probabilities" in report["skipped"]["val_loss"]


def test_busy_server_is_retried(model_dir, shapes_data, tmp_path):
    data = ["--data", str(shapes_data / "test/caption_short_en.json"), *FLAGS, "--concurrency", "1"]
    with running("serve", model_dir) as (_, url), proxy(url, fail_first=[429, 503]) as (proxy_url, counts):
        assert main(["eval", "--endpoint", f"{proxy_url}/v1", *data, "--out", str(tmp_path / "served")]) == 0
        assert counts["completions"] == len(rows(tmp_path / "served")) == served(url)
        assert counts["bodies"][0] == counts["bodies"][1] == counts["bodies"][2]  # the first, tried thrice


def test_unreachable_endpoint_is_one_line_exit_2(shapes_data, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["eval", "--endpoint", url, "--endpoint-model", "m", "--data",
                 str(shapes_data / "test/caption_short_en.json"), "--out", str(tmp_path / "e")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{url}/chat/completions: cannot connect" in error


def test_endpoint_without_a_scheme_is_one_line_exit_2(shapes_data, tmp_path, capsys):
    assert main(["eval", "--endpoint", "127.0.0.1:8000/v1", "--data", str(shapes_data / "test/caption_short_en.json"),
                 "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == ("verbo: error: --endpoint 127.0.0.1:8000/v1: not an http(s) URL; give the API "
                                       "root, e.g. http://127.0.0.1:8000/v1\n")


def test_endpoint_without_v1_suggests_it(shapes_data, tmp_path, capsys):
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert main(["eval", "--endpoint", root, "--data", str(shapes_data / "test/caption_short_en.json"),
                     "--out", str(tmp_path / "e")]) == 2
    finally:
        server.shutdown()
    assert capsys.readouterr().err.rstrip().endswith(f"(an OpenAI-compatible API root usually ends in /v1: {root}/v1?)")


def test_refused_request_is_not_retried(model_dir, shapes_data, tmp_path, capsys):
    data = ["--data", str(shapes_data / "test/caption_short_en.json"), *FLAGS]
    with running("serve", model_dir) as (_, url), proxy(url, fail_first=[400]) as (proxy_url, counts):
        assert main(["eval", "--endpoint", f"{proxy_url}/v1", "--endpoint-model", "m", *data, "--concurrency", "1",
                     "--out", str(tmp_path / "e")]) == 2
        refused = counts["bodies"][0]
        assert counts["bodies"].count(refused) == 1  # not sent again
    assert "HTTP 400: busy" in capsys.readouterr().err


def test_a_conversation_becomes_the_messages_verbo_serve_reads_back():
    turns = [Turn("system", "Be brief."), Turn("user", "<image>\nWhat is it?"), Turn("assistant", "A circle."),
             Turn("user", "And here<image>"), Turn("assistant", "")]
    record = Record("r", [picture(8, 8), picture(6, 4)], turns, "data.json")
    sent = messages(record)
    assert [m["content"] if isinstance(m["content"], str) else [p["type"] for p in m["content"]] for m in sent] == [
        "Be brief.", ["image_url", "text"], "A circle.", ["text", "image_url"]]
    back = messages_record(sent)  # as the server turns them into its record
    # the same text, but that content parts put an image on its own line: OpenAI's messages cannot glue them
    assert [t.text for t in back.turns] == [t.text.replace("here<", "here\n<") for t in turns]
    assert len(back.images) == 2
    with pytest.raises(DataError, match="2 <image> in the prompt for 1 images"):
        messages(Record("r", record.images[:1], turns, "data.json"))


def test_decoding_options_as_request_parameters():
    assert parameters(DecodeOptions(16)) == {"max_tokens": 16, "temperature": 0}  # greedy
    assert parameters(DecodeOptions(8, top_p=0.9, seed=1, stop=("x",), beams=1, top_k=5)) == {
        "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 1, "stop": ["x"], "top_k": 5}


@pytest.mark.parametrize(("flags", "message"), [
    (["MODEL", "--endpoint", "http://127.0.0.1:1/v1"], "MODEL (MODEL) or --endpoint, not both"),
    ([], "give MODEL, or --endpoint URL"),
    (["MODEL", "--concurrency", "2"], "--endpoint-model and --concurrency go with --endpoint URL"),
    (["--endpoint", "http://127.0.0.1:1/v1", "--device", "cpu", "--dtype", "float32"],
     "--device, --dtype say how to load and batch a model here"),
])
def test_wrong_mix_of_model_and_endpoint_is_one_line(shapes_data, capsys, flags, message):
    assert main(["eval", *flags, "--data", str(shapes_data / "test/caption_short_en.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error
