"""Tiny random checkpoints of OCR and other image-text families (GOT-OCR2, PP-Chart2Table, Qianfan-OCR, Ovis2,
Ovis2.5, Janus, Aria, LightOnOCR, DeepSeek-OCR-2), built offline. Same contract as tests/tiny_families.py:
`make_tiny_<family>(out, texts)` saves a random float32 model and its real processor class to `out`, laid out like
the family's Hub checkpoints, with the family's chat template where those have one.

Quirks worth knowing (transformers 5.x):
- GOT-OCR2: SAM ViT tower with a neck, then two stride-2 convolutions and a linear (`model.multi_modal_projector`)
  into a Qwen2 LM. The processor writes `num_image_tokens` `<imgpad>` per tile (256: a class attribute that neither
  `__init__` takes nor processor_config.json keeps), so the tower's grid must be 64x64 (16x16 after the
  convolutions): here 64x64 pixels in 1x1 patches. With `text=None` the processor lays out GOT's own prompt
  (ChatML, a fixed system text, `<img>` + tokens + `</img>`, "OCR: "); stepfun-ai/GOT-OCR-2.0-hf has no chat
  template. The image processor (the GotOcr2 one InternVL and Aya Vision share) returns `num_patches`, which the
  processor drops (`unused_input_names`).
- PP-Chart2Table: GOT-OCR2's architecture (`GotOcr2ForConditionalGeneration` under its own config type) with a bare
  processor: `PPChart2TableProcessor` has no image token and expands nothing, so a text must already hold the 256
  `<imgpad>` of each image (the Hub checkpoint's chat template writes them).
- Qianfan-OCR: InternVL's layout (InternViT-like tower, pixel shuffle by 0.5, a Qwen3 LM, GotOcr2 tiling: 64x64 ->
  4 tiles + a thumbnail, 4 tokens each), but the text's placeholder is the processor's `image_placeholder_token`
  (`<image>`, not a token), which it replaces with `<img>` + `image_seq_length` x `<IMG_CONTEXT>` per tile + `</img>`;
  `processor.image_token` is `<IMG_CONTEXT>`, the token the model fills. Tiling is a processor default
  (`images_kwargs = {"crop_to_patches": True}`), as for InternVL.
- Ovis2: the text's `<image>` is a plain string, not a token (the Hub tokenizer splits it into `<`, `image`, `>`), so
  `processor.image_token_id` is None; the processor replaces it with `<IMG_START>` + `image_seq_length` x
  `<IMG_ATOM>` (the token the model fills, `config.image_token_id`) + `<IMG_GRID>` (+ the tiles' atoms between
  `<IMG_COL>` / `<IMG_ROW>` when an image is tiled) + `<IMG_END>`. The tower ends in a "visual tokenizer" head (a
  softmax over `vision_config.vocab_size` visual words); `model.visual_embeddings_table` embeds those probabilities,
  and its last rows embed the five indicator tokens (`config.visual_indicator_token_ids`). The processor drops the
  image processor's `grids`.
- Ovis2.5: a SigLIP2-NaViT-like tower (native resolution, axial 2-D rope, patches merged 2x2 as in Qwen2-VL: here
  patch 8, so 4..16 tokens for 32x32..64x64 pixels); `model.multi_modal_projector` holds the visual tokenizer head and
  the visual embedding table. The processor replaces `<|image_pad|>` with `<ovis_image_start>` + one `<|image_pad|>`
  per merged patch + `<ovis_image_end>` (its start/end tokens are read from tokenizer attributes); the model takes
  flat `pixel_values` and `image_grid_thw`. `Ovis2_5Processor` holds a video processor: without torchvision the
  builder writes the files save_pretrained would write (tests/tiny_families.py `save_processor_files`).
- Janus: SigLIP-like tower, `model.aligner` (two linears) and a Llama LM (DeepSeek-LLM tokenizer: BOS prepended to
  every text), beside an image-generation half (`model.vqmodel`, `model.generation_*`) that text generation never
  runs. The processor replaces `<image_placeholder>` with `<begin_of_image>` + `num_image_tokens` (the tower's grid,
  16 here) x `<image_placeholder>` + `<end_of_image>`, reading the three from tokenizer attributes (`image_token`,
  `boi_token`, `eoi_token`). With `use_default_system_prompt` (on, as on deepseek-community/Janus-Pro-*) its
  `__call__` puts a fixed system text in front of every text in text mode: the chat template does not write it.
- Aria: Idefics3's vision tower, a cross-attention projector with learned queries (`model.multi_modal_projector`,
  its queries picked by the tower's patch count: `projector_patch_to_query_dict`) and a mixture-of-experts LM. The
  processor's own default `max_image_size=980` (a class setting over the image processor's) pads every image to
  980x980, so the tiny tower takes 70x70 patches (14x14 = 196 -> 16 queries); the processor writes
  `size_conversion[980]` (16) `<|img|>` per image. The image processor's `pixel_mask` reaches the model, its
  `num_crops` only the processor.
- LightOnOCR: Mistral3's layout under other names (`model.vision_encoder`: Pixtral, `model.vision_projection`: patch
  merger + MLP) with a Qwen3 LM. `PixtralImageProcessorPil` works without torchvision (unlike `PixtralProcessor`,
  which Mistral3 needs): resized within `size["longest_edge"]`, padded to a multiple of patch x merge; the model takes
  `pixel_values` and `image_sizes`. The processor writes one `<|image_pad|>` per merged patch (no row breaks):
  48x40 -> 48x48 pixels -> 3x3 = 9 tokens.
- DeepSeek-OCR-2: SAM ViT (with two stride-2 convolutions down to a 4x smaller grid) feeding a Qwen2-like encoder
  together with learned queries (`model.vision_tower.query_768_resolution` / `query_1024_resolution`: 144 or 256
  of them, picked by the SAM grid's size), whose query outputs `model.multi_modal_projector` (one linear) projects;
  a DeepSeek-MoE LM. Counts are fixed by those query tables, so the tiny SAM takes 1x1 patches: a 64x64 global view
  -> 256 tokens, 48x48 tiles -> 144 each, plus one for the learned `model.view_separator` (a bare parameter). Images
  larger than a tile are also cut into 2..6 tiles (`pixel_values_local`, `num_local_patches`, which the model
  takes too); smaller ones give the global view alone (257 tokens). No chat template: the Hub prompt is
  "<image>\nFree OCR.", as VerboVision's `plain` layout writes it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AriaConfig,
    AriaForConditionalGeneration,
    AriaImageProcessorPil,
    AriaProcessor,
    AriaTextConfig,
    DeepseekOcr2Config,
    DeepseekOcr2ForConditionalGeneration,
    DeepseekOcr2ImageProcessorPil,
    DeepseekOcr2Processor,
    GenerationConfig,
    GotOcr2Config,
    GotOcr2ForConditionalGeneration,
    GotOcr2ImageProcessorPil,
    GotOcr2Processor,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
    LightOnOcrConfig,
    LightOnOcrForConditionalGeneration,
    LightOnOcrProcessor,
    LlamaConfig,
    Ovis2Config,
    Ovis2ForConditionalGeneration,
    Ovis2ImageProcessorPil,
    Ovis2Processor,
    PixtralImageProcessorPil,
    PPChart2TableConfig,
    PPChart2TableImageProcessorPil,
    PPChart2TableProcessor,
    QianfanOCRConfig,
    QianfanOCRForConditionalGeneration,
    QianfanOCRProcessor,
    Qwen2Config,
    Qwen3Config,
)

from verbovision.data.tokenizer import train_bpe_tokenizer

from .tiny_families import QWEN2_VL_PIXELS, TINY_LM, TINY_VISION, save_checkpoint, special_ids
from .tiny_families_llava_like import (
    IMAGENET,
    INTERNVL_IMAGE_TOKENS,
    INTERNVL_TEMPLATE,
    TILE,
    family_tokenizer,
    save_with_video_processor,
)
from .tiny_families_qwen_like import DEEPSEEK_BOS, DEEPSEEK_EOS, QWEN3_VL_TEMPLATE

__all__ = ["BUILDERS", "GOT_IMAGE_TOKENS", "make_tiny_aria", "make_tiny_deepseek_ocr2", "make_tiny_got_ocr2",
           "make_tiny_janus", "make_tiny_lighton_ocr", "make_tiny_ovis2", "make_tiny_ovis2_5",
           "make_tiny_pp_chart2table", "make_tiny_qianfan_ocr"]

GOT_IMAGE_TOKENS = 256
"""`GotOcr2Processor.num_image_tokens`: fixed by the class, so the tiny tower is sized to it."""
GOT_PIXELS = 64
"""The image side: 64x64 one-pixel patches -> 32x32 -> 16x16 = 256 features after the projector's convolutions."""


def _got_tokenizer(texts: list[str]):
    """A byte-level BPE with GOT's specials: ChatML turns, `<imgpad>` (the image token), `<img>` / `</img>`; EOS
    `<|im_end|>` as on GOT-OCR-2.0-hf; no chat template."""
    tokenizer = train_bpe_tokenizer(list(texts) + ["system user assistant OCR: "], "<imgpad>", vocab_size=300)
    tokenizer.add_tokens(["<img>", "</img>"], special_tokens=True)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = None
    return tokenizer


def _got_model(config_class, tokenizer):
    """GOT-OCR2's architecture under `config_class`: tiny SAM tower (a window layer, then a global one), Qwen2 LM."""
    vision = dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                  image_size=GOT_PIXELS, patch_size=1, window_size=8, global_attn_indexes=[1],
                  initializer_range=0.02)  # SAM's default (1e-10) would leave a random tower's features all but zero
    text = dict(TINY_LM, model_type="qwen2", vocab_size=len(tokenizer), **special_ids(tokenizer))
    config = config_class(vision_config=vision, text_config=text, image_seq_length=GOT_IMAGE_TOKENS,
                          image_token_index=tokenizer.convert_tokens_to_ids("<imgpad>"))
    torch.manual_seed(0)
    return GotOcr2ForConditionalGeneration(config)


def _got_generation(tokenizer) -> GenerationConfig:
    return GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


GOT_SIZE = dict(size={"height": GOT_PIXELS, "width": GOT_PIXELS})


def make_tiny_got_ocr2(out: Path, texts: list[str]) -> Path:
    """GotOcr2ForConditionalGeneration (stepfun-ai/GOT-OCR-2.0-hf layout): 256 image tokens per image, no chat
    template."""
    tokenizer = _got_tokenizer(texts)
    processor = GotOcr2Processor(GotOcr2ImageProcessorPil(**GOT_SIZE), tokenizer)
    return save_checkpoint(out, _got_model(GotOcr2Config, tokenizer), processor, _got_generation(tokenizer))


def make_tiny_pp_chart2table(out: Path, texts: list[str]) -> Path:
    """GotOcr2ForConditionalGeneration under PPChart2TableConfig (PaddlePaddle/PP-Chart2Table_safetensors layout), its
    processor expanding no image token."""
    tokenizer = _got_tokenizer(texts)
    processor = PPChart2TableProcessor(PPChart2TableImageProcessorPil(**GOT_SIZE), tokenizer)
    return save_checkpoint(out, _got_model(PPChart2TableConfig, tokenizer), processor, _got_generation(tokenizer))


# -------------------------------------------------------------------------------------------------- Qianfan-OCR

# baidu/Qianfan-OCR's template could not be read here: this is InternVL3-*-hf's ChatML template (the family it is built
# on) writing the processor's `<image>` placeholder where InternVL's writes `<IMG_CONTEXT>`.
QIANFAN_OCR_TEMPLATE = INTERNVL_TEMPLATE.replace("<IMG_CONTEXT>", "<image>")


def make_tiny_qianfan_ocr(out: Path, texts: list[str]) -> Path:
    """QianfanOCRForConditionalGeneration (baidu/Qianfan-OCR layout): InternViT-like tower, pixel-shuffle projector,
    Qwen3 LM; images tiled by the processor (4 tokens per 32x32 tile)."""
    tokenizer = family_tokenizer(list(texts) + ["user assistant"], "<IMG_CONTEXT>", list(INTERNVL_IMAGE_TOKENS.values()),
                           eos="<|im_end|>", named=INTERNVL_IMAGE_TOKENS)
    patch = TINY_VISION["patch_size"]
    vision = dict(TINY_VISION, image_size=[TILE, TILE], patch_size=[patch, patch])
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]  # Qwen3's default is 128
    text = Qwen3Config(**TINY_LM, head_dim=head_dim, vocab_size=len(tokenizer), **special_ids(tokenizer))
    image_seq_length = (TILE // patch) ** 2 // 4  # pixel shuffle by 0.5 in each direction
    config = QianfanOCRConfig(vision_config=vision, text_config=text, downsample_ratio=0.5,
                              image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
                              image_seq_length=image_seq_length)
    torch.manual_seed(0)
    model = QianfanOCRForConditionalGeneration(config)
    image_processor = GotOcr2ImageProcessorPil(size={"height": TILE, "width": TILE}, max_patches=4, **IMAGENET)
    processor = QianfanOCRProcessor(image_processor, tokenizer, image_seq_length=image_seq_length,
                                    chat_template=QIANFAN_OCR_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# -------------------------------------------------------------------------------------------------------- Ovis2

# thisisiron/Ovis2-*-hf's chat template, as transformers' Ovis2 processor tests carry it.
OVIS2_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
OVIS2_INDICATORS = ["<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>"]


def make_tiny_ovis2(out: Path, texts: list[str]) -> Path:
    """Ovis2ForConditionalGeneration (thisisiron/Ovis2-*-hf layout): AIMv2-like tower with a visual-vocabulary head
    (64 visual words here), visual embedding table, Qwen2 LM; 16 `<IMG_ATOM>` per 32x32 tile, up to 4 tiles."""
    tokenizer = family_tokenizer(list(texts) + ["system user assistant You are a helpful assistant."], "<IMG_ATOM>",
                           OVIS2_INDICATORS, eos="<|im_end|>")
    token = tokenizer.convert_tokens_to_ids
    vision = dict(TINY_VISION, vocab_size=64, hidden_stride=1)
    text = Qwen2Config(**TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer))
    config = Ovis2Config(vision_config=vision, text_config=text, image_token_id=token("<IMG_ATOM>"),
                         visual_indicator_token_ids=[token(t) for t in OVIS2_INDICATORS], vocab_size=len(tokenizer),
                         hidden_size=TINY_LM["hidden_size"])
    torch.manual_seed(0)
    model = Ovis2ForConditionalGeneration(config)
    image_processor = Ovis2ImageProcessorPil(size={"height": TILE, "width": TILE}, max_patches=4)
    processor = Ovis2Processor(image_processor, tokenizer, chat_template=OVIS2_TEMPLATE,
                               image_seq_length=(TILE // TINY_VISION["patch_size"]) ** 2)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# ------------------------------------------------------------------------------------------------------ Ovis2.5

# ovis-community/Ovis2.5-*'s template could not be read here: this is Qwen3-VL's (the LM is Qwen3), writing the
# processor's image token alone, since the processor adds the image's start and end tokens itself.
OVIS2_5_TEMPLATE = QWEN3_VL_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>")
OVIS2_5_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                  "image_start_token": "<ovis_image_start>", "image_end_token": "<ovis_image_end>",
                  "video_start_token": "<ovis_video_start>", "video_end_token": "<ovis_video_end>"}
OVIS2_5_PATCHES = dict(patch_size=8, merge_size=2)


def make_tiny_ovis2_5(out: Path, texts: list[str]) -> Path:
    """Ovis2_5ForConditionalGeneration (ovis-community/Ovis2.5-* layout): native-resolution tower, visual tokenizer
    and embedding table as the projector, Qwen3 LM; 4..16 image tokens per image."""
    from transformers import (  # newer than transformers 5.17
        Ovis2_5Config,
        Ovis2_5ForConditionalGeneration,
        Ovis2_5ImageProcessorPil,
    )
    specials = [t for name, t in OVIS2_5_TOKENS.items() if name != "image_token"]
    tokenizer = family_tokenizer(list(texts) + ["system user assistant"], OVIS2_5_TOKENS["image_token"], specials,
                           eos="<|im_end|>", named=OVIS2_5_TOKENS)
    token = tokenizer.convert_tokens_to_ids
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  patch_size=OVIS2_5_PATCHES["patch_size"], spatial_merge_size=OVIS2_5_PATCHES["merge_size"],
                  image_size=TILE, window_size=16, vocab_size=64, max_position_embeddings=64,
                  rope_parameters={"rope_type": "axial", "rope_theta": 10000.0})
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    text = Qwen3Config(**TINY_LM, head_dim=head_dim, vocab_size=len(tokenizer), **special_ids(tokenizer))
    ids = {f"{name}_id": token(t) for name, t in OVIS2_5_TOKENS.items()}
    config = Ovis2_5Config(vision_config=vision, text_config=text, **ids)
    torch.manual_seed(0)
    model = Ovis2_5ForConditionalGeneration(config)
    size = {"shortest_edge": QWEN2_VL_PIXELS["min_pixels"], "longest_edge": QWEN2_VL_PIXELS["max_pixels"]}
    image_processor = Ovis2_5ImageProcessorPil(size=size, **OVIS2_5_PATCHES)
    video = {"video_processor_type": "Ovis2_5VideoProcessor", "size": size, **OVIS2_5_PATCHES}
    return save_with_video_processor(out, model, GenerationConfig(**special_ids(tokenizer)), "Ovis2_5Processor",
                                      image_processor, tokenizer, OVIS2_5_TEMPLATE, {}, video)


# -------------------------------------------------------------------------------------------------------- Janus

# deepseek-community/Janus-Pro-*'s chat template, as transformers' models/janus/convert_janus_weights_to_hf.py writes
# it: "<|User|>: " / "<|Assistant|>:" turns, no system text (the processor adds it), images on lines of their own.
JANUS_TEMPLATE = (
    "{%set seps=['\n\n','<\uff5cend\u2581of\u2581sentence\uff5c>']%}{%set i=0%}{%for message in messages%}"
    "{%if message['role']|lower=='user'%}<|User|>: {%elif message['role']|lower=='assistant'%}<|Assistant|>:"
    "{%if not (loop.last and not add_generation_prompt and message['content'][0]['type']=='text' and "
    "message['content'][0]['text']=='')%} {%endif%}{%else%}{{message['role'].capitalize()}}: {%endif%}"
    "{%for content in message['content']%}{%if content['type']=='image'%}{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>{%if not loop.last%}{{'\n'}}{%endif%}{%elif content['type']=='text'%}"
    "{%set text=content['text']%}{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}{{' '+text}}{%else%}{{text}}"
    "{%endif%}{%endif%}{%endfor%}{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}{{seps[0]}}{%else%}{{seps[1]}}{%endif%}{%endif%}{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)
JANUS_PAD = "<\uff5c\u2581pad\u2581\uff5c>"
JANUS_IMAGE_TOKENS = {"boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"}


def make_tiny_janus(out: Path, texts: list[str]) -> Path:
    """JanusForConditionalGeneration (deepseek-community/Janus-Pro-* layout): SigLIP-like tower, aligner, Llama LM,
    and a tiny VQ-VAE image-generation half; 16 image tokens per image."""
    tokenizer = family_tokenizer(list(texts) + ["<|User|>: <|Assistant|>: You are a helpful language and vision assistant."],
                           "<image_placeholder>", [DEEPSEEK_BOS, DEEPSEEK_EOS, JANUS_PAD, *JANUS_IMAGE_TOKENS.values()],
                           bos=DEEPSEEK_BOS, eos=DEEPSEEK_EOS, pad=JANUS_PAD, named=JANUS_IMAGE_TOKENS)
    image_tokens = (TILE // TINY_VISION["patch_size"]) ** 2
    vision = dict(TINY_VISION, projection_dim=TINY_LM["hidden_size"], depth=2, num_image_tokens=image_tokens)
    vision["mlp_ratio"] = vision.pop("intermediate_size") // vision["hidden_size"]
    # The image-generation half, as small as its group norms (32 groups) allow
    vq = dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 2],
              num_res_blocks=1, num_patches=4, projection_dim=TINY_LM["hidden_size"],
              image_token_embed_dim=TINY_LM["hidden_size"], num_hidden_layers=1)
    text = LlamaConfig(**TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer))
    config = JanusConfig(vision_config=vision, vq_config=vq, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"))
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(config)
    image_processor = JanusImageProcessorPil(size={"height": TILE, "width": TILE}, min_size=TINY_VISION["patch_size"])
    processor = JanusProcessor(image_processor, tokenizer, chat_template=JANUS_TEMPLATE, use_default_system_prompt=True,
                               num_image_tokens=image_tokens)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# --------------------------------------------------------------------------------------------------------- Aria

# rhymes-ai/Aria's chat template, as transformers' Aria processor tests carry it: ChatML, each image as
# <fim_prefix><|img|><fim_suffix>.
ARIA_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% elif message['content'] is iterable %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% elif item['type'] == 'image' %}"
    "<fim_prefix><|img|><fim_suffix>{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ARIA_QUERIES = {490: 4, 980: 16}
"""Image tokens per image side (the processor's `size_conversion`); the tower sees (side / 70)**2 patches."""


def make_tiny_aria(out: Path, texts: list[str]) -> Path:
    """AriaForConditionalGeneration (rhymes-ai/Aria layout): Idefics3 tower, query projector, MoE LM (2 experts,
    1 shared); 16 image tokens per image."""
    tokenizer = family_tokenizer(list(texts) + ["user assistant"], "<|img|>", ["<fim_prefix>", "<fim_suffix>"],
                           eos="<|im_end|>")
    patch = 70  # the tower sees 980x980 pixels (see above)
    vision = dict(TINY_VISION, model_type="idefics3_vision", image_size=max(ARIA_QUERIES), patch_size=patch)
    text = AriaTextConfig(**TINY_LM, vocab_size=len(tokenizer), moe_num_experts=2, moe_topk=1,
                          moe_num_shared_experts=1, **special_ids(tokenizer))
    config = AriaConfig(vision_config=vision, text_config=text,
                        image_token_index=tokenizer.convert_tokens_to_ids("<|img|>"),
                        projector_patch_to_query_dict={(side // patch) ** 2: n for side, n in ARIA_QUERIES.items()})
    torch.manual_seed(0)
    model = AriaForConditionalGeneration(config)
    image_processor = AriaImageProcessorPil(max_image_size=max(ARIA_QUERIES), min_image_size=min(ARIA_QUERIES))
    processor = AriaProcessor(image_processor, tokenizer, chat_template=ARIA_TEMPLATE, size_conversion=ARIA_QUERIES)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# --------------------------------------------------------------------------------------------------- LightOnOCR

# lightonai/LightOnOCR-*'s template could not be read here: this is Qwen3-VL's (the LM is Qwen3), writing the
# processor's image token alone, since the processor writes no start or end token.
LIGHTON_OCR_TEMPLATE = OVIS2_5_TEMPLATE
LIGHTON_OCR_TOKENS = {"image_break_token": "<|vision_pad|>", "image_end_token": "<|vision_end|>"}


def make_tiny_lighton_ocr(out: Path, texts: list[str]) -> Path:
    """LightOnOcrForConditionalGeneration (lightonai/LightOnOCR-* layout): Pixtral tower, patch-merging projector,
    Qwen3 LM; images within 64x64 pixels, one token per 16x16 (merged 8x8 patches)."""
    tokenizer = family_tokenizer(list(texts) + ["user assistant"], "<|image_pad|>", list(LIGHTON_OCR_TOKENS.values()),
                           eos="<|im_end|>", named=LIGHTON_OCR_TOKENS)
    patch, merge = TINY_VISION["patch_size"], 2
    vision = dict(TINY_VISION, image_size=2 * TILE, head_dim=TINY_VISION["hidden_size"] // 2)
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    text = Qwen3Config(**TINY_LM, head_dim=head_dim, vocab_size=len(tokenizer), **special_ids(tokenizer))
    config = LightOnOcrConfig(vision_config=vision, text_config=text, spatial_merge_size=merge,
                              image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    torch.manual_seed(0)
    model = LightOnOcrForConditionalGeneration(config)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 2 * TILE}, patch_size=patch * merge)
    processor = LightOnOcrProcessor(image_processor, tokenizer, patch_size=patch, spatial_merge_size=merge,
                                    chat_template=LIGHTON_OCR_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# ----------------------------------------------------------------------------------------------- DeepSeek-OCR-2

DEEPSEEK_OCR2_GLOBAL, DEEPSEEK_OCR2_TILE = 64, 48
"""Pixels of the global view and of a tile: with 1x1 patches and a 4x smaller grid, 16x16 = 256 and 12x12 = 144
features, the sizes of the tower's query tables."""


def make_tiny_deepseek_ocr2(out: Path, texts: list[str]) -> Path:
    """DeepseekOcr2ForConditionalGeneration (deepseek-community/DeepSeek-OCR-2 layout): SAM + query encoder tower,
    linear projector, DeepSeek-MoE LM (a dense layer, then a 2-expert one); no chat template."""
    tokenizer = family_tokenizer(list(texts) + ["Free OCR."], "<image>", [DEEPSEEK_BOS, DEEPSEEK_EOS], bos=DEEPSEEK_BOS,
                           eos=DEEPSEEK_EOS)
    downsample = 4  # the SAM projection's two stride-2 convolutions
    sam = dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
               image_size=DEEPSEEK_OCR2_GLOBAL, patch_size=1, window_size=8, global_attn_indexes=[1],
               downsample_channels=[32, 32], initializer_range=0.02)  # SAM's default (1e-10): features all but zero
    text = dict(TINY_LM, vocab_size=len(tokenizer), n_routed_experts=2, num_experts_per_tok=1, n_shared_experts=1,
                moe_intermediate_size=32, mlp_layer_types=["dense", "sparse"], **special_ids(tokenizer))
    config = DeepseekOcr2Config(vision_config=dict(sam_config=sam, encoder_config=dict(TINY_LM)), text_config=text,
                                image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = DeepseekOcr2ForConditionalGeneration(config)
    square = {"height": DEEPSEEK_OCR2_GLOBAL, "width": DEEPSEEK_OCR2_GLOBAL}
    image_processor = DeepseekOcr2ImageProcessorPil(size=square, tile_size=DEEPSEEK_OCR2_TILE)
    processor = DeepseekOcr2Processor(image_processor, tokenizer, patch_size=1, downsample_ratio=downsample)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


BUILDERS = {
    "got_ocr2": make_tiny_got_ocr2,
    "pp_chart2table": make_tiny_pp_chart2table,
    "qianfan_ocr": make_tiny_qianfan_ocr,
    "ovis2": make_tiny_ovis2,
    "ovis2_5": make_tiny_ovis2_5,
    "janus": make_tiny_janus,
    "aria": make_tiny_aria,
    "lighton_ocr": make_tiny_lighton_ocr,
    "deepseek_ocr2": make_tiny_deepseek_ocr2,
}
"""Builder per config.model_type."""
