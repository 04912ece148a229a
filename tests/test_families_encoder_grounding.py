"""VerboVision on the families of tests/tiny_families_encoder_grounding.py: BLIP-2 trains, merges and prompts as its
own processor does (packing refused: its samples would attend to each other); Florence-2, InstructBLIP and Kosmos-2
are refused as they load, with the reason."""

from __future__ import annotations

import pytest
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from verbovision.data.batching import Collator, pack_examples
from verbovision.data.encoding import Encoder
from verbovision.data.sources import read_records
from verbovision.errors import ConfigError
from verbovision.families import family_of
from verbovision.files import read_json
from verbovision.infer.messages import prompt_record
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.model.store import load_model

from .helpers import CAPTIONS, LORA, assert_changed_exactly, changed_parameters, token_losses, train_one_stage
from .tiny_families_encoder_grounding import BUILDERS

BLIP2_CONNECTOR = ["qformer", "query_tokens", "language_projection"]


def test_blip2_lora_merge_prompts_and_replies_as_plain_transformers(tmp_path, shapes_data, tiny_tokenizer_texts):
    base = BUILDERS["blip-2"](tmp_path / "base", tiny_tokenizer_texts)
    stage = {"name": "lora", "template": "plain", "data": CAPTIONS, "max_steps": 3, "batch_size": 2, "lr": 1e-2,
             "train": {"vision": "frozen", "connector": "full", "language": "lora"},
             "lora": {**LORA, "target": "all-linear"}, "merge": True}
    with pytest.warns(UserWarning, match="query_tokens stay frozen"):  # a bare parameter: no adapter carries it
        run = train_one_stage(tmp_path, shapes_data, base, stage)
    merge = read_json(run / "final/verbovision.json")["merge"]
    assert merge["max_abs_diff"] < 1e-4 and merge["max_abs_diff_reloaded"] < 1e-4

    vlm = VLM(run / "final", device="cpu")
    image_path = sorted((shapes_data / "images").glob("*.png"))[0]
    ours = vlm.encoder.encode(prompt_record(image_path, vlm.caption_prompt), for_generation=True).input_ids
    # The processor writes the query tokens, then OPT's BOS, then the text: so does VerboVision's plain layout.
    model = AutoModelForImageTextToText.from_pretrained(run / "final").eval()
    processor = AutoProcessor.from_pretrained(run / "final")
    inputs = processor(text=vlm.caption_prompt + "\n", images=Image.open(image_path).convert("RGB"),
                       return_tensors="pt")
    assert ours == inputs["input_ids"][0].tolist()
    assert ours[:model.config.num_query_tokens] == [model.config.image_token_id] * model.config.num_query_tokens
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, len(ours):]
    expected = processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
    assert vlm.caption([image_path], options=DecodeOptions(max_new_tokens=5)) == [expected]


def test_blip2_connector_is_its_qformer_queries_and_projection(tmp_path, shapes_data, tiny_tokenizer_texts):
    base = BUILDERS["blip-2"](tmp_path / "base", tiny_tokenizer_texts)
    stage = {"name": "full", "template": "plain", "data": CAPTIONS, "max_steps": 1, "batch_size": 2, "lr": 1e-2,
             "train": {"vision": "frozen", "connector": "full", "language": "frozen"}}
    changed = changed_parameters(base, train_one_stage(tmp_path, shapes_data, base, stage))
    assert_changed_exactly(changed, BLIP2_CONNECTOR, BLIP2_CONNECTOR)


REFUSED = {
    "florence2": "whose encoder reads the prompt with the image.s tokens",
    "instructblip": "requires qformer_input_ids",
    "kosmos-2": "Kosmos2Processor has no image token",
}


@pytest.mark.parametrize("family", REFUSED)
def test_unsupported_family_is_refused_as_it_loads(family, tmp_path, shapes_data, tiny_tokenizer_texts):
    base = BUILDERS[family](tmp_path / "base", tiny_tokenizer_texts)
    with pytest.raises(ConfigError, match=f"{family} models are not supported: .*{REFUSED[family]}"):
        VLM(base, device="cpu")
    stage = {"name": "lora", "template": "plain", "data": CAPTIONS, "max_steps": 1, "batch_size": 2,
             "train": {"vision": "frozen", "connector": "full", "language": "lora"},
             "lora": {**LORA, "target": "all-linear"}}
    with pytest.raises(ConfigError, match=f"{family} models are not supported"):
        train_one_stage(tmp_path, shapes_data, base, stage)


def test_blip2_packing_is_refused_since_its_samples_would_see_each_other(tmp_path, shapes_data, tiny_tokenizer_texts):
    base = BUILDERS["blip-2"](tmp_path / "base", tiny_tokenizer_texts)
    model, processor = load_model(base, device="cpu")
    encoder = Encoder(processor, "plain", family=family_of(model.config))
    examples = [encoder.encode(r) for r in read_records(shapes_data / "train/caption_short_en.json")[:2]]
    collator = Collator(encoder)
    alone = float(token_losses(model, collator(examples[1:]).batch).sum())
    together = token_losses(model, collator(pack_examples(examples, budget=10_000)).batch)[0]
    assert float(together[len(examples[0].input_ids):].sum()) != pytest.approx(alone, abs=1e-4)  # attention crossed
    stage = {"name": "s", "template": "plain", "data": CAPTIONS, "max_steps": 1, "batch_size": 2, "packing": 400,
             "train": {"vision": "frozen", "connector": "full", "language": "full"}}
    with pytest.raises(ConfigError, match="packing: not supported for blip-2"):
        train_one_stage(tmp_path, shapes_data, base, stage)
