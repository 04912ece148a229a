"""Greedy decoding in which rows leave the batch at their end: `generate`'s replies, fewer rows computed."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from verbovision.infer.messages import prompt_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM

QUESTIONS = ("Describe the image briefly.", "What is in the picture? Answer in a few words, please.", "Colors?")


@pytest.fixture(scope="module")
def vlm(model_dir) -> VLM:
    return VLM(model_dir, device="cpu")


@pytest.fixture(scope="module")
def records(shapes_data) -> list:
    """Prompts of different lengths (left padding differs per row) about different images."""
    images = sorted((shapes_data / "images").glob("*.png"))[:6]
    return [prompt_record(image, QUESTIONS[i % 3]) for i, image in enumerate(images)]


@contextmanager
def decode_rows(vlm: VLM):
    """Yields a list of how many rows each forward of the language model that decodes one token per row ran."""
    rows: list[int] = []

    def count(module, args, kwargs):
        embeds = kwargs["inputs_embeds"]  # [b, T, D]
        if embeds.shape[1] == 1:
            rows.append(embeds.shape[0])

    hook = vlm.model.model.language_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield rows
    finally:
        hook.remove()


def with_generate(vlm: VLM, monkeypatch, *args):
    """The same call through transformers' `generate` (the path every non-greedy option takes)."""
    with monkeypatch.context() as patch:
        patch.setattr(vlm, "_leaves_at_eos", lambda *_: False)
        return vlm.generate_details(*args)


def test_rows_leave_at_their_end_with_generates_replies(vlm, records, monkeypatch):
    limits = [DecodeOptions(max_new_tokens=n) for n in (2, 9, 4, 12, 1, 7)]
    with decode_rows(vlm) as rows:
        ours = vlm.generate_details(records, limits, batch_size=6)
    assert ours == with_generate(vlm, monkeypatch, records, limits, 6)
    # each row ran one decoding step per token after the first (which the prompt's forward gives), then left
    assert sum(rows) == sum(g.completion_tokens - 1 for g in ours)
    assert rows == sorted(rows, reverse=True) and rows[0] < len(records) and len(set(rows)) > 2


def test_replies_ending_at_eos_and_stop_strings_match_generate(vlm, records, monkeypatch):
    options = DecodeOptions(max_new_tokens=24)
    ours = vlm.generate_details(records, options, batch_size=4)
    assert ours == with_generate(vlm, monkeypatch, records, options, 4)
    # A word a reply ends with: stopped there, a row leaves early. (Which replies are empty, the tiny model's EOS
    # first, depends on the machine's arithmetic: the model is trained for a few steps only.)
    stop = next(g.text for g in ours if g.text.strip()).split()[-1]
    stopped = DecodeOptions(max_new_tokens=24, stop=(stop,))
    assert vlm.generate_details(records, stopped, 4) == with_generate(vlm, monkeypatch, records, stopped, 4)


def test_other_decoding_options_go_through_generate(vlm, records):
    for options in (DecodeOptions(max_new_tokens=4, repetition_penalty=1.3), DecodeOptions(max_new_tokens=4, beams=2),
                    DecodeOptions(max_new_tokens=4, temperature=0.7, seed=1)):
        assert not vlm._leaves_at_eos(options, {"input_ids": None})
        with decode_rows(vlm) as rows:
            vlm.generate_details(records[:2], options)
    assert vlm._leaves_at_eos(DecodeOptions(), {"input_ids": None, "attention_mask": None, "pixel_values": None})
    assert not vlm._leaves_at_eos(DecodeOptions(), {"input_ids": None, "image_grid_thw": None})  # Qwen2-VL positions
    assert rows and set(rows) <= {2, 4}  # generate keeps every row (beams: 2 per record) until all are done


def test_the_own_loop_runs_only_where_the_forward_names_every_input_it_passes(vlm):
    """A transformers release whose forward does not name the KV-cache input (or positions) would take it in
    **kwargs, possibly unread: such a model decodes with `generate` instead."""
    from verbovision.infer.greedy import greedy_loop_fits

    class CacheUnnamed:
        generation_config = vlm.model.generation_config

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
            raise AssertionError("never called")

    assert greedy_loop_fits(vlm.model, vlm.family)
    assert not greedy_loop_fits(CacheUnnamed(), vlm.family)


@pytest.fixture(scope="module")
def gpt2_vlm(tmp_path_factory, tiny_vision, tiny_lm) -> VLM:
    """A VLM on GPT-2, whose learned positions end at n_positions (512 here)."""
    from verbovision.cli import main

    out = tmp_path_factory.mktemp("gpt2-vlm") / "model"
    assert main(["build", "--vision", tiny_vision["clip"], "--language", tiny_lm["gpt2"], "--out", str(out)]) == 0
    return VLM(out, device="cpu")


def test_a_prompt_and_reply_past_the_models_positions_are_refused(gpt2_vlm):
    """Before, GPT-2's position embedding raised an IndexError mid-generation (a traceback from verbo ask, chat and
    predict, a 500 from the server): the prompt and its longest reply must fit the model's positions."""
    from verbovision.data.records import TOO_LONG, RecordError
    from verbovision.serve.config import ServeConfig
    from verbovision.serve.errors import ApiError
    from verbovision.serve.request import parse_chat_request, prepare_record

    short = prompt_record(None, "red")
    room = 512 - gpt2_vlm.prompt_tokens(short)
    for options in (DecodeOptions(room, min_new_tokens=room), DecodeOptions(room, beams=2, min_new_tokens=room)):
        assert gpt2_vlm.generate_details([short], options)[0].completion_tokens == room  # the last position
    with pytest.raises(RecordError, match=f"with max_new_tokens={room + 1} more than the model's 512 positions; "
                                          "shorten the prompt or lower max_new_tokens") as caught:
        gpt2_vlm.generate_details([short], DecodeOptions(room + 1))
    assert caught.value.kind == TOO_LONG
    with pytest.raises(RecordError, match=r"the prompt is \d+ tokens \(images included\)"):
        gpt2_vlm.ask(None, "red " * 300, max_new_tokens=1)
    config = ServeConfig(gpt2_vlm.path, max_prompt_tokens=100_000)
    request = parse_chat_request({"model": "verbo", "messages": [{"role": "user", "content": "red " * 300}]}, config)
    with pytest.raises(ApiError, match="more than the model's 512 positions") as refused:
        prepare_record(gpt2_vlm, request, config)
    assert (refused.value.status, refused.value.code) == (400, "context_length_exceeded")


def test_rotary_positions_have_no_end_to_refuse():
    """Rotary positions run past the length a model was trained to (as `generate` lets them): the quickstart's LM
    has 256, and its default 256-token replies are not refused; learned ones (GPT-2, GIT) end."""
    from transformers import GitConfig, GPT2Config, LlamaConfig, Qwen2Config

    from verbovision.families import position_limit

    assert position_limit(Qwen2Config(max_position_embeddings=256)) is None
    assert position_limit(LlamaConfig()) is None
    assert position_limit(GPT2Config(n_positions=512)) == 512
    assert position_limit(GitConfig(max_position_embeddings=1024)) == 1024
