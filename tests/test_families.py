"""Fine-tuning existing VLMs through `model: {from: ...}`, one tiny random model per family (tests/tiny_families.py):
per component freezing, asserting exactly which parameters a step changed, and the llava-vqa-lora recipe. LoRA +
merge of every family is the family matrix (tests/test_family_matrix.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from verbovision.config.parse import load_recipe
from verbovision.files import read_json
from verbovision.infer.messages import prompt_record
from verbovision.infer.vlm import VLM
from verbovision.model.store import load_model
from verbovision.train.run import train_recipe

from .helpers import (CAPTIONS, FLOAT32, LORA, assert_changed_exactly, changed_parameters, needs_model_type,
                      train_one_stage)
from .tiny_families import (
    make_tiny_git,
    make_tiny_idefics3,
    make_tiny_llava,
    make_tiny_qwen2_vl,
    make_tiny_vision_encoder_decoder,
)
from .tiny_families_llava_more import make_tiny_granite4_vision
from .tiny_families_qwen_like import make_tiny_deepseek_vl, make_tiny_deepseek_vl_hybrid, make_tiny_qwen3_vl
from .tiny_families_qwen_tower import (
    make_tiny_ernie4_5_vl_moe,
    make_tiny_hunyuan_vl,
    make_tiny_hyperclovax_vision_v2,
    make_tiny_paddleocr_vl,
)

RECIPES = Path(__file__).resolve().parents[1] / "src" / "verbovision" / "recipes"

FAMILIES = {
    # family: (builder, template, what trains, LoRA targets)
    "llava": (make_tiny_llava, "chat", {"vision": "frozen", "connector": "full", "language": "lora"}, "all-linear"),
    "idefics3": (make_tiny_idefics3, "chat", {"vision": "lora", "connector": "full", "language": "lora"},
                 "all-linear"),
    "qwen2_vl": (make_tiny_qwen2_vl, "chat", {"vision": "frozen", "connector": "full", "language": "lora"},
                 "all-linear"),
    "git": (make_tiny_git, "caption", {"vision": "frozen", "connector": "frozen", "language": "lora"},
            ["query", "key", "value", "dense"]),
    "vision-encoder-decoder": (make_tiny_vision_encoder_decoder, "caption", {"vision": "frozen", "language": "lora"},
                               "all-linear"),
    "qwen3_vl": (make_tiny_qwen3_vl, "chat", {"vision": "frozen", "connector": "full", "language": "lora"},
                 "all-linear"),
    "deepseek_vl": (make_tiny_deepseek_vl, "chat", {"vision": "frozen", "connector": "full", "language": "lora"},
                    "all-linear"),
    "deepseek_vl_hybrid": (make_tiny_deepseek_vl_hybrid, "chat",
                           {"vision": "frozen", "connector": "full", "language": "lora"}, "all-linear"),
    "granite4_vision": (make_tiny_granite4_vision, "chat", {"vision": "frozen", "connector": "full", "language": "lora"},
                        "all-linear"),
    "hyperclovax_vision_v2": (make_tiny_hyperclovax_vision_v2, "chat",
                              {"vision": "frozen", "connector": "full", "language": "lora"}, "all-linear"),
    "hunyuan_vl": (make_tiny_hunyuan_vl, "chat", {"vision": "frozen", "connector": "full", "language": "lora"},
                   "all-linear"),
}


def _stage(family: str, **overrides) -> dict:
    _, template, train, target = FAMILIES[family]
    stage = {"name": "lora", "template": template, "data": CAPTIONS, "train": train, "lora": {**LORA, "target": target},
             "max_steps": 3, "batch_size": 2, "lr": 1e-2, "merge": True}
    return {**stage, **overrides}


VED_OPTIONS = {
    # option: (train, modules that must change, and nothing else)
    "encoder only": ({"vision": "full", "language": "frozen"}, ["encoder.embeddings", "encoder.layers.0",
                                                                "encoder.layers.1", "encoder.layernorm"]),
    "decoder only": ({"vision": "frozen", "language": "full"}, ["decoder.transformer.h.0", "decoder.transformer.h.1",
                                                                "decoder.transformer.wte"]),
    "last decoder layer": ({"vision": "frozen", "language": "last:1"}, ["decoder.transformer.h.1",
                                                                         "decoder.transformer.ln_f"]),
    "cross-attention only": ({"vision": "frozen", "language": "cross_attention"},
                             [f"decoder.transformer.h.{i}.{m}" for i in (0, 1) for m in ("crossattention",
                                                                                           "ln_cross_attn")]),
    "whole": ({"vision": "full", "language": "full"}, ["encoder.layers.0", "decoder.transformer.h.0",
                                                       "decoder.transformer.ln_f"]),
}


@pytest.mark.parametrize("option", VED_OPTIONS)
def test_vision_encoder_decoder_freezing_options(option, tmp_path, shapes_data, tiny_tokenizer_texts):
    train, must_change = VED_OPTIONS[option]
    base = make_tiny_vision_encoder_decoder(tmp_path / "base", tiny_tokenizer_texts)
    run = train_one_stage(tmp_path, shapes_data, base, {"name": "xent", "template": "caption", "data": CAPTIONS, "train": train,
                                             "max_steps": 1, "batch_size": 2, "lr": 1e-2})
    allowed = {"encoder only": ["encoder"], "decoder only": ["decoder"], "whole": ["encoder", "decoder"]}
    assert_changed_exactly(changed_parameters(base, run), must_change, allowed.get(option, must_change))


COMPONENT_OPTIONS = {
    # family: (train, must change, allowed to change)
    "idefics3": ({"vision": "frozen", "connector": "full", "language": "last:1"},
                 ["model.connector", "model.text_model.layers.1", "model.text_model.norm"],
                 ["model.connector", "model.text_model.layers.1", "model.text_model.norm"]),
    "qwen2_vl": ({"vision": "last:1", "connector": "frozen", "language": "frozen"},
                 ["model.visual.blocks.1"], ["model.visual.blocks.1"]),
    "git": ({"vision": "frozen", "connector": "full", "language": "last:1"},
            ["git.visual_projection", "git.encoder.layer.1"], ["git.visual_projection", "git.encoder.layer.1"]),
    # the DeepStack mergers are projectors too
    "qwen3_vl": ({"vision": "frozen", "connector": "full", "language": "frozen"},
                 ["model.visual.merger", "model.visual.deepstack_merger_list"],
                 ["model.visual.merger", "model.visual.deepstack_merger_list"]),
    # DeepSeek-VL's projector is its aligner (a LoRA stage trains it whole too: the family matrix)
    "deepseek_vl": ({"vision": "frozen", "connector": "full", "language": "frozen"}, ["model.aligner"],
                    ["model.aligner"]),
    # the high-resolution SAM branch is vision too (SigLIP's pooling head is unused: it stays as it was)
    "deepseek_vl_hybrid": ({"vision": "full", "connector": "frozen", "language": "frozen"},
                           ["model.vision_model.encoder", "model.high_res_vision_model", "model.high_res_vision_neck",
                            "model.high_res_vision_proj"],
                           ["model.vision_model", "model.high_res_vision_model", "model.high_res_vision_neck",
                            "model.high_res_vision_proj"]),
    # Granite 4 Vision's window Q-Former projectors, per injected vision depth and per spatial group, are its connector
    "granite4_vision": ({"vision": "frozen", "connector": "full", "language": "frozen"},
                        ["model.layerwise_projectors", "model.spatial_projectors", "model.image_newline"],
                        ["model.layerwise_projectors", "model.spatial_projectors", "model.image_newline"]),
    # Qwen2.5-VL's merger inside the vision tower, then the family's own linear projector
    "hyperclovax_vision_v2": ({"vision": "frozen", "connector": "full", "language": "frozen"},
                              ["model.vision_model.merger", "model.projector"],
                              ["model.vision_model.merger", "model.projector"]),
    # the patch merger inside the vision tower is its projector (with its learned row-end / begin / end embeddings)
    "hunyuan_vl": ({"vision": "frozen", "connector": "full", "language": "frozen"},
                   ["model.vision_tower.patch_merger"], ["model.vision_tower.patch_merger"]),
}


@pytest.mark.parametrize("family", COMPONENT_OPTIONS)
def test_per_component_freezing(family, tmp_path, shapes_data, tiny_tokenizer_texts):
    needs_model_type(family)
    train, must_change, allowed = COMPONENT_OPTIONS[family]
    base = FAMILIES[family][0](tmp_path / "base", tiny_tokenizer_texts)
    stage = _stage(family, train=train, max_steps=1, merge=False)
    stage.pop("lora")
    assert_changed_exactly(changed_parameters(base, train_one_stage(tmp_path, shapes_data, base, stage)), must_change, allowed)


def test_llava_vqa_lora_recipe_on_tiny_llava(tmp_path, shapes_data, tiny_tokenizer_texts):
    tiny_llava = make_tiny_llava(tmp_path / "base", tiny_tokenizer_texts)
    overrides = [f"model.from={tiny_llava}", f"data_root={shapes_data}", "stages.0.data.train=[train/vqa_en.json]",
                 "stages.0.data.val=[val/vqa_en.json]", "stages.0.max_steps=3", "stages.0.batch_size=2",
                 "stages.0.grad_accum=2", "stages.0.lora.r=4", "stages.0.lora.alpha=8", f"model.dtype={FLOAT32}"]
    run = tmp_path / "run"
    train_recipe(load_recipe(RECIPES / "llava-vqa-lora.yaml", overrides), run)
    merged = read_json(run / "final/verbovision.json")["merge"]
    assert merged["max_abs_diff"] < 1e-4 and merged["max_abs_diff_reloaded"] < 1e-4
    vlm = VLM(run / "final", device="cpu")
    text, _ = vlm.encoder.render(prompt_record(None, "<image>\nHow many shapes are there?").prompt_turns, True)
    assert text.startswith("USER: <image>\n") and text.endswith("ASSISTANT:")  # llava-hf's own template
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    assert isinstance(vlm.ask(image, "How many shapes are there?"), str)


@pytest.mark.parametrize("build", [make_tiny_llava, make_tiny_qwen2_vl], ids=["llava", "qwen2_vl"])
def test_every_trained_reply_ends_in_a_special_token(build, tmp_path, shapes_data, tiny_tokenizer_texts):
    """llava-hf's template writes no EOS after a reply: training adds it (or the model never learns to stop);
    Qwen2-VL's writes <|im_end|>, which ends the reply already."""
    from verbovision.data.encoding import Encoder
    from verbovision.data.records import Record, Turn
    from verbovision.families import family_of

    model, processor = load_model(build(tmp_path / "base", tiny_tokenizer_texts), device="cpu")
    encoder = Encoder(processor, family=family_of(model.config))
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    turns = [Turn("user", "<image>\nWhat is it?"), Turn("assistant", "a red square"),
             Turn("user", "And?"), Turn("assistant", "a blue circle")]
    encoded = encoder.encode(Record("r", [image], turns, "mem"))
    tokenizer = processor.tokenizer
    replies = tokenizer.decode([t for t in encoded.labels if t != -100])
    ends = {"llava": tokenizer.eos_token, "qwen2_vl": "<|im_end|>"}[model.config.model_type]
    assert replies.count(ends) == 2 and replies.rstrip().endswith(ends)
    prompt = encoder.encode(Record("r", [image], turns, "mem"), for_generation=True)  # up to the last reply
    if model.config.model_type == "llava":  # prompts as the template writes them: no EOS after the earlier reply
        assert tokenizer.eos_token not in tokenizer.decode(prompt.input_ids)


TOKEN_TYPED = {"qwen2_vl": make_tiny_qwen2_vl, "paddleocr_vl": make_tiny_paddleocr_vl,
               "hunyuan_vl": make_tiny_hunyuan_vl, "ernie4_5_vl_moe": make_tiny_ernie4_5_vl_moe}


@pytest.mark.parametrize("family", TOKEN_TYPED)
def test_batches_carry_the_processors_token_types(family, tmp_path, shapes_data, tiny_tokenizer_texts):
    """A batch holds the token types the family's processor gives for the same text: Qwen2-VL's, PaddleOCR-VL's
    (returned, not listed) and HunYuan-VL's `mm_token_type_ids` (the image tokens), ERNIE-4.5-VL's
    `moe_mm_token_type_ids` too (with its image start and end tokens, for its image experts)."""
    from verbovision.data.batching import Collator
    from verbovision.data.encoding import Encoder
    from verbovision.data.images import open_image
    from verbovision.data.sources import read_records
    from verbovision.families import family_of

    needs_model_type(family)
    model, processor = load_model(TOKEN_TYPED[family](tmp_path / family, tiny_tokenizer_texts), device="cpu")
    encoder = Encoder(processor, "chat", family=family_of(model.config))
    record = read_records(shapes_data / "train/caption_short_en.json")[0]
    batch = Collator(encoder)([encoder.encode(record, for_generation=True)]).batch
    text, _ = encoder.render(record.prompt_turns, add_generation_prompt=True)
    own = processor(text=[text], images=[open_image(record.images[0])], return_tensors="pt")
    names = {"mm_token_type_ids", "moe_mm_token_type_ids"} & set(own)
    assert names == ({"mm_token_type_ids", "moe_mm_token_type_ids"} if family.startswith("ernie")
                     else {"mm_token_type_ids"})
    assert batch["input_ids"].tolist() == own["input_ids"].tolist()
    for name in names:
        assert batch[name].tolist() == own[name].tolist(), name
