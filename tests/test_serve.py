"""`verbo serve`: a real uvicorn process on 127.0.0.1 driven by the official openai client."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from verbovision.cli import main, make_parser
from verbovision.cli.serve import serve_config
from verbovision.serve import remote
from verbovision.serve.config import ServeConfig
from verbovision.serve.errors import ApiError
from verbovision.infer.options import DecodeOptions
from verbovision.serve.request import image_bytes, parse_chat_request

from .helpers import QUESTION, data_uri, image_message, running

KEY = "test-key"


@pytest.fixture(scope="module")
def server(model_dir) -> Iterator[str]:
    """A server with an API key and small limits, so that each limit is easy to exceed."""
    with running("serve", model_dir, "--api-key", KEY, "--max-body-mb", "1", "--max-image-mb", "0.05",
                 "--max-image-pixels", "100000", "--max-prompt-tokens", "300", "--max-new-tokens", "8") as (_, url):
        yield url


@pytest.fixture()
def client(server, model_dir) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def shape_uri(shapes_data) -> str:
    return data_uri(Image.open(sorted((shapes_data / "images").glob("*.png"))[0]))


def test_private_by_default(monkeypatch):
    monkeypatch.delenv("VERBO_API_KEY", raising=False)
    for command in ("serve", "web"):
        config = serve_config(make_parser().parse_args([command, "m"]), web=command == "web")
        assert (config.host, config.allow_remote_images, config.api_key) == ("127.0.0.1", False, None)


@pytest.mark.parametrize("flag, value, rule", [("--port", "80000", "a TCP port in 0..65535"),
                                               ("--max-completion-tokens", "0", "an integer >= 1"),
                                               ("--max-n", "0", "an integer >= 1")])
def test_server_flags_out_of_range_are_refused_before_the_model_loads(capsys, flag, value, rule):
    assert main(["serve", "no/such-model", flag, value]) == 2
    assert capsys.readouterr().err == f"verbo: error: {flag} {value}: give {rule}\n"


def test_port_in_use_is_refused_before_the_model_loads(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "no/such-model", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"verbo: error: --host 127.0.0.1 --port {port}: cannot listen there (Address "
                                       "already in use); pick another --port, or an address of this machine as --host "
                                       "(127.0.0.1, 0.0.0.0)\n")


def test_models_and_health(client, server, model_dir):
    assert [m.id for m in client.models.list()] == [str(model_dir)]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["waiting"] == 0


def test_plain_and_image_completions(client, model_dir, shape_uri):
    text_only = client.chat.completions.create(model=str(model_dir), messages=[{"role": "user", "content": "hi"}])
    with_image = client.chat.completions.create(model=str(model_dir), messages=image_message(shape_uri), max_tokens=5)
    for reply, limit in ((text_only, 8), (with_image, 5)):
        choice = reply.choices[0]
        assert reply.object == "chat.completion" and choice.message.role == "assistant"
        assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
        assert 1 <= reply.usage.completion_tokens <= limit
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # the image's tokens count in the prompt
    assert with_image.usage.prompt_tokens > text_only.usage.prompt_tokens + 10


def test_developer_role_is_the_system_role(client, model_dir):
    ask = partial(client.chat.completions.create, model=str(model_dir))
    replies = [ask(messages=[{"role": role, "content": "Answer briefly."}, {"role": "user", "content": "hi"}])
               for role in ("developer", "system")]
    assert replies[0].choices[0].message.content == replies[1].choices[0].message.content
    assert replies[0].usage.prompt_tokens == replies[1].usage.prompt_tokens


def test_base64_wrapped_across_lines_is_the_same_image(client, model_dir, shape_uri):
    """`base64` and some clients break the payload into lines; other characters outside base64 are still refused."""
    header, payload = shape_uri.split(",")
    lines = [payload[i:i + 76] for i in range(0, len(payload), 76)]
    ask = partial(client.chat.completions.create, model=str(model_dir), max_tokens=6)
    expected = ask(messages=image_message(shape_uri)).choices[0].message.content
    for newline in ("\n", "\r\n"):
        wrapped = f"{header},{newline.join(lines)}{newline}"
        assert ask(messages=image_message(wrapped)).choices[0].message.content == expected
    with pytest.raises(openai.BadRequestError, match="not valid base64") as caught:
        ask(messages=image_message(f"{header},{lines[0]}*{''.join(lines[1:])}"))
    assert caught.value.code == "invalid_image"


def test_sampling_n_seed_and_stop(client, model_dir, shape_uri):
    ask = partial(client.chat.completions.create, model=str(model_dir), messages=image_message(shape_uri))
    first, again = (ask(n=3, temperature=1.5, top_p=0.95, seed=11, max_tokens=6) for _ in range(2))
    assert len(first.choices) == 3 and [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert 3 <= first.usage.completion_tokens <= 3 * 6
    greedy = ask().choices[0].message.content
    assert greedy, "the tiny model should say something"
    stopped = ask(stop=[greedy[0]])
    assert stopped.choices[0].message.content == "" and stopped.choices[0].finish_reason == "stop"
    # decoding options beyond OpenAI's, as extra body fields (vLLM's names): one beam is greedy
    assert ask(extra_body={"num_beams": 1, "length_penalty": 2.0}).choices[0].message.content == greedy
    beams = ask(max_tokens=6, extra_body={"num_beams": 3, "early_stopping": True, "no_repeat_ngram_size": 2,
                                          "min_tokens": 2})
    assert beams.usage.completion_tokens >= 2


def test_streaming_matches_the_plain_reply(client, model_dir, shape_uri):
    params = dict(model=str(model_dir), messages=image_message(shape_uri), temperature=1.0, seed=5, max_tokens=8)
    plain = client.chat.completions.create(**params)
    chunks = list(client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_limits_and_bad_requests_are_openai_errors(client, model_dir, shape_uri, server):
    model = str(model_dir)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8))
    ask = image_message
    text = lambda content: [{"role": "user", "content": content}]  # noqa: E731
    cases = [  # (error class, status, expected code, param or message part, request)
        (openai.BadRequestError, 400, "image_too_large", dict(messages=ask(data_uri(noise)))),
        (openai.BadRequestError, 400, "pixels", dict(messages=ask(data_uri(Image.new("RGB", (400, 400)))))),
        (openai.BadRequestError, 400, "remote_images_disabled", dict(messages=ask("http://127.0.0.1:9/a.png"))),
        (openai.BadRequestError, 400, "invalid_image", dict(messages=ask("data:image/png;base64,AAAA"))),
        (openai.BadRequestError, 400, "context_length_exceeded", dict(messages=text("red " * 400))),
        (openai.BadRequestError, 400, "temperature", dict(messages=ask(shape_uri), temperature=5)),
        (openai.BadRequestError, 400, "max_tokens", dict(messages=ask(shape_uri), max_tokens=100_000)),
        (openai.BadRequestError, 400, "num_beams", dict(messages=ask(shape_uri), extra_body={"num_beams": 99})),
        (openai.BadRequestError, 400, "seed", dict(messages=ask(shape_uri), temperature=1.0, seed=2**64)),
        (openai.BadRequestError, 400, "messages", dict(messages=["hi"])),
        (openai.BadRequestError, 400, "messages", dict(messages=text([{"type": "text", "text": 5}]))),
        (openai.NotFoundError, 404, "model_not_found", dict(messages=ask(shape_uri), model="gpt-4o")),
        (openai.APIStatusError, 413, "request_too_large", dict(messages=text("x" * 1_200_000))),
    ]
    for error, status, code, request in cases:
        with pytest.raises(error) as caught:
            client.chat.completions.create(**{"model": model, **request})
        assert caught.value.status_code == status, code
        assert code in (caught.value.code, caught.value.param) or code in caught.value.message, caught.value
    # the raw body is OpenAI's error shape
    for body in (b"{not json", b"[" * 100_000 + b"]" * 100_000):  # the second nests deeper than Python recurses
        raw = httpx.post(f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, content=body)
        assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}



def test_text_that_is_not_unicode_is_a_bad_request(server):
    """A JSON escape of a lone surrogate (half an emoji, a byte that is not UTF-8) is no text a tokenizer takes: a
    400 naming it, not the 500 "generation failed: TextEncodeInput must be..." it was."""
    body = b'{"model": "verbo", "messages": [{"role": "user", "content": "caf\\udce9"}]}'
    raw = httpx.post(f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, content=body)
    assert raw.status_code == 400, raw.text
    assert "text is not valid UTF-8" in raw.json()["error"]["message"]


def huge_png_uri(width: int, height: int) -> str:
    """A data: URI of a PNG whose header says width x height, the pixels never stored."""
    png = bytearray(base64.b64decode(data_uri(Image.new("RGB", (8, 8))).partition(",")[2]))
    png[16:24] = struct.pack(">II", width, height)  # IHDR
    png[29:33] = struct.pack(">I", zlib.crc32(png[12:29]))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_an_image_over_pils_own_limit_is_too_large_for_the_server(client, model_dir):
    """PIL refuses to open an image of more than twice its MAX_IMAGE_PIXELS (a decompression bomb): the server says
    what it says of every image over its limit, not PIL's words."""
    assert 20_000 * 20_000 > 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=str(model_dir), messages=image_message(huge_png_uri(20_000, 20_000)))
    assert caught.value.code == "image_too_large"
    assert "pixels, more than the server's limit of 100000" in caught.value.message


def test_a_pixel_limit_over_pils_own_is_the_one_that_holds(model_dir):
    """--max-image-pixels above what PIL opens raises PIL's limit in the server: an image is refused for the server's
    limit alone, by its size."""
    assert 300_000_000 > 2 * Image.MAX_IMAGE_PIXELS
    with running("serve", model_dir, "--max-image-pixels", "300000000") as (_, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="verbo", messages=image_message(huge_png_uri(20_000, 20_000)))
    assert caught.value.code == "image_too_large"
    assert ("image of 20000x20000 = 400000000 pixels, more than the server's limit of 300000000"
            in caught.value.message)


@pytest.mark.parametrize("maximum, said", [({"max_tokens": 3}, "'max_tokens' (3)"),
                                           ({"max_completion_tokens": 3}, "'max_completion_tokens' (3)"),
                                           ({}, "max_tokens (8, this server's default)")])
def test_min_tokens_over_max_tokens_is_refused(client, model_dir, maximum, said):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=str(model_dir), messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"min_tokens": 9, **maximum})  # older clients lack the parameters
    assert caught.value.param == "min_tokens"
    assert f"'min_tokens' (9) must not be more than {said}" in caught.value.message


def test_a_max_tokens_below_the_servers_min_new_tokens_wins(model_dir):
    """OpenAI's max_tokens is a cap the client sets, unaware of the server's --min-new-tokens (a default, not a
    rule): the minimum is cut down to it, not left above it (transformers warned "Unfeasible length constraints" at
    such a request) nor a reason to refuse it."""
    with running("serve", model_dir, "--min-new-tokens", "6", "--max-new-tokens", "8") as (proc, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120)
        ask = partial(client.chat.completions.create, model="verbo", messages=[{"role": "user", "content": "hi"}])
        short, default = ask(max_tokens=3), ask()
        proc.kill()
        log = proc.stdout.read()
    assert (short.usage.completion_tokens, short.choices[0].finish_reason) == (3, "length")
    assert default.usage.completion_tokens >= 6
    assert "Unfeasible" not in log, log
    config = ServeConfig("m", defaults=DecodeOptions(min_new_tokens=6))
    assert parse_chat_request({"model": "m", "messages": ["hi"], "max_tokens": 3}, config).options.min_new_tokens == 3


def test_api_key_is_required(server, model_dir):
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=str(model_dir), messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "invalid_api_key"
    assert httpx.get(f"{server}/v1/models").status_code == 401


def test_32_concurrent_clients_are_batched_and_all_answered(server, model_dir, shape_uri):
    before = httpx.get(f"{server}/health").json()

    def client_session(index: int) -> list[tuple[int, str]]:
        client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=300)
        replies = []
        for round_ in range(3):
            stream = round_ == 1 and index % 2 == 0  # streaming and plain requests share batches
            reply = client.chat.completions.create(model=str(model_dir), messages=image_message(shape_uri),
                                                   max_tokens=4 + index % 3, stream=stream)
            if stream:
                text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
            else:
                text = reply.choices[0].message.content
            replies.append((index, text))
        return replies

    with ThreadPoolExecutor(32) as pool:
        results = [r for session in pool.map(client_session, range(32)) for r in session]
    assert len(results) == 96 and all(isinstance(text, str) for _, text in results)
    after = httpx.get(f"{server}/health").json()
    assert after["requests"] - before["requests"] == 96
    assert after["largest_batch"] > 1, "concurrent requests should have shared a batch"
    assert after["batches"] - before["batches"] < 96


def test_a_plain_model_replies_alike_whatever_the_order_of_the_request_parts(plain_model_dir, shapes_data):
    """The request is rendered in the layout the model was trained on (image, then prompt); an image-only request is
    asked the prompt the model was trained on: every form gets `verbo caption`'s reply."""
    from verbovision.infer.options import DecodeOptions
    from verbovision.infer.vlm import VLM

    images = sorted((shapes_data / "images").glob("*.png"))[:3]
    captions = VLM(plain_model_dir, device="cpu").caption(images, options=DecodeOptions(max_new_tokens=24))
    assert any(captions), "the tiny model should say something"
    with running("serve", plain_model_dir, "--max-new-tokens", "24") as (_, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120)
        for path, caption in zip(images, captions):
            image = {"type": "image_url", "image_url": {"url": data_uri(Image.open(path))}}
            prompt = {"type": "text", "text": QUESTION}
            for content in ([prompt, image], [image, prompt], [image]):
                reply = client.chat.completions.create(model=str(plain_model_dir),
                                                       messages=[{"role": "user", "content": content}])
                assert reply.choices[0].message.content == caption, (path.name, content)


def test_remote_images_are_fetched_only_when_allowed(shapes_data):
    handler = partial(SimpleHTTPRequestHandler, directory=str(shapes_data / "images"))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as http:
        threading.Thread(target=http.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{http.server_port}/000000.png"
        expected = (shapes_data / "images/000000.png").read_bytes()
        assert image_bytes(url, ServeConfig("m", allow_remote_images=True)) == expected
        with pytest.raises(ApiError) as refused:
            image_bytes(url, ServeConfig("m"))
        assert refused.value.code == "remote_images_disabled"
        http.shutdown()


@contextmanager
def answering(answer: bytes, slow_from: int | None = None) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 sending `answer` to any GET, from byte `slow_from` on one byte at a time (a few
    seconds in all); yields the URL of an image there."""

    class Raw(BaseHTTPRequestHandler):
        def do_GET(self):
            fast = len(answer) if slow_from is None else slow_from
            try:
                self.wfile.write(answer[:fast])
                for i in range(fast, len(answer)):
                    time.sleep(0.05)
                    self.wfile.write(answer[i:i + 1])
            except OSError:  # the client hung up
                pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Raw) as http:
        threading.Thread(target=http.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{http.server_port}/image.png"
        http.shutdown()


def png_answer() -> bytes:
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="PNG")
    return (f"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(image.getvalue())}\r\n\r\n"
            .encode() + image.getvalue())


@pytest.mark.parametrize("slow_from", ["status line", "body"])
def test_a_remote_image_trickled_byte_by_byte_runs_out_of_time(monkeypatch, slow_from):
    """Socket timeouts bound each read, not a server that sends a byte now and then: the download has a deadline."""
    monkeypatch.setattr(remote, "FETCH_SECONDS", 0.5)
    answer = png_answer()
    with answering(answer, 0 if slow_from == "status line" else answer.index(b"\r\n\r\n") + 4) as url:
        with pytest.raises(ApiError) as refused:
            image_bytes(url, ServeConfig("m", allow_remote_images=True))
    assert refused.value.code == "image_fetch_failed"
    assert refused.value.message == f"could not fetch image {url}: not downloaded within 0.5 s"


def test_a_host_name_lookup_that_hangs_runs_out_of_time(monkeypatch):
    """No socket timeout bounds the name lookup (the system resolver retries as it likes): the deadline holds there
    too. This lookup blocks until the test has its answer, and then fails (nothing here may reach a resolver)."""
    monkeypatch.setattr(remote, "FETCH_SECONDS", 0.5)
    released = threading.Event()

    def hanging_lookup(host, *args, **kwargs):
        released.wait()
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    url = "http://images.example/image.png"
    try:
        with pytest.raises(ApiError) as refused:
            image_bytes(url, ServeConfig("m", allow_remote_images=True))
    finally:
        released.set()
    assert refused.value.message == f"could not fetch image {url}: not downloaded within 0.5 s"


def test_a_tls_handshake_trickled_byte_by_byte_runs_out_of_time(monkeypatch):
    """An https download's TLS handshake is bounded as a whole too (by the socket timeout: CPython's handshake keeps
    one deadline): this server answers the ClientHello with a record header announcing 16 kB, then sends them a byte
    at a time."""
    monkeypatch.setattr(remote, "FETCH_SECONDS", 0.5)
    hung_up = []

    class Stall(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(4096)  # the ClientHello
            try:
                self.request.sendall(bytes([0x16, 0x03, 0x03, 0x40, 0x00]))  # a handshake record of 16384 bytes
                for _ in range(200):
                    time.sleep(0.05)
                    self.request.sendall(b"\x00")
            except OSError:  # the client hung up
                hung_up.append(True)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Stall) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"https://127.0.0.1:{server.server_address[1]}/image.png"
        with pytest.raises(ApiError) as refused:
            image_bytes(url, ServeConfig("m", allow_remote_images=True))
        server.shutdown()
    # Closing the server waits for its handler: the client left in the middle of the handshake, not when it ended.
    assert hung_up and refused.value.message == f"could not fetch image {url}: not downloaded within 0.5 s"


def test_a_garbled_http_reply_is_a_fetch_failure():
    with answering(b"no HTTP here\r\n\r\n") as url, pytest.raises(ApiError) as refused:
        image_bytes(url, ServeConfig("m", allow_remote_images=True))
    assert refused.value.code == "image_fetch_failed" and "no HTTP here" in refused.value.message


def test_sigterm_lets_a_stream_in_flight_finish(model_dir, shape_uri):
    with running("serve", model_dir, "--max-new-tokens", "48") as (proc, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120)
        stream = client.chat.completions.create(model=str(model_dir), messages=image_message(shape_uri), stream=True)
        chunks = [next(iter(stream))]  # the request is in flight
        os.kill(proc.pid, signal.SIGTERM)
        chunks += list(stream)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
