"""Continuous batching: requests join the running batch between decoding steps and leave at their end, each reply
the one it gets alone (`VLM.generate_details`, float32, greedy); `verbo serve` answers through it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import openai
import pytest
from PIL import Image

from verbovision.infer.continuous import ContinuousBatch, why_not_continuous
from verbovision.infer.messages import prompt_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM

from .helpers import data_uri, image_message, running
from .tiny_families import make_tiny_llava

QUESTIONS = ("Describe the image briefly.", "What is in the picture? Answer in a few words, please.", "Colors?")


@pytest.fixture(scope="module", params=["verbovision", "llava"])
def vlm(request, tmp_path_factory, tiny_tokenizer_texts) -> VLM:
    """A model VerboVision built and trained (Qwen2 language model), and a stock LLaVA (Llama) one, random."""
    if request.param == "verbovision":
        return VLM(request.getfixturevalue("model_dir"), device="cpu")
    return VLM(make_tiny_llava(tmp_path_factory.mktemp("llava"), tiny_tokenizer_texts), device="cpu")


@pytest.fixture(scope="module")
def records(shapes_data) -> list:
    """Prompts of different lengths about different images, and one without an image."""
    images = sorted((shapes_data / "images").glob("*.png"))[:5]
    return [prompt_record(image, QUESTIONS[i % 3]) for i, image in enumerate(images)] + [prompt_record(None, "red")]


@dataclass
class Collected:
    """A request to `ContinuousBatch` that keeps what it is told."""

    records: list
    options: list
    streaming: bool = True
    pieces: dict = field(default_factory=dict)
    generations: list | None = None
    error: Exception | None = None

    def text(self, choice: int, piece: str) -> None:
        self.pieces[choice] = self.pieces.get(choice, "") + piece

    def done(self, generations: list) -> None:
        assert self.generations is None, "told twice"
        self.generations = generations

    def failed(self, error: Exception) -> None:
        self.error = error


def run(engine: ContinuousBatch, schedule: dict[int, list[Collected]]) -> list[set[int]]:
    """Step the engine, submitting schedule[k] before step k, until all is done; per step, the indices (in
    submission order) of the requests whose rows decoded in it."""
    order = [request for step in sorted(schedule) for request in schedule[step]]
    in_flight, step = [], 0
    while step <= max(schedule) or engine.busy:
        for request in schedule.get(step, []):
            engine.submit(request)
        engine.step()
        in_flight.append({order.index(row.replies.request) for row in engine.rows})
        step += 1
    return in_flight


def stop_within(text: str) -> str:
    """A stop string a reply meets: two characters from its middle (or its first, if shorter)."""
    return text[len(text) // 2 : len(text) // 2 + 2] if len(text) >= 4 else text[:1]


def test_requests_joining_at_any_step_get_their_replies_alone(vlm, records):
    assert why_not_continuous(vlm) is None
    limits = (6, 14, 3, 10, 1, 8)
    options = [DecodeOptions(max_new_tokens=n) for n in limits]
    alone = [vlm.generate_details([r], o)[0] for r, o in zip(records, options)]
    stopped = DecodeOptions(max_new_tokens=14, stop=(stop_within(alone[1].text) or "x",))
    requests = [Collected([r], [o]) for r, o in zip(records, options)]
    requests.append(Collected([records[1], records[3]], [stopped, options[3]]))  # n=2, one stop string
    requests[2].streaming = False
    expected = [[a] for a in alone] + [vlm.generate_details([records[1], records[3]], [stopped, options[3]])]
    steps = run(ContinuousBatch(vlm, max_rows=4),
                {0: requests[:2], 2: requests[2:4], 3: [requests[4]], 5: requests[5:]})
    for request, replies in zip(requests, expected):
        assert request.error is None and request.generations == replies
        if request.streaming:
            assert [request.pieces.get(i, "") for i in range(len(replies))] == [g.text for g in replies]
    assert not requests[2].pieces
    assert max(len(s) for s in steps) > 1 and all(len(rows) <= 4 for rows in steps)
    # a request sent at step 2 decoded beside one sent at step 0, which was still going
    assert any({1, 3} <= s for s in steps)
    assert stopped.stop[0] not in requests[6].generations[0].text


def test_the_token_cap_lets_one_request_in_at_a_time_with_the_same_replies(vlm, records):
    options = DecodeOptions(max_new_tokens=5)
    alone = [vlm.generate_details([r], options)[0] for r in records[:3]]
    requests = [Collected([r], [options]) for r in records[:3]]
    longest = max(vlm.prompt_tokens(r) for r in records[:3]) + options.max_new_tokens
    steps = run(ContinuousBatch(vlm, max_rows=8, max_cached_tokens=longest), {0: requests})
    assert [r.generations for r in requests] == [[a] for a in alone]
    assert max(len(s) for s in steps) == 1


def test_a_request_that_cannot_be_prefilled_fails_alone(vlm, records, tmp_path):
    broken = Collected([prompt_record(tmp_path / "missing.png", "?")], [DecodeOptions(max_new_tokens=3)])
    fine = Collected([records[0]], [DecodeOptions(max_new_tokens=3)])
    run(ContinuousBatch(vlm, max_rows=4), {0: [fine], 1: [broken]})
    assert broken.error is not None and broken.generations is None
    assert fine.generations == vlm.generate_details([records[0]], DecodeOptions(max_new_tokens=3))


def test_models_outside_the_greedy_loop_say_why(vlm):
    vlm_without = VLM.from_loaded(vlm.model, vlm.processor)
    vlm_without.greedy_loop_fits = False
    assert "greedy loop" in why_not_continuous(vlm_without)


def test_16_concurrent_clients_get_the_replies_of_sequential_requests(model_dir, shapes_data):
    uris = [data_uri(Image.open(path)) for path in sorted((shapes_data / "images").glob("*.png"))[:4]]
    requests = [{"messages": image_message(uris[i % 4], QUESTIONS[i % 3]), "max_tokens": 4 + i % 5,
                 "stop": ["circle"] if i % 4 == 3 else None} for i in range(16)]
    with running("serve", model_dir, "--batch-size", "8") as (_, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=300)

        def ask(request: dict, stream: bool) -> tuple[str, str]:
            reply = client.chat.completions.create(model=str(model_dir), stream=stream, **request)
            if not stream:
                return reply.choices[0].message.content, reply.choices[0].finish_reason
            chunks = [c for c in reply if c.choices]
            return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason

        sequential = [ask(request, stream=False) for request in requests]
        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(ask, requests, [i % 2 == 1 for i in range(16)]))
        metrics = httpx.get(f"{url}/metrics").json()
    assert concurrent == sequential
    assert any(text for text, _ in sequential), "the tiny model should say something"
    assert metrics["batching"] == "continuous" and metrics["requests"] == 32 and metrics["largest_batch"] > 1
    assert metrics["over_requests"] == 32 and metrics["generated_tokens"] > 0 and metrics["generated_tokens_per_s"]
    first, latency = metrics["time_to_first_token_s"], metrics["latency_s"]
    assert 0 <= first["p50"] <= first["p95"] <= latency["p95"] and latency["p50"] <= latency["p95"]


def test_a_short_request_sent_later_finishes_before_a_long_one_running(tmp_path, tiny_tokenizer_texts):
    """The long request (a random model: it runs to max_tokens) is decoding when the short one arrives; the short
    one joins its batch and leaves at its end. (With batches run to completion it would wait for the long one.)"""
    model = make_tiny_llava(tmp_path / "llava", tiny_tokenizer_texts)
    with running("serve", model) as (_, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=300)
        finished: list[str] = []
        started = threading.Event()

        def long_request() -> str:
            stream = client.chat.completions.create(model=str(model), messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=300, stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    started.set()  # decoding, not just queued
                reason = chunk.choices[0].finish_reason if chunk.choices else None
            finished.append("long")
            return reason

        with ThreadPoolExecutor(1) as pool:
            long_reason = pool.submit(long_request)
            started.wait(timeout=300)
            short = client.chat.completions.create(model=str(model), max_tokens=2,
                                                   messages=[{"role": "user", "content": "red"}])
            finished.append("short")
            assert long_reason.result() == "length", "the random model should run to max_tokens"
    assert short.choices[0].finish_reason == "length"
    assert finished == ["short", "long"]
