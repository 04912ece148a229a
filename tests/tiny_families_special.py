"""Tiny random checkpoints of the remaining image-text families that fit VerboVision's model API, built offline (same
contract as tests/tiny_families.py: `make_tiny_*(out, texts)` saves a random float32 model and its real processor
classes to `out`, laid out like the family's Hub checkpoints, loadable by `AutoModelForImageTextToText` /
`AutoProcessor` with no `trust_remote_code`).

Quirks worth knowing (transformers 5.x):
- CohereCompass (CohereLabs/North-Micro-Vision-Instruct): Qwen3-VL's vision tower and processor (Qwen2-VL's image
  processor: here patch 8, merge 2, 4..16 `<|IMAGE_PAD|>` tokens for 32x32..64x64 pixels; `mm_token_type_ids` for
  its M-RoPE) with a Cohere2 LM whose rope settings are per layer type (`rope_parameters["full_attention"]`). The
  processor takes the `<|VISION_START|>` / `<|VISION_END|>` wrapper from the chat template (it writes only the
  pads). It holds a video processor: without torchvision the builder writes the files `save_pretrained` would write.
- Cosmos3-Edge (nvidia/Cosmos3-Edge): a SigLIP2-style tower with a learned position grid (`num_patches`, resized to
  each image's grid) over Qwen2-VL-style flat patches (temporal patch 1; here patch 8, merge 2, 4..16 image tokens),
  merged 2x2 by `model.projector`, a Llama-like LM (relu2 MLP) with M-RoPE from `mm_token_type_ids`: the model
  requires them with images, its processor lists them among its model_input_names but returns them only when asked
  (`return_mm_token_type_ids=True`). Same processor layout as Qwen3-VL (video processor too). Its Hub template
  (ChatML, `<s>` BOS, a thinking switch) is not available offline: Qwen3-VL's ChatML template stands in.
- Chameleon (facebook/chameleon-7b): no vision tower beside the LM: a VQ-VAE (`model.vqmodel`) turns each image into
  codebook ids, mapped through `config.vocabulary_map` (the tokenizer's vocabulary, whose `IMGIMG<code>Z` tokens spell
  each code with letters A-J for digits) to ordinary BPE ids, embedded by the LM's own embedding table: the
  quantization passes no gradient, and there is no connector. The processor replaces `<image>` with `<racm3:break>` +
  `image_seq_length` x `<image>` + `<eoss>` (here 32x32 images, 8x downsampling: 16) and appends the tokenizer's
  `sep_token` to every text unless called with `return_for_text_completion=True`. The forward sets the logits of
  the image-code tokens to the dtype's minimum (the model never writes images). No chat template on the Hub.
- Emu3 (BAAI/Emu3-Chat-hf): Chameleon's scheme with a 3-D (temporal) VQ-VAE whose codes are `<|visual token
  NNNNNN|>` tokens; each row of codes ends with `<|extra_200|>`, so an image of h x w pixels is (h/8) x (w/8 + 1)
  tokens, set by its size (here 32x32..64x64 pixels: 20..72). The processor writes `<|image start|>H*W<|image
  token|>` + that many `<image>` + `<|extra_201|><|image end|>`, adds BOS itself (its GPT-2-style tokenizer adds
  none) and returns `image_sizes`. The LM is `model.text_model`.
- Gemma 4 (google/gemma-4-*-it): images become flat patches with 2-D positions (`pixel_values` [images, patches,
  3*8*8], `image_position_ids`), pooled 2x2 after the tower and projected by `model.embed_vision` into a Gemma 4 LM
  (per-layer input embeddings, sliding + full attention layers). The image processor sizes each image to at most
  `max_soft_tokens` pooled tokens (70 is the least it accepts), keeping the aspect ratio: the count follows the image.
  The processor replaces `<|image|>` with `<|image>` + n x `<|image|>` + `<image|>` and the model takes
  `mm_token_type_ids` (1 on the image tokens). It holds an audio feature extractor (numpy) and a video processor
  (torchvision): without torchvision the builder writes the files `save_pretrained` would write.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    ChameleonConfig,
    ChameleonForConditionalGeneration,
    ChameleonImageProcessorPil,
    ChameleonProcessor,
    ChameleonVQVAEConfig,
    CohereCompassConfig,
    Emu3Config,
    Emu3ForConditionalGeneration,
    Emu3ImageProcessor,
    Emu3Processor,
    Emu3VQVAEConfig,
    Gemma4AudioFeatureExtractor,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessorPil,
    CohereCompassForConditionalGeneration,
    CohereCompassImageProcessorPil,
    Cosmos3EdgeConfig,
    Cosmos3EdgeForConditionalGeneration,
    Cosmos3EdgeImageProcessorPil,
    GenerationConfig,
)

from .tiny_families import (
    QWEN2_VL_PIXELS,
    QWEN2_VL_VISION,
    TINY_LM,
    TINY_VISION,
    LLAVA_TEMPLATE,
    save_checkpoint,
    qwen_tokenizer,
    save_processor_files,
    special_ids,
)
from .tiny_families_gemma_smol import GEMMA_LM, gemma_tokenizer
from .tiny_families_llava_like import save_with_video_processor, family_tokenizer
from .tiny_families_qwen_like import QWEN3_VL_TEMPLATE

__all__ = ["BUILDERS", "make_tiny_chameleon", "make_tiny_cohere_compass", "make_tiny_cosmos3_edge", "make_tiny_emu3",
           "make_tiny_gemma4"]

HEAD_DIM = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
MROPE_SECTIONS = [HEAD_DIM // 8, 3 * HEAD_DIM // 16, 3 * HEAD_DIM // 16]
"""M-RoPE's (temporal, height, width) shares of the head_dim / 2 rotary frequencies."""
QWEN_SIZE = {"shortest_edge": QWEN2_VL_PIXELS["min_pixels"], "longest_edge": QWEN2_VL_PIXELS["max_pixels"]}
"""The pixel-count bounds of Qwen2-VL-style image processors, as a `size`."""

# ------------------------------------------------------------------------------------------------ CohereCompass

# The Hub checkpoint's chat template is neither installed with transformers nor reachable offline: this one writes
# Cohere's turn tokens (as Command A Vision / Aya Vision, tests/tiny_families_llava_like.py) and, for an image part,
# the `<|VISION_START|><|IMAGE_PAD|><|VISION_END|>` wrapper CohereCompassProcessor expects the template to write.
COHERE_COMPASS_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}"
    "<|START_OF_TURN_TOKEN|>{{ message.role | replace('user', '<|USER_TOKEN|>') "
    "| replace('assistant', '<|CHATBOT_TOKEN|>') | replace('system', '<|SYSTEM_TOKEN|>') }}"
    "{%- if message.content is string -%}{{ message.content }}{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' -%}<|VISION_START|><|IMAGE_PAD|><|VISION_END|>"
    "{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|END_OF_TURN_TOKEN|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{%- endif -%}"
)
COHERE_COMPASS_TOKENS = ["<BOS_TOKEN>", "<PAD>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
                         "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|VISION_START|>", "<|VISION_END|>",
                         "<|VIDEO_PAD|>"]


def make_tiny_cohere_compass(out: Path, texts: list[str]) -> Path:
    """CohereCompassForConditionalGeneration (CohereLabs/North-Micro-Vision-Instruct layout): Qwen3-VL tower, Cohere2
    LM."""
    tokenizer = family_tokenizer(texts, "<|IMAGE_PAD|>", COHERE_COMPASS_TOKENS, bos="<BOS_TOKEN>",
                           eos="<|END_OF_TURN_TOKEN|>", pad="<PAD>")
    token = tokenizer.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": MROPE_SECTIONS, "mrope_interleaved": True}
    text = dict(TINY_LM, vocab_size=len(tokenizer), head_dim=HEAD_DIM, layer_types=["full_attention"] * 2,
                rope_parameters={"full_attention": rope}, **special_ids(tokenizer))
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TINY_LM["hidden_size"],
                  patch_size=QWEN2_VL_VISION["patch_size"], temporal_patch_size=QWEN2_VL_VISION["temporal_patch_size"],
                  spatial_merge_size=QWEN2_VL_VISION["merge_size"], num_position_embeddings=16,
                  deepstack_visual_indexes=[])
    config = CohereCompassConfig(text_config=text, vision_config=vision, image_token_id=token("<|IMAGE_PAD|>"),
                                 video_token_id=token("<|VIDEO_PAD|>"),
                                 vision_start_token_id=token("<|VISION_START|>"),
                                 vision_end_token_id=token("<|VISION_END|>"))
    torch.manual_seed(0)
    model = CohereCompassForConditionalGeneration(config)
    image_processor = CohereCompassImageProcessorPil(**QWEN2_VL_VISION, **QWEN2_VL_PIXELS)
    video = {"video_processor_type": "CohereCompassVideoProcessor", **QWEN2_VL_VISION, "size": QWEN_SIZE}
    return save_with_video_processor(out, model, GenerationConfig(**special_ids(tokenizer)), "CohereCompassProcessor",
                                      image_processor, tokenizer, COHERE_COMPASS_TEMPLATE, {}, video)


# ------------------------------------------------------------------------------------------------- Cosmos3-Edge

def make_tiny_cosmos3_edge(out: Path, texts: list[str]) -> Path:
    """Cosmos3EdgeForConditionalGeneration (nvidia/Cosmos3-Edge layout): SigLIP2-style tower, 2x2 patch merger,
    Llama-like LM with M-RoPE."""
    tokenizer = qwen_tokenizer(texts)
    ids = dict(bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": MROPE_SECTIONS}
    text = dict(TINY_LM, vocab_size=len(tokenizer), head_dim=HEAD_DIM, rope_parameters=rope, **ids)
    vision = dict(TINY_VISION, num_patches=16)  # a 4x4 grid of learned positions
    del vision["image_size"]
    token = tokenizer.convert_tokens_to_ids
    config = Cosmos3EdgeConfig(text_config=text, vision_config=vision, projector_hidden_size=64,
                               image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
                               vision_start_token_id=token("<|vision_start|>"),
                               vision_end_token_id=token("<|vision_end|>"))
    torch.manual_seed(0)
    model = Cosmos3EdgeForConditionalGeneration(config)
    single_frame = dict(QWEN2_VL_VISION, temporal_patch_size=1)
    image_processor = Cosmos3EdgeImageProcessorPil(**single_frame, size=QWEN_SIZE)
    video = {"video_processor_type": "Cosmos3EdgeVideoProcessor", **single_frame, "size": QWEN_SIZE}
    return save_with_video_processor(out, model, GenerationConfig(**ids), "Cosmos3EdgeProcessor", image_processor,
                                      tokenizer, QWEN3_VL_TEMPLATE, {}, video)


# ---------------------------------------------------------------------------------------------------- Chameleon

VQ_CODES = 16
"""The VQ-VAEs' codebook size (8192 and 32768 on the Hub)."""
VQ_DOWNSAMPLING = dict(base_channels=32, channel_multiplier=[1, 1, 1, 1], num_res_blocks=1)
"""2 ** 3 = 8x: a 32x32 image is a 4x4 grid of codes; 32 channels for the VQ-VAEs' 32-group GroupNorms."""


def _image_code_token(code: int) -> str:
    """The vocabulary's token for a VQ code: its digits spelled A-J (code 12 is `IMGIMGBCZ`)."""
    return "IMGIMG" + "".join(chr(ord("A") + int(digit)) for digit in str(code)) + "Z"


def make_tiny_chameleon(out: Path, texts: list[str]) -> Path:
    """ChameleonForConditionalGeneration (facebook/chameleon-7b layout): VQ-VAE image tokens, 16 an image."""
    image_tokens = ["<racm3:break>", "<eoss>"] + [_image_code_token(code) for code in range(VQ_CODES)]
    tokenizer = family_tokenizer(texts, "<image>", ["<s>", "</s>", "<pad>", "<reserved08706>"] + image_tokens, bos="<s>",
                           eos="</s>", pad="<pad>")
    tokenizer.sep_token = "<reserved08706>"
    vq = ChameleonVQVAEConfig(embed_dim=8, num_embeddings=VQ_CODES, latent_channels=8, resolution=32,
                              attn_resolutions=[], **VQ_DOWNSAMPLING)
    config = ChameleonConfig(**TINY_LM, vocab_size=len(tokenizer), vq_config=vq,
                             vocabulary_map=tokenizer.get_vocab(), **special_ids(tokenizer))
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(config)
    image_processor = ChameleonImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = ChameleonProcessor(image_processor, tokenizer, image_seq_length=(32 // 8) ** 2)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# --------------------------------------------------------------------------------------------------------- Emu3

EMU3_TOKENS = {"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
               "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>"}
"""The tokenizer's named tokens Emu3Processor reads; `<|extra_200|>` ends each row of image codes."""


def make_tiny_emu3(out: Path, texts: list[str]) -> Path:
    """Emu3ForConditionalGeneration (BAAI/Emu3-Chat-hf layout): 3-D VQ-VAE image tokens, their count set by the
    image's size."""
    codes = [f"<|visual token {code:06d}|>" for code in range(VQ_CODES)]
    specials = ["<|extra_203|>", "<|extra_204|>", "<|endoftext|>", "<|extra_200|>"] + list(EMU3_TOKENS.values())[1:]
    tokenizer = family_tokenizer(list(texts) + ["USER: ASSISTANT:"], "<image>", specials + codes, eos="<|extra_204|>",
                           pad="<|endoftext|>", named={k: v for k, v in EMU3_TOKENS.items() if k != "image_token"})
    tokenizer.bos_token = "<|extra_203|>"  # written by the processor: the tokenizer adds none
    vq = Emu3VQVAEConfig(codebook_size=VQ_CODES, embed_dim=4, latent_channels=4, hidden_size=32,
                         temporal_downsample_factor=4, attn_resolutions=[], **VQ_DOWNSAMPLING)
    text = dict(TINY_LM, vocab_size=len(tokenizer), attention_dropout=0.0, **special_ids(tokenizer))
    config = Emu3Config(vq_config=vq, text_config=text, vocabulary_map=tokenizer.get_vocab())
    torch.manual_seed(0)
    model = Emu3ForConditionalGeneration(config)
    image_processor = Emu3ImageProcessor(min_pixels=32 * 32, max_pixels=64 * 64, spatial_factor=8)
    # Emu3-Chat-hf's template: transformers' conversion script calls it "almost same as llava-1.5 vicuna"; LLaVA-1.5's
    processor = Emu3Processor(image_processor, tokenizer, chat_template=LLAVA_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# ------------------------------------------------------------------------------------------------------ Gemma 4

# The Hub checkpoints' template (with system turns, tools and a thinking switch) is not available offline: this one
# writes the turns and image placeholder of Gemma 4's prompt format (ai.google.dev/gemma/docs/core/
# prompt-formatting-gemma4): `<|turn>user\n...<turn|>\n`, `model` for the assistant, BOS first.
GEMMA4_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|turn>' + ('model' if message.role == 'assistant' else message.role) + '\\n' }}"
    "{% if message.content is string %}{{ message.content | trim }}{% else %}{% for item in message.content %}"
    "{% if item.type == 'image' %}{{ '<|image|>' }}{% elif item.type == 'text' %}{{ item.text | trim }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<turn|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\\n' }}{% endif %}"
)
GEMMA4_IMAGES = dict(patch_size=8, pooling_kernel_size=2, max_soft_tokens=70)
"""8x8 patches pooled 2x2: at most 70 image tokens (280 patches) an image."""


def make_tiny_gemma4(out: Path, texts: list[str]) -> Path:
    """Gemma4ForConditionalGeneration (google/gemma-4-*-it layout, no audio tower): up to 70 image tokens."""
    # The audio tokens too: without them the processor refuses every call (transformers 5.25: `audio is not None and
    # no audio_token or no boa_token or no eoa_token`, without parentheses)
    named = dict(boi_token="<|image>", eoi_token="<image|>", image_token="<|image|>", boa_token="<|audio>",
                 eoa_token="<audio|>", audio_token="<|audio|>")
    tokenizer = gemma_tokenizer(list(texts) + ["user\nmodel\n"], ["<|turn>", "<turn|>"] + list(named.values()),
                                 **named)
    token = tokenizer.convert_tokens_to_ids
    ids = special_ids(tokenizer)
    text = dict(GEMMA_LM, vocab_size=len(tokenizer), vocab_size_per_layer_input=len(tokenizer),
                hidden_size_per_layer_input=8, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                global_head_dim=GEMMA_LM["head_dim"], **ids)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=16, position_embedding_size=64, **GEMMA4_IMAGES)
    del vision["max_soft_tokens"]
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None, boi_token_id=token("<|image>"),
                          eoi_token_id=token("<image|>"), image_token_id=token("<|image|>"),
                          video_token_id=None, boa_token_id=token("<|audio>"), eoa_token_index=token("<audio|>"),
                          audio_token_id=token("<|audio|>"))
    torch.manual_seed(0)
    model = Gemma4ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**dict(ids, eos_token_id=[ids["eos_token_id"], token("<turn|>")]))
    model.save_pretrained(out)
    image_processor = Gemma4ImageProcessorPil(**GEMMA4_IMAGES)
    video = {"video_processor_type": "Gemma4VideoProcessor", **GEMMA4_IMAGES}
    save_processor_files(Path(out), "Gemma4Processor", image_processor, tokenizer, GEMMA4_TEMPLATE, video,
                         feature_extractor=json.loads(Gemma4AudioFeatureExtractor().to_json_string()),
                         image_seq_length=GEMMA4_IMAGES["max_soft_tokens"])
    return Path(out)


BUILDERS = {"cohere_compass": make_tiny_cohere_compass, "cosmos3_edge": make_tiny_cosmos3_edge,
            "chameleon": make_tiny_chameleon, "emu3": make_tiny_emu3, "gemma4": make_tiny_gemma4}
