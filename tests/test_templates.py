"""Saved chat templates render the layout a model was trained on: plain transformers' `apply_chat_template` gives the
token ids VerboVision encodes, and `generate` then gives VerboVision's replies, for the chat, plain and caption
templates; requests to a plain-template model give one prompt whatever the order of their parts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from verbovision.config.model import LanguageSpec, ModelSpec, VisionSpec
from verbovision.data.encoding import CHAT_TEMPLATE_NAME, Encoder
from verbovision.data.records import Record, Turn
from verbovision.data.tokenizer import train_bpe_tokenizer
from verbovision.families import family_of
from verbovision.infer.messages import messages_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.model.build import build_vlm, save_model
from verbovision.model.store import model_metadata

from .helpers import BLOCK_VERBOVISION

PROMPT = "Describe the image briefly."
IMAGE = {"type": "image"}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def user(*parts) -> dict:
    return {"role": "user", "content": list(parts)}


CONVERSATIONS = [
    [user(IMAGE, text(PROMPT))],
    [user(text(PROMPT), IMAGE)],
    [user(IMAGE)],
    [user(IMAGE, text("  "))],
    [user(IMAGE, text("\nHow many shapes are there?"))],
    [user(text("Describe\n"), IMAGE, text(""))],
    [user(IMAGE, IMAGE, text("Compare\nthem."))],
    [user(text("look "), IMAGE, text(" now"))],
    [user(text("a"), text("b"), IMAGE)],
    [{"role": "system", "content": "Be brief."}, user(IMAGE, text("What colour?")),
     {"role": "assistant", "content": "red"}, {"role": "user", "content": "And the shape?"}],
]
"""Requests in the forms transformers and the OpenAI API take: parts in either order, image-only, blank or
newline-led text, two images, text around an image, multi-turn with a system message and string contents."""


def with_images(conversation: list[dict], image: Image.Image) -> list[dict]:
    """The conversation with `image` in every image part (transformers reads it from there)."""
    return [{**m, "content": m["content"] if isinstance(m["content"], str) else
             [{**part, "image": image} if part == IMAGE else part for part in m["content"]]} for m in conversation]


def bos_tokenizer(texts):
    """A tokenizer that starts every text with its BOS, as Llama's and Gemma's do."""
    tokenizer = train_bpe_tokenizer(texts, "<image>", vocab_size=300)
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    tokenizer.add_bos_token = True
    tokenizer.update_post_processor()
    return tokenizer


@pytest.fixture(scope="module", params=["no BOS", "BOS"])
def tiny_built(request, tmp_path_factory, tiny_tokenizer_texts):
    """A tiny VLM built from scratch (untrained: only its texts matter here), with a tokenizer that adds no BOS (as
    Qwen's and GPT-2's) or one that does."""
    texts = [*tiny_tokenizer_texts, "What colour? Compare them. look now And the shape? Be brief. red"]
    make = bos_tokenizer if request.param == "BOS" else lambda t: train_bpe_tokenizer(t, "<image>", vocab_size=300)
    spec = ModelSpec(vision=VisionSpec(arch="siglip", hidden_size=32, layers=1, heads=2, image_size=32),
                     language=LanguageSpec(arch="qwen2", hidden_size=32, layers=1, heads=2))
    model, processor = build_vlm(spec, make(texts))
    return model, processor, tmp_path_factory.mktemp("built")


@pytest.mark.parametrize("template", ["chat", "plain", "caption"])
def test_saved_template_encodes_what_the_encoder_encodes(tiny_built, template):
    model, processor, root = tiny_built
    out = save_model(model, processor, root / template, {"template": template, "prompt": PROMPT})
    saved = AutoProcessor.from_pretrained(out)
    encoder = Encoder(processor, template, family=family_of(model.config), prompt=PROMPT)
    image = Image.new("RGB", (40, 30), "red")
    for conversation in CONVERSATIONS:
        record = messages_record(with_images(conversation, image))
        expected = encoder.encode(record, for_generation=True).input_ids
        rendered = saved.apply_chat_template(with_images(conversation, image), add_generation_prompt=True,
                                             tokenize=True, return_dict=True)
        assert rendered["input_ids"][0] == expected, (template, conversation)
        # the training layout too: the conversation with its reply
        reply = {"role": "assistant", "content": "a small red circle"}
        record.turns[-1].text = reply["content"]
        full = saved.apply_chat_template(with_images([*conversation, reply], image), tokenize=True, return_dict=True)
        assert full["input_ids"][0] == encoder.encode(record).input_ids, (template, conversation)
    # a tokenizer that starts texts with its BOS starts every prompt with it, once, as the LM was pretrained
    bos = processor.tokenizer.bos_token_id
    starts = [encoder.encode(messages_record(with_images(c, image)), for_generation=True).input_ids[:2]
              for c in CONVERSATIONS]
    assert all((start[0] == bos) == (bos is not None) and start[1] != bos for start in starts)


@pytest.mark.parametrize("template", ["plain", "caption"])
def test_a_layout_model_keeps_its_own_chat_template_for_later_chat_stages(tiny_built, template):
    model, processor, root = tiny_built
    out = save_model(model, processor, root / f"{template}-keeps", {"template": template})
    saved = AutoProcessor.from_pretrained(out)
    assert saved.chat_template[CHAT_TEMPLATE_NAME] == processor.chat_template
    assert (out / "additional_chat_templates/chat.jinja").exists()
    record = messages_record([user({"type": "image", "image": Image.new("RGB", (8, 8))}, text(PROMPT))])
    family = family_of(model.config)
    assert Encoder(saved, "chat", family=family).render(record.prompt_turns, True) == \
        Encoder(processor, "chat", family=family).render(record.prompt_turns, True)
    # a chat stage after it saves the model's own template as the default again
    again = save_model(model, saved, root / f"{template}-then-chat", {"template": "chat"})
    assert AutoProcessor.from_pretrained(again).chat_template == processor.chat_template
    # a processor without a template of its own leaves its tokenizer's
    bare = copy.copy(processor)
    bare.chat_template = None
    kept = save_model(model, bare, root / f"{template}-tokenizer-only", {"template": "chat"})
    assert AutoTokenizer.from_pretrained(kept).chat_template == processor.tokenizer.chat_template


def test_plain_prompts_put_images_first_and_give_image_only_turns_the_trained_prompt(tiny_built):
    model, processor, _ = tiny_built
    family = family_of(model.config)
    turns = lambda content: [Turn("user", content), Turn("assistant", "")]  # noqa: E731
    plain = Encoder(processor, "plain", family=family, prompt=PROMPT)
    chat = Encoder(processor, "chat", family=family, prompt=PROMPT)
    image = processor.image_token
    for content in (f"<image>\n{PROMPT}", f"{PROMPT}\n<image>", "<image>", f"  <image> {PROMPT}  "):
        assert plain.render(turns(content)[:1], True) == (f"{image}\n{PROMPT}\n", [])
    assert Encoder(processor, "plain", family=family).render(turns("<image>")[:1], True) == (f"{image}\n", [])
    # a chat-template model keeps the request's order, and its image-only turns stay image-only
    assert chat.render(turns(f"{PROMPT}\n<image>")[:1], True)[0].index(PROMPT) < \
        chat.render(turns(f"{PROMPT}\n<image>")[:1], True)[0].index(image)
    assert PROMPT not in chat.render(turns("<image>")[:1], True)[0]
    # training counts the prompts that come with images; the most common is the trained prompt
    record = lambda i, content: Record(str(i), [Image.new("RGB", (8, 8))], turns(content)[:1] + [  # noqa: E731
        Turn("assistant", "red")], "test")
    counting = Encoder(processor, "plain", family=family)
    for i, content in enumerate([f"<image>\n{PROMPT}", f"{PROMPT}\n<image>", "<image>\nWhat colour?"]):
        counting.encode(record(i, content))
    assert counting.trained_prompt == PROMPT


# Plain transformers in a fresh interpreter where importing verbovision is impossible: each request of the JSON file
# (an image and its content parts, "IMAGE" standing for the image) rendered with the saved chat template, then
# greedy `generate`.
GENERATE_WITHOUT_VERBOVISION = BLOCK_VERBOVISION + textwrap.dedent(
    """
    import json
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model_dir, requests_file, max_new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    results = []
    for image, content in json.load(open(requests_file)):
        parts = [{"type": "image", "image": image} if p == "IMAGE" else {"type": "text", "text": p} for p in content]
        inputs = processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        results.append({"prompt": inputs["input_ids"][0].tolist(), "new": new,
                        "text": processor.decode(new, skip_special_tokens=True).strip()})
    print(json.dumps(results))
    """
)

REQUESTS = {
    "chat": [["IMAGE", PROMPT]],
    "plain": [["IMAGE", PROMPT], [PROMPT, "IMAGE"], ["IMAGE"]],
    "caption": [["IMAGE", PROMPT], ["IMAGE"]],
}
"""The requests asked of each image: for plain and caption, every form gives the layout the model was trained on."""
MAX_NEW_TOKENS = 24


@pytest.mark.parametrize("template", ["chat", "plain", "caption"])
def test_plain_transformers_reproduces_verbo_replies(template, trained_model, shapes_data, tmp_path):
    model_dir = trained_model(template)
    images = sorted((shapes_data / "images").glob("*.png"))[:4]
    requests = [(str(image), content) for image in images for content in REQUESTS[template]]
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    result = subprocess.run([sys.executable, "-c", GENERATE_WITHOUT_VERBOVISION, str(model_dir),
                             str(tmp_path / "requests.json"), str(MAX_NEW_TOKENS)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])

    vlm = VLM(model_dir, device="cpu")
    assert vlm.caption_prompt == PROMPT  # what the model was trained on (chat, plain: from its metadata)
    assert model_metadata(model_dir).get("prompt") == (None if template == "caption" else PROMPT)
    options = DecodeOptions(max_new_tokens=MAX_NEW_TOKENS)
    records = [messages_record([user(*[{"type": "image", "image": image} if p == "IMAGE" else text(p)
                                       for p in content])]) for image, content in requests]
    ours = vlm.generate_details(records, options)
    for request, record, mine, hf in zip(requests, records, ours, theirs):
        assert hf["prompt"] == vlm.encoder.encode(record, for_generation=True).input_ids, request
        assert (hf["text"], len(hf["new"])) == (mine.text, mine.completion_tokens), request
    captions = vlm.caption(images, options=options)  # `verbo caption`: the model's trained prompt
    per_image = len(REQUESTS[template])
    for i, caption in enumerate(captions):
        assert {hf["text"] for hf in theirs[i * per_image:(i + 1) * per_image]} == {caption}
    assert any(captions), "the tiny model should write text"
