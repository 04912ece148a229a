"""Tiny random checkpoints of families built around a Qwen-VL-style vision tower, offline (as tests/tiny_families.py).

Each `make_tiny_*(out, texts)` saves a random float32 model and its processor to `out`, laid out like the family's
checkpoints on the Hub, so that `AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` (with torchvision, where the processor holds a video processor) load them with no
`trust_remote_code`.

Quirks worth knowing (transformers 5.x):
- EXAONE 4.5, HyperCLOVAX-SEED Vision V2: Qwen2-VL's image processor (patch 8, merge 2: 4..16 image tokens for
  32x32..64x64 pixels, tests/tiny_families.py) and Qwen2-VL's token expansion of `<|image_pad|>`, with flat
  `pixel_values` and `image_grid_thw`; no `mm_token_type_ids` and plain 1-D positions in the LM. Their processors hold
  a video processor, so without torchvision the builders write the files `save_pretrained` would write
  (tests/tiny_families.py `save_with_video_processor`).
- EXAONE 4.5: a Qwen2.5-VL-like tower of its own (window attention, GQA in the vision attention, axial 2-D rope; its
  merger `model.visual.merger` is the connector) in front of an EXAONE 4.0 LM (post-norm, hybrid sliding / full
  attention, no rope in the full-attention layers).
- HyperCLOVAX-SEED Vision V2: Qwen2.5-VL's vision tower as `model.vision_model` (its own merger
  `model.vision_model.merger`), then one linear, `model.projector`, into a HyperCLOVAX (Granite-like, with
  multipliers) LM; embeddings tied.
- LFM3-VL: Qwen2-VL's image processor and token expansion, a Qwen3-VL video processor; tower and LM both mix short
  convolutions with attention (`layer_types`), and the LM's convolutions run along the whole row reading no positions.
  `model.multi_modal_projector` merges 2x2 patches.
- VideoLLaMA3: its own image processor does not merge patches for images (`merge_size` 1: every 8x8 patch a token, 30
  for a 48x40 picture) and returns `image_merge_sizes`, a model input; `model.projector` is a two-layer MLP.
- PaddleOCR-VL: its own image processor (2-D patches) and a processor without a video processor; the processor
  returns `mm_token_type_ids` (1 on the image token, for the ERNIE-4.5 LM's M-RoPE) without naming them in
  `model_input_names`. The tokenizer must name `image_token`.
- HunYuan-VL: the processor reads `image_token`, `image_start_token` and `image_end_token` off the tokenizer (saved as
  extra special tokens) and refuses an image token those two do not wrap; an image is rows of merged patches, each
  row ended by a learned token, plus learned begin / end embeddings: `patch_h * (patch_w + 1) + 2` tokens (10 for
  48x40). `mm_token_type_ids` drive its M-RoPE. Its `text_config` has no default `head_dim`.
- dots3-note: its processor also holds an audio feature extractor (and the checkpoint an audio tower, unused for
  images); its image token is `<|imgpad|>` whatever the tokenizer says. The LM is MoE with multi-head latent
  attention, a DSA indexer in its full-attention layers and a sliding-window layer.
- ERNIE-4.5-VL MoE: its own image processor, the tokenizer names its image and video tokens (and their start / end
  tokens); the processor adds `moe_mm_token_type_ids` (1 on image tokens and their start / end tokens), which route
  those tokens to the LM's image experts, beside `mm_token_type_ids` for M-RoPE (sections in its own order: height,
  width, time, height = width). `model.resampler_model` is the connector.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2VLImageProcessorPil

from verbovision.data.tokenizer import train_bpe_tokenizer

from .tiny_families import (
    QWEN2_VL_PIXELS,
    QWEN2_VL_TEMPLATE,
    QWEN2_VL_VISION,
    TINY_LM,
    TINY_VISION,
    mrope_text_config,
    qwen_tokenizer,
    save_checkpoint,
    save_processor_files,
    save_with_video_processor,
    special_ids,
)
from .tiny_families_qwen_like import qwen2_video, qwen_generation, qwen_ids

__all__ = ["BUILDERS", "make_tiny_dots3_note", "make_tiny_ernie4_5_vl_moe", "make_tiny_exaone4_5",
           "make_tiny_hunyuan_vl", "make_tiny_hyperclovax_vision_v2", "make_tiny_lfm3_vl", "make_tiny_paddleocr_vl",
           "make_tiny_video_llama_3"]

# EXAONE 4.0's turn format (role indicators `[|role|]\n`, `[|endofturn|]\n` after each turn: the chat template of
# LGAI-EXAONE/EXAONE-4.0-*, quoted in llama.cpp PR #14630), without its tool and reasoning branches. EXAONE 4.5's own
# template is not available offline; the image is Qwen2-VL's `<|vision_start|><|image_pad|><|vision_end|>`, the image
# token its processor expands by default.
EXAONE4_TEMPLATE = (
    "{% for message in messages %}{{ '[|' + message['role'] + '|]\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '[|endofturn|]\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '[|assistant|]\\n' }}{% endif %}"
)

QWEN_TOWER = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=QWEN2_VL_VISION["patch_size"],
                  temporal_patch_size=QWEN2_VL_VISION["temporal_patch_size"],
                  spatial_merge_size=QWEN2_VL_VISION["merge_size"],
                  window_size=32, fullatt_block_indexes=[1])  # Qwen2.5-VL's: 32 pixels = 2x2 merged tokens per window
"""The tiny Qwen2.5-VL-style vision tower (window attention, full attention in its last layer)."""


def _save_qwen_processed(out: Path, model, tokenizer, processor_class: str, template: str, **video) -> Path:
    """Save a model whose processor is Qwen2-VL's image processor + a Qwen2-VL-style video processor (`video`: its
    type, where not Qwen2-VL's)."""
    image_processor = Qwen2VLImageProcessorPil(**QWEN2_VL_VISION, **QWEN2_VL_PIXELS)
    return save_with_video_processor(out, model, qwen_generation(tokenizer), processor_class, image_processor,
                                     tokenizer, template, qwen2_video(**video))


def _media_ids(tokenizer) -> dict:
    ids = qwen_ids(tokenizer)
    return dict(image_token_id=ids["image_token_id"], video_token_id=ids["video_token_id"])


# --------------------------------------------------------------------------------------------------- EXAONE 4.5


def _exaone_tokenizer(texts: list[str]):
    """Qwen2-VL's tokenizer specials plus EXAONE's turn markers; EOS `[|endofturn|]`."""
    tokenizer = qwen_tokenizer(texts)
    tokenizer.add_tokens(["[|system|]", "[|user|]", "[|assistant|]", "[|endofturn|]"], special_tokens=True)
    tokenizer.eos_token = "[|endofturn|]"
    return tokenizer


def make_tiny_exaone4_5(out: Path, texts: list[str]) -> Path:
    """Exaone4_5_ForConditionalGeneration (LGAI-EXAONE/EXAONE-4.5-33B layout)."""
    from transformers import Exaone4_5_Config, Exaone4_5_ForConditionalGeneration

    tokenizer = _exaone_tokenizer(texts)
    text = dict(TINY_LM, model_type="exaone4", vocab_size=len(tokenizer), bos_token_id=None,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                layer_types=["sliding_attention", "full_attention"])
    vision = dict(QWEN_TOWER, num_key_value_heads=1, out_hidden_size=TINY_LM["hidden_size"])
    config = Exaone4_5_Config(text_config=text, vision_config=vision, **_media_ids(tokenizer))
    torch.manual_seed(0)
    model = Exaone4_5_ForConditionalGeneration(config)
    return _save_qwen_processed(out, model, tokenizer, "Exaone4_5_Processor", EXAONE4_TEMPLATE)


# ------------------------------------------------------------------------------------ HyperCLOVAX-SEED Vision V2


def make_tiny_hyperclovax_vision_v2(out: Path, texts: list[str]) -> Path:
    """HyperCLOVAXVisionV2ForConditionalGeneration (naver-hyperclovax/HyperCLOVAX-SEED-Think-32B layout)."""
    from transformers import HyperCLOVAXVisionV2Config, HyperCLOVAXVisionV2ForConditionalGeneration

    tokenizer = qwen_tokenizer(texts)
    text = dict(TINY_LM, model_type="hyperclovax", vocab_size=len(tokenizer), bos_token_id=None,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    vision = dict(QWEN_TOWER, model_type="qwen2_5_vl_vision", out_hidden_size=TINY_LM["hidden_size"])
    config = HyperCLOVAXVisionV2Config(text_config=text, vision_config=vision, **_media_ids(tokenizer))
    torch.manual_seed(0)
    model = HyperCLOVAXVisionV2ForConditionalGeneration(config)
    # The Hub checkpoint's turns are ChatML (<|im_start|>role ... <|im_end|>, as vLLM's HyperCLOVAX reasoning parser
    # reads them); its own template (with /think switches) is not available offline, so Qwen2-VL's ChatML one stands in.
    return _save_qwen_processed(out, model, tokenizer, "HyperCLOVAXVisionV2Processor", QWEN2_VL_TEMPLATE)


# --------------------------------------------------------------------------------------------------------- LFM3-VL

def chatml_template(image: str, start: str = "") -> str:
    """A ChatML chat template with no default system turn (`start`: what every text starts with, as `{{ ... }}`
    Jinja) that writes `image` for each image part."""
    return (
        start + "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '" + image + "' }}"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


# LiquidAI/LFM2-VL-*'s chat template (tokenizer_config.json of the Hub checkpoints): BOS, then ChatML turns with no
# default system turn. LFM3-VL's own template is not available offline; its processor expands `<|image_pad|>` between
# `<|vision_start|>` and `<|vision_end|>` (the defaults it names), which stand for LFM2-VL's `<image>` here.
LFM_TEMPLATE = chatml_template("<|vision_start|><|image_pad|><|vision_end|>", start="{{ bos_token }}")


def make_tiny_lfm3_vl(out: Path, texts: list[str]) -> Path:
    """Lfm3VlForConditionalGeneration (LiquidAI/LFM3-VL-2B layout)."""
    from transformers import Lfm3VlConfig, Lfm3VlForConditionalGeneration

    tokenizer = qwen_tokenizer(texts)
    tokenizer.add_tokens(["<|startoftext|>"], special_tokens=True)
    tokenizer.bos_token = "<|startoftext|>"
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    text = dict(TINY_LM, model_type="lfm3", vocab_size=len(tokenizer), head_dim=head_dim,
                layer_types=["conv", "full_attention"],  # LFM's hybrid: short convolutions between attention layers
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, layer_types=["conv", "full_attention"],
                  patch_size=QWEN2_VL_VISION["patch_size"], temporal_patch_size=QWEN2_VL_VISION["temporal_patch_size"],
                  spatial_merge_size=QWEN2_VL_VISION["merge_size"])
    config = Lfm3VlConfig(text_config=text, vision_config=vision, projector_hidden_size=64, **qwen_ids(tokenizer))
    torch.manual_seed(0)
    model = Lfm3VlForConditionalGeneration(config)
    return _save_qwen_processed(out, model, tokenizer, "Lfm3VlProcessor", LFM_TEMPLATE,
                                video_processor_type="Qwen3VLVideoProcessor")


# ---------------------------------------------------------------------------------------------------- VideoLLaMA3

# lkhl/VideoLLaMA3-*-hf's template is not available offline: ChatML turns (its Qwen2.5 LM's) with the bare image token
# its processor expands, a newline after it.
VIDEO_LLAMA_3_TEMPLATE = chatml_template("<|image_pad|>\\n")


def make_tiny_video_llama_3(out: Path, texts: list[str]) -> Path:
    """VideoLlama3ForConditionalGeneration (lkhl/VideoLLaMA3-2B-Image-HF layout): SigLIP-like tower with 2-D rope, a
    two-layer MLP `model.projector`, Qwen2 LM."""
    from transformers import VideoLlama3Config, VideoLlama3ForConditionalGeneration, VideoLlama3ImageProcessorPil

    tokenizer = qwen_tokenizer(texts)
    text = dict(TINY_LM, model_type="qwen2", vocab_size=len(tokenizer), bos_token_id=None,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  patch_size=QWEN2_VL_VISION["patch_size"])
    config = VideoLlama3Config(text_config=text, vision_config=vision, **_media_ids(tokenizer))
    torch.manual_seed(0)
    model = VideoLlama3ForConditionalGeneration(config)
    # Images are not merged (merge_size 1, the family's image setting: every 8x8 patch a token, 16..64 per image);
    # videos are (merge_size 2).
    pixels = {"shortest_edge": QWEN2_VL_PIXELS["min_pixels"], "longest_edge": QWEN2_VL_PIXELS["max_pixels"]}
    image_processor = VideoLlama3ImageProcessorPil(patch_size=QWEN2_VL_VISION["patch_size"], merge_size=1, size=pixels)
    video = {"video_processor_type": "VideoLlama3VideoProcessor", "patch_size": QWEN2_VL_VISION["patch_size"],
             "size": pixels}
    return save_with_video_processor(out, model, qwen_generation(tokenizer), "VideoLlama3Processor", image_processor,
                                     tokenizer, VIDEO_LLAMA_3_TEMPLATE, video)


# ---------------------------------------------------------------------------------------------------- PaddleOCR-VL

# The ERNIE-4.5 turn layout of PaddlePaddle/PaddleOCR-VL's chat template (simplified to what a caption needs; baidu/
# ERNIE-4.5-VL-*'s also numbers the pictures): BOS, "User: ", the image between <|IMAGE_START|> and <|IMAGE_END|>, the
# text, a newline; "Assistant: " + the reply + <|end_of_sentence|>. Images come before the turn's text.
ERNIE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}User: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] if content['type'] == 'image' %}"
    "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>{% endfor %}"
    "{% for content in message['content'] if content['type'] == 'text' %}{{ content['text'] }}{% endfor %}{% endif %}"
    "{{ '\\n' }}{% elif message['role'] == 'assistant' %}Assistant: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] if content['type'] == 'text' %}{{ content['text'] }}{% endfor %}{% endif %}"
    "<|end_of_sentence|>{% else %}{{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def make_tiny_paddleocr_vl(out: Path, texts: list[str]) -> Path:
    """PaddleOCRVLForConditionalGeneration (PaddlePaddle/PaddleOCR-VL layout): NaViT-style SigLIP tower with 2-D rope,
    `model.projector` merging 2x2 patches, ERNIE-4.5 LM with M-RoPE."""
    from transformers import (
        PaddleOCRVLConfig,
        PaddleOCRVLForConditionalGeneration,
        PaddleOCRVLImageProcessorPil,
        PaddleOCRVLProcessor,
    )

    tokenizer = train_bpe_tokenizer(list(texts) + ["User: Assistant:"], "<|IMAGE_PLACEHOLDER|>", vocab_size=300)
    tokenizer.add_tokens(["<|IMAGE_START|>", "<|IMAGE_END|>", "<|begin_of_sentence|>", "<|end_of_sentence|>"],
                         special_tokens=True)
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_sentence|>", "<|end_of_sentence|>"
    tokenizer.chat_template = None
    token = tokenizer.convert_tokens_to_ids
    ids = special_ids(tokenizer)
    text = mrope_text_config(len(tokenizer), dict(eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"]))
    text.update(bos_token_id=ids["bos_token_id"], head_dim=TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"])
    vision = dict(TINY_VISION, spatial_merge_size=QWEN2_VL_VISION["merge_size"])
    config = PaddleOCRVLConfig(text_config=text, vision_config=vision, image_token_id=token("<|IMAGE_PLACEHOLDER|>"),
                               vision_start_token_id=token("<|IMAGE_START|>"),
                               vision_end_token_id=token("<|IMAGE_END|>"))
    torch.manual_seed(0)
    model = PaddleOCRVLForConditionalGeneration(config)
    pixels = {"shortest_edge": QWEN2_VL_PIXELS["min_pixels"], "longest_edge": QWEN2_VL_PIXELS["max_pixels"]}
    image_processor = PaddleOCRVLImageProcessorPil(patch_size=QWEN2_VL_VISION["patch_size"],
                                                   merge_size=QWEN2_VL_VISION["merge_size"], size=pixels)
    processor = PaddleOCRVLProcessor(image_processor, tokenizer, chat_template=ERNIE_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**ids))


# ------------------------------------------------------------------------------------------------------ HunYuan-VL


def named_tokens_tokenizer(texts: list[str], named: dict[str, str], eos: str = "<|im_end|>",
                           bos: str | None = None) -> PreTrainedTokenizerFast:
    """A BPE with special tokens the processor reads from it by name (`named`: attribute -> token, `image_token`
    among them; saved as extra special tokens); ChatML turns."""
    trained = train_bpe_tokenizer(list(texts) + ["system user assistant User: Assistant:"], named["image_token"],
                                  vocab_size=300)
    trained.add_tokens([t for t in [*named.values(), eos, bos] if t], special_tokens=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, eos_token=eos, bos_token=bos,
                                        pad_token=trained.pad_token, extra_special_tokens=named)
    tokenizer.chat_template = None
    return tokenizer


def make_tiny_hunyuan_vl(out: Path, texts: list[str]) -> Path:
    """HunYuanVLForConditionalGeneration (tencent/HunyuanOCR layout): NaViT tower whose `patch_merger` (convolutions,
    a row-end token, begin / end embeddings) is the connector; HunYuan dense LM with M-RoPE."""
    from transformers import (
        HunYuanVLConfig,
        HunYuanVLForConditionalGeneration,
        HunYuanVLImageProcessorPil,
        HunYuanVLProcessor,
    )

    tokenizer = named_tokens_tokenizer(texts, {"image_token": "<|image|>", "image_start_token": "<|image_start|>",
                                               "image_end_token": "<|image_end|>"})
    token = tokenizer.convert_tokens_to_ids
    text = mrope_text_config(len(tokenizer), dict(eos_token_id=tokenizer.eos_token_id,
                                                  pad_token_id=tokenizer.pad_token_id))
    text["head_dim"] = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]  # no default here
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  out_hidden_size=TINY_LM["hidden_size"], patch_size=QWEN2_VL_VISION["patch_size"],
                  spatial_merge_size=QWEN2_VL_VISION["merge_size"], max_image_size=64, min_image_size=32)
    config = HunYuanVLConfig(text_config=text, vision_config=vision, image_token_id=token("<|image|>"),
                             im_start_id=token("<|image_start|>"), im_end_id=token("<|image_end|>"))
    torch.manual_seed(0)
    model = HunYuanVLForConditionalGeneration(config)
    pixels = {"shortest_edge": QWEN2_VL_PIXELS["min_pixels"], "longest_edge": QWEN2_VL_PIXELS["max_pixels"]}
    image_processor = HunYuanVLImageProcessorPil(patch_size=QWEN2_VL_VISION["patch_size"],
                                                 merge_size=QWEN2_VL_VISION["merge_size"], size=pixels)
    # tencent/HunyuanOCR's own template is not available offline: ChatML turns, the image wrapped in its start / end
    # tokens as the processor requires.
    processor = HunYuanVLProcessor(image_processor, tokenizer,
                                   chat_template=chatml_template("<|image_start|><|image|><|image_end|>"))
    return save_checkpoint(out, model, processor, qwen_generation(tokenizer))


# ------------------------------------------------------------------------------------------------------ dots3-note

# dots3-note's own template is not available offline: ChatML turns with the image written as the dots.ocr family
# writes it, `<|img|><|imgpad|><|endofimg|>` (`<|imgpad|>` is the image token its processor expands).
DOTS_TEMPLATE = chatml_template("<|img|><|imgpad|><|endofimg|>")

DOTS3_TEXT = dict(
    moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, shared_experts_intermediate_size=16,
    # multi-head latent attention: low-rank queries and keys / values, a rotary and a position-free part per head
    kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, head_dim=16,
    index_topk=16, index_head_dim=16, index_n_heads=2,  # the DSA indexer of its full-attention layers
    layer_types=["indexed_attention", "sliding_attention"], sliding_window=16,
    swa_num_attention_heads=2, swa_num_key_value_heads=2, swa_q_lora_rank=16, swa_kv_lora_rank=16, swa_head_dim=16,
    swa_qk_nope_head_dim=8, swa_v_head_dim=16)
"""A tiny text config of dots3-note's LM: MoE (a dense first layer), MLA with a DSA indexer, one sliding layer."""


def make_tiny_dots3_note(out: Path, texts: list[str]) -> Path:
    """Dots3NoteForConditionalGeneration (dots-studio/dots3-note-prev layout): NaViT tower (2-D patches, its merger
    `model.vision_tower.merger` the connector), an audio tower beside it, MoE LM."""
    from transformers import Dots3NoteConfig, Dots3NoteFeatureExtractor, Dots3NoteForConditionalGeneration

    tokenizer = train_bpe_tokenizer(list(texts) + ["system user assistant"], "<|imgpad|>", vocab_size=300)
    tokenizer.add_tokens(["<|img|>", "<|endofimg|>", "<|video_pad|>", "<|audio_comp_pad|>"], special_tokens=True)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = None
    token = tokenizer.convert_tokens_to_ids
    lm = dict(TINY_LM, num_key_value_heads=TINY_LM["num_attention_heads"])  # MLA: as many key / value heads
    text = dict(lm, **DOTS3_TEXT, vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    hidden = TINY_LM["hidden_size"]
    vision = dict(hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  patch_size=QWEN2_VL_VISION["patch_size"], mlp_layer_types=["dense", "dense"],
                  adapter_in_dim=hidden, adapter_out_dim=hidden)
    audio = dict(hidden_size=hidden, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 downsample_hidden_size=16, adapter_input_size=hidden, adapter_out_dim=hidden, feature_size=16)
    config = Dots3NoteConfig(text_config=text, vision_config=vision, audio_config=audio,
                             image_token_id=token("<|imgpad|>"), video_token_id=token("<|video_pad|>"),
                             audio_token_id=token("<|audio_comp_pad|>"))
    torch.manual_seed(0)
    model = Dots3NoteForConditionalGeneration(config)
    model.generation_config = qwen_generation(tokenizer)
    model.save_pretrained(out)
    single_frame = dict(QWEN2_VL_VISION, temporal_patch_size=1)  # the tower embeds 2-D patches
    image_processor = Qwen2VLImageProcessorPil(**single_frame, **QWEN2_VL_PIXELS)
    audio_features = Dots3NoteFeatureExtractor(feature_size=16).to_dict()
    save_processor_files(Path(out), "Dots3NoteProcessor", image_processor, tokenizer, DOTS_TEMPLATE,
                         qwen2_video(video_processor_type="Qwen3VLVideoProcessor", **single_frame),
                         feature_extractor=audio_features)
    return Path(out)


# ------------------------------------------------------------------------------------------------- ERNIE-4.5-VL MoE

ERNIE_TOKENS = {"image_token": "<|IMAGE_PLACEHOLDER|>", "image_start_token": "<|IMAGE_START|>",
                "image_end_token": "<|IMAGE_END|>", "video_token": "<|video@placeholder|>",
                "video_start_token": "<|VIDEO_START|>", "video_end_token": "<|VIDEO_END|>"}
"""The image and video tokens of ERNIE-4.5-VL's tokenizer, by the names its processor reads."""


def make_tiny_ernie4_5_vl_moe(out: Path, texts: list[str]) -> Path:
    """Ernie4_5_VLMoeForConditionalGeneration (baidu/ERNIE-4.5-VL-28B-A3B-PT layout): Qwen2-VL-like tower, the
    `model.resampler_model` connector, MoE LM whose image tokens (with their start / end tokens) go to experts of their
    own (`moe_mm_token_type_ids`), M-RoPE."""
    from transformers import (
        Ernie4_5_VLMoeConfig,
        Ernie4_5_VLMoeForConditionalGeneration,
        Ernie4_5_VLMoeImageProcessorPil,
    )

    tokenizer = named_tokens_tokenizer(texts, ERNIE_TOKENS, eos="<|end_of_sentence|>", bos="<|begin_of_sentence|>")
    token = tokenizer.convert_tokens_to_ids
    ids = special_ids(tokenizer)
    text = mrope_text_config(len(tokenizer), dict(eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"]))
    text.update(bos_token_id=ids["bos_token_id"], moe_intermediate_size=[16, 16], moe_k=2, moe_num_experts=4,
                moe_num_shared_experts=1)  # text and image experts, [text, image] sizes
    text["rope_parameters"]["mrope_section"] = [3, 3, 2]  # ERNIE's order (height, width, time); height = width
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                  patch_size=QWEN2_VL_VISION["patch_size"], spatial_merge_size=QWEN2_VL_VISION["merge_size"])
    config = Ernie4_5_VLMoeConfig(text_config=text, vision_config=vision,
                                  **{f"{name}_id": token(t) for name, t in ERNIE_TOKENS.items()})
    torch.manual_seed(0)
    model = Ernie4_5_VLMoeForConditionalGeneration(config)
    pixels = {"shortest_edge": QWEN2_VL_PIXELS["min_pixels"], "longest_edge": QWEN2_VL_PIXELS["max_pixels"]}
    image_processor = Ernie4_5_VLMoeImageProcessorPil(patch_size=QWEN2_VL_VISION["patch_size"],
                                                      merge_size=QWEN2_VL_VISION["merge_size"], size=pixels)
    video = {"video_processor_type": "Ernie4_5_VLMoeVideoProcessor", "patch_size": QWEN2_VL_VISION["patch_size"],
             "size": pixels}
    return save_with_video_processor(out, model, GenerationConfig(**ids), "Ernie4_5_VLMoeProcessor", image_processor,
                                     tokenizer, ERNIE_TEMPLATE, video)


BUILDERS = {
    "exaone4_5": make_tiny_exaone4_5,
    "hyperclovax_vision_v2": make_tiny_hyperclovax_vision_v2,
    "lfm3_vl": make_tiny_lfm3_vl,
    "video_llama_3": make_tiny_video_llama_3,
    "paddleocr_vl": make_tiny_paddleocr_vl,
    "hunyuan_vl": make_tiny_hunyuan_vl,
    "dots3_note": make_tiny_dots3_note,
    "ernie4_5_vl_moe": make_tiny_ernie4_5_vl_moe,
}
