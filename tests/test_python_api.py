"""`verbovision.load(...)`: decoding options as keyword arguments, and nothing printed but the replies."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import verbovision
from verbovision.cli import make_parser
from verbovision.infer.options import DecodeOptions

from .helpers import subcommands


@pytest.fixture(scope="module")
def model(plain_model_dir):
    return verbovision.load(str(plain_model_dir), device="cpu")


@pytest.fixture(scope="module")
def images(shapes_data) -> list[str]:
    return [str(p) for p in sorted((shapes_data / "images").glob("*.png"))[:3]]


def test_keywords_are_decode_options_fields(model, images):
    as_options = model.caption(images, options=DecodeOptions(max_new_tokens=8, beams=3))
    assert model.caption(images, max_new_tokens=8, beams=3) == as_options
    assert model.caption(images, options=DecodeOptions(beams=3), max_new_tokens=8) == as_options  # keywords change it
    sampled = dict(top_p=0.9, temperature=1.5, seed=7, max_new_tokens=8)
    assert model.caption(images, **sampled) == model.caption(images, options=DecodeOptions(**sampled))
    question = "How many shapes are there?"
    assert model.ask(images[0], question, max_new_tokens=3) == model.ask(images[0], question, DecodeOptions(3))
    messages = [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": "Hi"}]}]
    assert model.chat(messages, max_new_tokens=4) == "".join(model.stream(messages, max_new_tokens=4))
    assert model.chat(messages, max_new_tokens=4) == model.chat(messages, DecodeOptions(max_new_tokens=4))
    # one stop string or several
    assert model.ask(images[0], question, stop="e") == model.ask(images[0], question, stop=["e"])
    with pytest.raises(TypeError, match="unknown decoding option 'max_tokens'; did you mean 'max_new_tokens'"):
        model.caption(images, max_tokens=8)


def test_every_decoding_flag_is_a_keyword_of_the_same_name():
    """The README tells Python users to spell the options as the flags, with underscores."""
    caption = dict(subcommands(make_parser()))[("caption",)]
    group = next(g for g in caption._action_groups if g.title.startswith("decoding"))
    loading = {"batch_size", "device", "dtype", "quantize", "compile", "template"}  # how the model loads and batches
    flags = {a.dest for a in group._group_actions} - loading
    assert flags == {f.name for f in DecodeOptions.__dataclass_fields__.values()}


def test_generations_print_no_future_warnings(lora_run, images):
    """A LLaVA-architecture model with a LoRA adapter (what llava-vqa-lora trains), loaded and decoded every way."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        adapter = verbovision.load(str(lora_run / "final"), device="cpu")
        assert type(adapter.model.get_base_model()).__name__ == "LlavaForConditionalGeneration"
        for options in ({}, {"beams": 2}, {"temperature": 1.0, "seed": 0}, {"repetition_penalty": 1.2}):
            adapter.caption(images, max_new_tokens=4, **options)


def test_load_takes_the_dtype_the_commands_take(plain_model_dir):
    import torch

    assert verbovision.load(str(plain_model_dir), device="cpu", dtype="bfloat16").model.dtype == torch.bfloat16
    assert verbovision.load(str(plain_model_dir), device="cpu").model.dtype == torch.float32  # auto, on a CPU


def test_load_takes_the_quantization_the_commands_take(plain_model_dir, images):
    quantized = verbovision.load(str(plain_model_dir), device="cpu", quantize="int8-dynamic")
    assert quantized.model.verbovision_quantized == "int8-dynamic" and quantized.caption(images, max_new_tokens=2)


def test_decode_options_are_reached_from_the_package_as_the_readme_spells_them():
    """`options=verbovision.infer.DecodeOptions(...)` after `import verbovision` alone, before any model loads (a
    fresh process: this one has imported verbovision.infer already), and without loading torch."""
    code = ("import sys, verbovision; print(verbovision.infer.DecodeOptions(max_new_tokens=4).max_new_tokens, "
            "'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "False"]


def test_images_as_a_python_caller_holds_them(model, images):
    """Bytes of an image file and uint8 numpy arrays caption as the file does; one image where a list goes, and what
    is no image, are errors saying what to give (before: a path's characters were taken for images, a numpy array
    or bytes a TypeError from pathlib)."""
    import numpy as np
    from PIL import Image

    from verbovision.errors import DataError

    path = Path(images[0])
    expected = model.caption([path], max_new_tokens=6)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert model.caption([path.read_bytes(), pixels, str(path)], max_new_tokens=6) == expected * 3
    assert model.ask(pixels, "How many shapes are there?", max_new_tokens=4) == model.ask(
        path, "How many shapes are there?", max_new_tokens=4)
    for one in (str(path), path, Image.open(path), pixels):
        with pytest.raises(TypeError, match=r"caption takes a list of images, not one \w+: caption\(\[image\]\)"):
            model.caption(one)
    with pytest.raises(TypeError, match=r"image ndarray of dtype float64 and shape \(2, 2, 3\): give a path"):
        model.caption([np.zeros((2, 2, 3))])
    with pytest.raises(TypeError, match="prompt None: give a string"):
        model.ask(path, None)
    with pytest.raises(DataError, match="http://example.com/a.png: remote images are not fetched"):
        model.caption(["http://example.com/a.png"])


@pytest.mark.parametrize("decoding, message", [
    ({"max_new_tokens": 0}, "max_new_tokens=0: give an integer >= 1"),
    ({"max_new_tokens": "8"}, "max_new_tokens='8': give an integer >= 1"),
    ({"beams": 0}, "beams=0: give an integer >= 1"),
    ({"temperature": 0}, r"temperature=0: give a number > 0 \(leave it out for greedy decoding\)"),
    ({"top_p": 2}, r"top_p=2: give a number in \(0, 1\]"),
    ({"stop": 5}, "stop=5: give a string or a list of strings"),
    ({"batch_size": 0}, "batch_size=0: give an integer >= 1"),
    ({"batch_size": -1}, "batch_size=-1: give an integer >= 1"),
    ({"options": DecodeOptions(max_new_tokens=-1)}, "max_new_tokens=-1: give an integer >= 1"),
    ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens=9 is more than max_new_tokens=4: the reply would "
                                                 "stop short of it"),
])
def test_decoding_values_out_of_range_are_refused(model, images, decoding, message):
    """As the commands refuse the flags: before, max_new_tokens=0 still generated a token, beams=0 divided by zero in
    transformers and a batch_size below 1 returned no captions."""
    with pytest.raises(ValueError, match=message):
        model.caption(images, **decoding)


def test_an_empty_prompt_is_an_error_not_a_reshape_failure(model):
    """A plain-template model given no image and no text, or chat given no messages, encodes to no token at all:
    before, a RuntimeError from deep in the model's attention ("cannot reshape tensor of 0 elements")."""
    from verbovision.errors import DataError

    for call in (lambda: model.ask(None, ""), lambda: model.chat([])):
        with pytest.raises(DataError, match="the prompt is empty; give text or an image"):
            call()
