"""`--compile` (`infer.compiled`): batches padded to row buckets and a bucketed static cache, so that `generate`
compiles once per bucket, with the replies of eager generation; `verbo serve --compile` compiles its buckets first.

The graph counts use dynamo's "eager" backend (dynamo traces and guards as with inductor, without generating
kernels); the server runs inductor, as users do."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from PIL import Image
from torch._dynamo.utils import counters

from verbovision.infer.compiled import CompiledGeneration
from verbovision.infer.messages import prompt_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM

from .helpers import data_uri, image_message, running
from .tiny_families import make_tiny_llava, make_tiny_vision_encoder_decoder

QUESTIONS = ("Describe the image briefly.", "What is in the picture? Answer in a few words, please.", "Colors?")


@pytest.fixture(scope="module")
def llava(tmp_path_factory, tiny_tokenizer_texts):
    """A random tiny LLaVA: its replies run long and differ from image to image."""
    return make_tiny_llava(tmp_path_factory.mktemp("llava"), tiny_tokenizer_texts)


@pytest.fixture(scope="module")
def eager(llava) -> VLM:
    return VLM(llava, device="cpu")


@pytest.fixture()
def compiled(llava) -> VLM:
    vlm = VLM(llava, device="cpu", compiled=True)
    vlm.compiled = CompiledGeneration(backend="eager", mode=None)
    return vlm


@pytest.fixture(scope="module")
def images(shapes_data) -> list:
    return sorted((shapes_data / "images").glob("*.png"))


def test_row_buckets_and_cache_lengths():
    shapes = CompiledGeneration()
    greedy, beams, seeded = DecodeOptions(), DecodeOptions(beams=2), DecodeOptions(temperature=1.0, seed=0)
    assert [shapes.rows(n, 8, greedy) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [shapes.rows(n, 6, greedy) for n in (3, 5, 6)] == [4, 6, 6]  # never past the batch size
    assert shapes.row_buckets(6) == [1, 2, 4, 6]
    assert shapes.rows(3, 8, beams) == 3
    with pytest.warns(UserWarning, match="seeded sampling under --compile"):
        assert shapes.rows(3, 8, seeded) == 3
    assert shapes.rows(3, 8, DecodeOptions(temperature=1.0)) == 4  # unseeded sampling promises no replies
    lengths = []
    for tokens in (40, 256, 257, 40):
        shapes.reserve(tokens)
        lengths.append(shapes.cache_length)
    assert lengths == [256, 256, 512, 512]  # multiples of CACHE_STEP; a shorter request reuses the longer cache


def test_batches_of_3_5_7_rows_compile_once_per_bucket_with_eager_replies(compiled, eager, images):
    options = DecodeOptions(max_new_tokens=12)
    graphs, caches = counters["stats"]["unique_graphs"], []
    for start, rows in ((0, 3), (3, 5), (8, 7)):  # prompts of different lengths in every batch
        records = [prompt_record(image, QUESTIONS[(start + i) % 3]) for i, image in enumerate(images[start:][:rows])]
        pieces: dict[int, str] = {}
        replies = compiled.generate_details(records, options, batch_size=8,
                                            on_text=lambda i, piece: pieces.__setitem__(i, pieces.get(i, "") + piece))
        assert replies == eager.generate_details(records, options, batch_size=8)
        assert pieces == {i: reply.text for i, reply in enumerate(replies) if reply.text}  # the padded rows stay silent
        caches.append(dict(compiled.compiled.caches))
    assert any(reply.completion_tokens > 3 for reply in replies), "the random model should run on"
    assert compiled.compiled.shapes == {(4, 256), (8, 256)}
    assert counters["stats"]["unique_graphs"] - graphs == 2  # 3 rows -> 4, 5 and 7 rows -> 8: two graphs
    assert caches[2][8] is caches[1][8] and caches[2][4] is caches[0][4]  # each bucket's cache kept, reused


def test_seeded_sampling_and_beams_give_the_eager_replies_and_say_once_why(compiled, eager, images):
    records = [prompt_record(image, QUESTIONS[0]) for image in images[:3]]
    sampling = DecodeOptions(max_new_tokens=10, temperature=1.5, top_p=0.9, seed=3)
    beams = DecodeOptions(max_new_tokens=6, beams=2)
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        for _ in range(2):
            for options in (sampling, beams):
                assert compiled.generate_records(records, options) == eager.generate_records(records, options)
    assert compiled.compiled.shapes == {(3, 256)}  # sampling unpadded, beams not compiled
    reasons = [str(w.message) for w in told if "--compile" in str(w.message)]
    assert sorted(reason.split()[0] for reason in reasons) == ["beam", "seeded"]


def test_an_encoder_decoder_model_compiles_with_generates_caches(tmp_path, tiny_tokenizer_texts, images):
    """Its cross-attention cache is sized to each batch's encoder output: `generate` makes both caches."""
    model = make_tiny_vision_encoder_decoder(tmp_path / "ved", tiny_tokenizer_texts)
    vlm = VLM(model, device="cpu", compiled=True, template="caption")
    vlm.compiled = CompiledGeneration(backend="eager", mode=None)
    options = DecodeOptions(max_new_tokens=6, min_new_tokens=6)  # a random model may end at once: decode all steps
    graphs = counters["stats"]["unique_graphs"]
    replies = vlm.caption(images[:3], options=options)
    assert replies == VLM(model, device="cpu", template="caption").caption(images[:3], options=options)
    assert vlm.compiled.shapes == {(4, 256)} and not vlm.compiled.caches
    assert counters["stats"]["unique_graphs"] - graphs == 1


def test_serve_compiles_its_buckets_before_serving_and_answers_as_eager(llava, eager, images):
    uris = [data_uri(Image.open(image)) for image in images[:3]]
    expected = [eager.chat(image_message(uri), max_new_tokens=8) for uri in uris]
    with running("serve", llava, "--compile", "--batch-size", "2", "--max-new-tokens", "8") as (proc, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=300)

        def ask(uri: str) -> str:
            reply = client.chat.completions.create(model=str(llava), messages=image_message(uri))
            return reply.choices[0].message.content

        with ThreadPoolExecutor(3) as pool:  # batches of 2 and 1 rows
            assert list(pool.map(ask, uris)) == expected
    log = proc.stdout.read()
    assert "compiled generation for 2 shapes (up to 2 rows, 256 cached tokens)" in log
    assert log.index("compiled generation") < log.index("verbo: serving")
    assert "dynamic batching" in log and "no continuous batching: --compile" in log
