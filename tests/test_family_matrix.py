"""The family matrix: every model type of the README's support table, as a tiny random checkpoint of the real
architecture (tests/tiny_families*.py), goes through what a user does with it — `verbo caption`, `verbo eval` on four
records, a three-step LoRA stage with the merge verified, the merged checkpoint reloaded where VerboVision cannot be
imported and giving the logits of base + adapter — and the README's table says exactly what the matrix runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version
from peft import PeftModel
from PIL import Image
from transformers import AutoConfig
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from verbovision.cli import main
from verbovision.config.parse import parse_recipe
from verbovision.families import (
    ENCODER,
    FAMILY_MATRIX,
    IMAGES_IN_TEXT,
    PREFIX,
    SUPPORT,
    TRIED_ELSEWHERE,
    UNTRIED,
    Support,
    family_of,
    note_untried,
)
from verbovision.files import read_json
from verbovision.infer import vlm as vlm_module
from verbovision.infer.options import DecodeOptions
from verbovision.infer.vlm import VLM
from verbovision.merge import logits_of, probe_batch
from verbovision.model.store import load_model
from verbovision.train.run import train_recipe

from .helpers import BLOCK_VERBOVISION, FLOAT32, needs_model_type
from .tiny_families import (
    make_tiny_git,
    make_tiny_idefics3,
    make_tiny_llava,
    make_tiny_qwen2_vl,
    make_tiny_vision_encoder_decoder,
)
from .tiny_families_encoder_grounding import make_tiny_blip_2
from .tiny_families_gemma_smol import make_tiny_gemma3, make_tiny_paligemma, make_tiny_smolvlm
from .tiny_families_llava_like import (
    make_tiny_aya_vision,
    make_tiny_internvl,
    make_tiny_llava_next,
    make_tiny_llava_onevision,
)
from .tiny_families_llava_more import (
    make_tiny_granite4_vision,
    make_tiny_granite_docling,
    make_tiny_idefics2,
    make_tiny_llava_next_video,
    make_tiny_video_llava,
    make_tiny_vipllava,
)
from .tiny_families_misc import (
    make_tiny_glm5_next,
    make_tiny_glmga,
    make_tiny_hy_v4_vl,
    make_tiny_minicpmv4_6,
    make_tiny_minicpmv4_7,
)
from .tiny_families_mistral import make_tiny_mistral3
from .tiny_families_ocr_more import (
    make_tiny_aria,
    make_tiny_got_ocr2,
    make_tiny_janus,
    make_tiny_lighton_ocr,
    make_tiny_ovis2,
    make_tiny_ovis2_5,
    make_tiny_qianfan_ocr,
)
from .tiny_families_qwen_like import (
    make_tiny_deepseek_vl,
    make_tiny_deepseek_vl_hybrid,
    make_tiny_llava_onevision1_5,
    make_tiny_qwen2_5_vl,
    make_tiny_qwen3_vl,
)
from .tiny_families_qwen_more import (
    make_tiny_cosmos3_omni,
    make_tiny_glm4v,
    make_tiny_glm4v_moe,
    make_tiny_glm46v,
    make_tiny_glm_ocr,
    make_tiny_qwen3_5,
    make_tiny_qwen3_5_moe,
    make_tiny_qwen3_vl_moe,
    make_tiny_qwen4_exp,
)
from .tiny_families_qwen_tower import (
    make_tiny_dots3_note,
    make_tiny_ernie4_5_vl_moe,
    make_tiny_exaone4_5,
    make_tiny_hunyuan_vl,
    make_tiny_hyperclovax_vision_v2,
    make_tiny_lfm3_vl,
    make_tiny_paddleocr_vl,
    make_tiny_video_llama_3,
)
from .tiny_families_special import (
    make_tiny_chameleon,
    make_tiny_cohere_compass,
    make_tiny_cosmos3_edge,
    make_tiny_emu3,
    make_tiny_gemma4,
)

README = Path(__file__).resolve().parents[1] / "README.md"
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
FROZEN_VISION = {"vision": "frozen", "connector": "full", "language": "lora"}
VQ_IMAGES = {"vision": "frozen", "language": "lora"}
"""Images as VQ-VAE codes in the LM's own vocabulary: no connector."""


@dataclass(frozen=True)
class Case:
    build: object
    """make_tiny_<family>(out, texts) -> Path."""
    template: str
    """The stage's template, and --template for caption and eval, where it is not the model's default: chat, or the
    family's own layout for a model without a chat template (`Support.layout`)."""
    train: dict
    """What the LoRA stage trains (vision / connector / language)."""
    target: str | list[str] = "all-linear"
    """LoRA target modules."""
    images: str = IMAGES_IN_TEXT
    """How the family takes images (verbovision.families)."""
    requires: str | None = None
    """A package its processor class needs beyond VerboVision's dependencies (skipped where it is missing)."""


MATRIX = {
    "llava": Case(make_tiny_llava, "chat", FROZEN_VISION),
    "idefics3": Case(make_tiny_idefics3, "chat", {"vision": "lora", "connector": "full", "language": "lora"}),
    "qwen2_vl": Case(make_tiny_qwen2_vl, "chat", FROZEN_VISION),
    "git": Case(make_tiny_git, "caption", {"vision": "frozen", "connector": "frozen", "language": "lora"},
                ["query", "key", "value", "dense"], PREFIX),
    "vision-encoder-decoder": Case(make_tiny_vision_encoder_decoder, "caption",
                                   {"vision": "frozen", "language": "lora"}, images=ENCODER),
    "gemma3": Case(make_tiny_gemma3, "chat", FROZEN_VISION),
    "paligemma": Case(make_tiny_paligemma, "prefix", FROZEN_VISION),
    "smolvlm": Case(make_tiny_smolvlm, "chat", {"vision": "lora", "connector": "full", "language": "lora"},
                    requires="num2words"),
    "blip-2": Case(make_tiny_blip_2, "caption", FROZEN_VISION),
    "qwen2_5_vl": Case(make_tiny_qwen2_5_vl, "chat", FROZEN_VISION),
    "qwen3_vl": Case(make_tiny_qwen3_vl, "chat", FROZEN_VISION),
    "llava_onevision1_5": Case(make_tiny_llava_onevision1_5, "chat", FROZEN_VISION),
    "deepseek_vl": Case(make_tiny_deepseek_vl, "chat", FROZEN_VISION),
    "deepseek_vl_hybrid": Case(make_tiny_deepseek_vl_hybrid, "chat", FROZEN_VISION),
    "llava_next": Case(make_tiny_llava_next, "chat", FROZEN_VISION),
    "llava_onevision": Case(make_tiny_llava_onevision, "chat", FROZEN_VISION),
    "aya_vision": Case(make_tiny_aya_vision, "chat", FROZEN_VISION),
    "internvl": Case(make_tiny_internvl, "chat", FROZEN_VISION),
    "qwen3_vl_moe": Case(make_tiny_qwen3_vl_moe, "chat", FROZEN_VISION),
    "qwen3_5": Case(make_tiny_qwen3_5, "chat", FROZEN_VISION),
    "qwen3_5_moe": Case(make_tiny_qwen3_5_moe, "chat", FROZEN_VISION),
    "qwen4_exp": Case(make_tiny_qwen4_exp, "chat", FROZEN_VISION),
    "glm4v": Case(make_tiny_glm4v, "chat", FROZEN_VISION),
    "glm4v_moe": Case(make_tiny_glm4v_moe, "chat", FROZEN_VISION),
    "glm46v": Case(make_tiny_glm46v, "chat", FROZEN_VISION),
    "glm_ocr": Case(make_tiny_glm_ocr, "chat", FROZEN_VISION),
    "cosmos3_omni": Case(make_tiny_cosmos3_omni, "chat", FROZEN_VISION),
    "cohere_compass": Case(make_tiny_cohere_compass, "chat", FROZEN_VISION),
    "cosmos3_edge": Case(make_tiny_cosmos3_edge, "chat", FROZEN_VISION),
    "chameleon": Case(make_tiny_chameleon, "plain", VQ_IMAGES),
    "emu3": Case(make_tiny_emu3, "chat", VQ_IMAGES),
    "gemma4": Case(make_tiny_gemma4, "chat", FROZEN_VISION),
    "minicpmv4_6": Case(make_tiny_minicpmv4_6, "chat", FROZEN_VISION),
    "minicpmv4_7": Case(make_tiny_minicpmv4_7, "chat", FROZEN_VISION),
    "glmga": Case(make_tiny_glmga, "chat", FROZEN_VISION),
    "glm5_next": Case(make_tiny_glm5_next, "chat", FROZEN_VISION),
    "hy_v4_vl": Case(make_tiny_hy_v4_vl, "chat", FROZEN_VISION),
    "vipllava": Case(make_tiny_vipllava, "chat", FROZEN_VISION),
    "llava_next_video": Case(make_tiny_llava_next_video, "chat", FROZEN_VISION),
    "video_llava": Case(make_tiny_video_llava, "chat", FROZEN_VISION),
    "granite4_vision": Case(make_tiny_granite4_vision, "chat", FROZEN_VISION),
    "idefics2": Case(make_tiny_idefics2, "chat", FROZEN_VISION),
    "granite_docling": Case(make_tiny_granite_docling, "chat", FROZEN_VISION),
    "got_ocr2": Case(make_tiny_got_ocr2, "plain", FROZEN_VISION),
    "qianfan_ocr": Case(make_tiny_qianfan_ocr, "chat", FROZEN_VISION),
    "ovis2": Case(make_tiny_ovis2, "chat", FROZEN_VISION),
    "ovis2_5": Case(make_tiny_ovis2_5, "chat", FROZEN_VISION),
    "janus": Case(make_tiny_janus, "chat", FROZEN_VISION),
    "aria": Case(make_tiny_aria, "chat", FROZEN_VISION),
    "lighton_ocr": Case(make_tiny_lighton_ocr, "chat", FROZEN_VISION),
    "exaone4_5": Case(make_tiny_exaone4_5, "chat", FROZEN_VISION),
    "hyperclovax_vision_v2": Case(make_tiny_hyperclovax_vision_v2, "chat", FROZEN_VISION),
    "lfm3_vl": Case(make_tiny_lfm3_vl, "chat", FROZEN_VISION),
    "video_llama_3": Case(make_tiny_video_llama_3, "chat", FROZEN_VISION),
    "paddleocr_vl": Case(make_tiny_paddleocr_vl, "chat", FROZEN_VISION),
    "hunyuan_vl": Case(make_tiny_hunyuan_vl, "chat", FROZEN_VISION),
    "dots3_note": Case(make_tiny_dots3_note, "chat", FROZEN_VISION),
    "ernie4_5_vl_moe": Case(make_tiny_ernie4_5_vl_moe, "chat", FROZEN_VISION),
    "mistral3": Case(make_tiny_mistral3, "chat", FROZEN_VISION, requires="torchvision"),
}
"""model_type: how the matrix runs it."""

MERGED_LOGITS_WITHOUT_VERBOVISION = BLOCK_VERBOVISION + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model_dir, batch_file, out_file = sys.argv[1:4]
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    try:
        AutoProcessor.from_pretrained(model_dir)
    except ImportError as e:  # a processor holding a video processor needs torchvision
        assert "torchvision" in str(e).lower(), e
    with torch.no_grad():
        torch.save(model(**torch.load(batch_file)).logits, out_file)
    """
)


def runnable_case(model_type: str) -> Case:
    """How the matrix runs a model type; skipped, saying why, where this environment cannot run it."""
    needs_model_type(model_type)
    case = MATRIX[model_type]
    if case.requires:
        pytest.importorskip(case.requires, reason=f"{model_type}'s processor class needs {case.requires}")
    return case


def chosen_template(model_type: str) -> dict[str, str]:
    """The template the matrix names for a model type: none where it is the default."""
    template = MATRIX[model_type].template
    return {} if template in ("chat", SUPPORT.get(model_type, Support()).layout) else {"template": template}


@pytest.fixture(scope="module")
def four_records(shapes_data, tmp_path_factory) -> Path:
    """Four caption records of the shapes data, with absolute image paths."""
    records = json.loads((shapes_data / "test/caption_short_en.json").read_text())[:4]
    for record in records:
        record["image"] = str(shapes_data / "test" / record["image"])
    out = tmp_path_factory.mktemp("four") / "four.json"
    out.write_text(json.dumps(records))
    return out


@pytest.mark.parametrize("model_type", MATRIX)
def test_family(model_type, tmp_path, shapes_data, four_records, tiny_tokenizer_texts, capsys):
    case = runnable_case(model_type)
    base = case.build(tmp_path / "base", tiny_tokenizer_texts)
    image = json.loads(four_records.read_text())[0]["image"]
    template = chosen_template(model_type)
    short = ["--device", "cpu", "--max-new-tokens", "6", *(f"--{k}={v}" for k, v in template.items())]

    assert main(["caption", str(base), image, image, *short]) == 0
    assert main(["eval", str(base), "--data", str(four_records), "--metrics", "bleu,exact_match", "--out",
                 str(tmp_path / "eval"), *short]) == 0
    report = read_json(tmp_path / "eval/report.json")
    assert report["records"] == 4 and "exact_match" in report["metrics"]

    stage = {"name": "lora", **template, "train": case.train, "lora": {**LORA, "target": case.target},
             "data": {"train": ["train/caption_short_en.json"], "val": ["val/caption_short_en.json"]},
             "max_steps": 3, "batch_size": 2, "lr": 1e-2, "merge": True}
    run = tmp_path / "run"
    train_recipe(parse_recipe({"name": model_type, "seed": 0, "data_root": str(shapes_data),
                               "model": {"from": str(base), "dtype": FLOAT32}, "stages": [stage]}), run)
    final = read_json(run / "final/verbovision.json")
    assert final["template"] == case.template
    assert ("prompt" in final) == (case.template != "caption")  # what `verbo caption` then asks
    merge = final["merge"]
    assert merge["max_abs_diff"] < 1e-4 and merge["max_abs_diff_reloaded"] < 1e-4

    base_model, processor = load_model(base, device="cpu")
    with_adapter = PeftModel.from_pretrained(base_model, run / "stages/0-lora/adapter").eval()
    batch = probe_batch(with_adapter, processor, "cpu", seed=5)
    torch.save(batch, tmp_path / "batch.pt")
    subprocess.run([sys.executable, "-c", MERGED_LOGITS_WITHOUT_VERBOVISION, str(run / "final"),
                    str(tmp_path / "batch.pt"), str(tmp_path / "merged.pt")], check=True)
    merged = torch.load(tmp_path / "merged.pt").float()
    assert (merged - logits_of(with_adapter, batch)).abs().max().item() < 1e-4
    assert (merged - logits_of(load_model(base, device="cpu")[0], batch)).abs().max().item() > 1e-6

    capsys.readouterr()
    assert main(["caption", str(run / "final"), image, "--device", "cpu", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip()


OWN_GREEDY_LOOP = ("llava", "deepseek_vl", "aya_vision", "internvl", "chameleon", "vipllava", "got_ocr2",
                   "qianfan_ocr", "ovis2", "janus")
"""Model types whose greedy captions VerboVision's own loop decodes (rows leave the batch at their end): a batch of
ids, mask and pixel values alone. The others' batches carry more (grid sizes, token types, image sizes...), or their
images are not tokens in the text, and go through `generate`."""


@pytest.mark.parametrize("model_type", MATRIX)
def test_greedy_captions_are_generates(model_type, tmp_path, four_records, tiny_tokenizer_texts, monkeypatch):
    """Greedy captions of three images in one batch equal `generate`'s, through the path the support table names."""
    case = runnable_case(model_type)
    vlm = VLM(case.build(tmp_path / "base", tiny_tokenizer_texts), device="cpu", **chosen_template(model_type))
    images = [Image.open(record["image"]).convert("RGB") for record in json.loads(four_records.read_text())[:3]]
    own_loop_calls = []
    loop = vlm_module.greedy_leaving_at_eos
    monkeypatch.setattr(vlm_module, "greedy_leaving_at_eos", lambda *args: own_loop_calls.append(1) or loop(*args))
    options = DecodeOptions(max_new_tokens=8)
    captions = vlm.caption(images, options=options)
    assert bool(own_loop_calls) == (model_type in OWN_GREEDY_LOOP)
    vlm.greedy_loop_fits = False
    assert vlm.caption(images, options=options) == captions


UNCAST_PIXELS = ("chameleon", "deepseek_vl_hybrid", "aria", "lfm3_vl", "got_ocr2")
"""Model types whose vision towers do not cast pixel values to their weights' dtype themselves (SAM's, Chameleon's
VQ encoder, Aria's, LFM's): fed as the processor makes them (float32), a bfloat16 model fails."""


@pytest.mark.parametrize("model_type", UNCAST_PIXELS)
def test_bfloat16_models_get_pixels_in_their_dtype(model_type, tmp_path, four_records, tiny_tokenizer_texts):
    """`auto` loads bfloat16 on GPUs: captions (our greedy loop and `generate`) and the merge check's probe work
    there, here forced on the CPU."""
    case = runnable_case(model_type)
    base = case.build(tmp_path / "base", tiny_tokenizer_texts)
    vlm = VLM(base, device="cpu", dtype="bfloat16", **chosen_template(model_type))
    images = [Image.open(record["image"]).convert("RGB") for record in json.loads(four_records.read_text())[:2]]
    assert len(vlm.caption(images, max_new_tokens=4)) == 2
    vlm.greedy_loop_fits = False
    assert len(vlm.caption(images, max_new_tokens=4)) == 2
    model, processor = load_model(base, device="cpu", dtype="bfloat16")
    assert logits_of(model, probe_batch(model, processor, "cpu")).isfinite().all()


def support_row(model_type: str) -> list[str]:
    """What the README's support table says of a model type: template, feature cache, packing, greedy loop."""
    case, support = MATRIX[model_type], SUPPORT.get(model_type, Support())
    return [model_type, case.template, "yes" if support.caches_features else "no",
            "yes" if case.images == IMAGES_IN_TEXT and support.packs else "no",
            "own" if model_type in OWN_GREEDY_LOOP else "generate"]


def test_readme_support_table_is_the_matrix():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("<!-- support table -->"):text.index("<!-- end support table -->")]
    rows = [[cell.strip(" `") for cell in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| `")]
    assert [row[:5] for row in rows] == [support_row(model_type) for model_type in MATRIX]


REGISTRY_CHECKED_WITH = Version("5.25.0")
"""The newest transformers whose image-text model types the registry (families.py) was checked against."""


def test_the_matrix_is_the_registrys_list():
    assert tuple(MATRIX) == FAMILY_MATRIX


def test_every_image_text_model_type_of_transformers_is_in_the_registry():
    """Each type `AutoModelForImageTextToText` maps is tried (matrix or elsewhere), refused with a reason, or listed
    as untried with the reason; a later transformers may add types the registry has not seen."""
    registered = {*FAMILY_MATRIX, *TRIED_ELSEWHERE, *SUPPORT, *UNTRIED}
    unregistered = sorted(set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES) - registered)
    if unregistered and Version(transformers.__version__) > REGISTRY_CHECKED_WITH:
        pytest.skip(f"transformers {transformers.__version__} adds {unregistered}: not yet in the registry")
    assert unregistered == []
    assert not set(UNTRIED) & {*FAMILY_MATRIX, *TRIED_ELSEWHERE, *SUPPORT}


@pytest.mark.parametrize("model_type", sorted(t for t, why in UNTRIED.items() if "torchvision version" in why))
def test_untried_for_want_of_torchvision_means_no_pil_image_processor(model_type):
    needs_model_type(model_type)
    assert "pil" not in IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type, {})


def test_an_untried_model_type_is_noted_once_on_loading(capsys):
    note_untried.cache_clear()
    untried = next(t for t in UNTRIED if t in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    config = AutoConfig.for_model(untried)
    for _ in range(2):
        assert family_of(config).name == untried
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"verbo: note: {untried} models are untried by VerboVision ({UNTRIED[untried]}); they take the "
                     "generic image-token path: check a few outputs, and report what fails"]
    family_of(AutoConfig.for_model("llava"))
    assert capsys.readouterr().err == ""


def other_model_types() -> list[str]:
    """The README's lines on the model types outside the support table (refused, tried elsewhere, untried), one line
    per reason."""
    reasons = {**{t: f"refused: {s.refused}" for t, s in SUPPORT.items() if s.refused},
               **{t: f"tried elsewhere: {why}" for t, why in TRIED_ELSEWHERE.items()},
               **{t: f"untried: {why}" for t, why in UNTRIED.items()}}
    types_by_reason: dict[str, list[str]] = {}
    for model_type, reason in reasons.items():
        types_by_reason.setdefault(reason, []).append(f"`{model_type}`")
    return [f"- {', '.join(types)} — {reason}" for reason, types in types_by_reason.items()]


def test_readme_lists_every_other_model_type():
    text = README.read_text(encoding="utf-8")
    block = text[text.index("<!-- other model types -->"):text.index("<!-- end other model types -->")]
    assert [line for line in block.splitlines() if line.startswith("- `")] == other_model_types()
