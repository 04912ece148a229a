"""Tiny random checkpoints of the Qwen-VL-like and DeepSeek-VL families, built offline (as tests/tiny_families.py).

Each `make_tiny_*(out, texts)` saves a random float32 model and its processor to `out`, laid out like the family's
checkpoints on the Hub, so that `AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` (with torchvision, for the three families whose processor holds a video
processor) load them with no `trust_remote_code`.

Quirks worth knowing (transformers 5.x):
- Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision-1.5: Qwen2-VL's image processor (here patch 8, merge 2, so 4..16 image tokens
  for 32x32..64x64 pixels) and Qwen2-VL's token expansion: `<|image_pad|>` becomes (grid_t*grid_h*grid_w) / merge**2
  copies; the model takes flat `pixel_values` (patches, 3*temporal*8*8) and `image_grid_thw`. The processor holds a
  video processor, so without torchvision it can be neither built nor loaded and the builders write the files
  `save_pretrained` would write (tests/tiny_families.py `save_with_video_processor`).
- Qwen2.5-VL: as Qwen2-VL, plus window attention in the vision tower (`window_size` in pixels: here 2x2 merged tokens
  per window, full attention in `fullatt_block_indexes`); `mm_token_type_ids` (required with images) drive M-RoPE.
- Qwen3-VL: learned vision position embeddings (`num_position_embeddings`, bilinearly interpolated to each grid), and
  DeepStack: the vision layers in `deepstack_visual_indexes` each have their own merger (`model.visual.
  deepstack_merger_list`) whose output is added to the hidden states of the first LM layers at the image positions:
  the image features are `pooler_output` plus `deepstack_features`. Interleaved M-RoPE; needs `mm_token_type_ids`.
  The Hub chat template has no default system turn.
- LLaVA-OneVision-1.5: RICE-ViT tower with a CLS token per image and 2-D rope, images as single frames (temporal patch
  1: the patch embedding is a Conv2d); a Qwen3 LM with plain 1-D positions (its forward names `mm_token_type_ids` but
  nothing reads them). transformers maps the model type to `Exaone4_5_Processor` (Qwen2.5-VL's processor without
  `mm_token_type_ids`).
- DeepSeek-VL: SigLIP tower, every patch a token (here 32/8 = 4x4 = 16), projected by `model.aligner` (two linears);
  the processor replaces each `<image_placeholder>` with `num_image_tokens` copies (a fixed count, saved in
  processor_config.json) and pads images to a square. The tokenizer prepends BOS, the chat template does not.
- DeepSeek-VL-Hybrid (deepseek-vl-7b): as DeepSeek-VL plus a SAM high-resolution branch: the image processor also
  returns `high_res_pixel_values` (here 64x64), `model.high_res_vision_model` (SAM ViT) -> `model.high_res_vision_neck`
  (convs on the first global-attention layer's output, scaled by the parameter `model.high_res_vision_alpha`) and
  `model.high_res_vision_proj` (strided convs down to SigLIP's grid); `model.aligner` concatenates both projected
  branches per token. Same token count as SigLIP's grid.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import processors
from transformers import (
    DeepseekVLConfig,
    DeepseekVLForConditionalGeneration,
    DeepseekVLHybridConfig,
    DeepseekVLHybridForConditionalGeneration,
    DeepseekVLHybridImageProcessorPil,
    DeepseekVLHybridProcessor,
    DeepseekVLImageProcessorPil,
    DeepseekVLProcessor,
    GenerationConfig,
    LlamaConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SamVisionConfig,
    SiglipVisionConfig,
)

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
    save_with_video_processor,
)

__all__ = ["BUILDERS", "make_tiny_deepseek_vl", "make_tiny_deepseek_vl_hybrid", "make_tiny_llava_onevision1_5",
           "make_tiny_qwen2_5_vl", "make_tiny_qwen3_vl"]

QWEN2_VL_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                   "<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n")
QWEN_KEYS = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"}
"""The Qwen2-VL chat template's prompt for one image and "Describe.", and what the Qwen processors return."""


# Qwen/Qwen3-VL-*-Instruct's chat template (tokenizer_config.json / chat_template.json of the Hub checkpoints, as
# published with the model): no default system turn, typed content parts, tool calls.
QWEN3_VL_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with \
function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\
\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# deepseek-community/deepseek-vl-1.3b-chat's (and -7b-chat's) chat template, as transformers' DeepSeek-VL processor
# tests carry it: a fixed system text, "User: " / "Assistant:" turns, <image_placeholder> for image parts.
DEEPSEEK_VL_TEMPLATE = (
    "{% set seps = ['\n\n', '<\uff5cend\u2581of\u2581sentence\uff5c>'] %}{% set i = 0 %}You are a helpful language and "
    "vision assistant. You are able to understand the visual content that the user provides, and assist the user "
    "with a variety of tasks using natural language.\n\n{% for message in messages %}"
    "{% if message['role']|lower == 'user' %}User: {% elif message['role']|lower == 'assistant' %}Assistant:"
    "{% if not (loop.last and not add_generation_prompt and message['content'][0]['type']=='text' and "
    "message['content'][0]['text']=='') %} {% endif %}{% else %}{{ message['role'].capitalize() }}: {% endif %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image_placeholder>"
    "{% elif content['type'] == 'text' %}{% set text = content['text'] %}"
    "{% if loop.first %}{% set text = text.lstrip() %}{% endif %}{% if loop.last %}{% set text = text.rstrip() %}"
    "{% endif %}{% if not loop.first and message['content'][loop.index0-1]['type'] == 'text' %}{{ ' ' + text }}"
    "{% else %}{{ text }}{% endif %}{% endif %}{% endfor %}{% if not loop.last or add_generation_prompt %}"
    "{% if message['role']|lower == 'user' %}{{ seps[0] }}{% else %}{{ seps[1] }}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEEPSEEK_BOS, DEEPSEEK_EOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"


def qwen_ids(tokenizer) -> dict:
    token = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
                vision_start_token_id=token("<|vision_start|>"), vision_end_token_id=token("<|vision_end|>"))


def qwen_generation(tokenizer) -> GenerationConfig:
    return GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def qwen2_video(**settings) -> dict:
    """Qwen2VLVideoProcessor's settings matching the tiny image processor (its own defaults fill in the rest)."""
    size = {"shortest_edge": QWEN2_VL_PIXELS["min_pixels"], "longest_edge": QWEN2_VL_PIXELS["max_pixels"]}
    return {"video_processor_type": "Qwen2VLVideoProcessor", **QWEN2_VL_VISION, "size": size, **settings}


# --------------------------------------------------------------------------------------------------- Qwen2.5-VL


def make_tiny_qwen2_5_vl(out: Path, texts: list[str]) -> Path:
    """Qwen2_5_VLForConditionalGeneration (Qwen/Qwen2.5-VL-*-Instruct layout): window attention in the vision tower."""
    tokenizer = qwen_tokenizer(texts)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TINY_LM["hidden_size"],
                  patch_size=QWEN2_VL_VISION["patch_size"], temporal_patch_size=QWEN2_VL_VISION["temporal_patch_size"],
                  spatial_merge_size=QWEN2_VL_VISION["merge_size"],
                  window_size=32, fullatt_block_indexes=[1])  # 32 pixels = 2x2 merged tokens per window
    config = Qwen2_5_VLConfig(text_config=mrope_text_config(len(tokenizer), ids), vision_config=vision,
                              **qwen_ids(tokenizer))
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessorPil(**QWEN2_VL_VISION, **QWEN2_VL_PIXELS)
    # Qwen2.5-VL-*-Instruct ship Qwen2-VL's chat template unchanged.
    return save_with_video_processor(out, model, qwen_generation(tokenizer), "Qwen2_5_VLProcessor", image_processor,
                                     tokenizer, QWEN2_VL_TEMPLATE, qwen2_video())


# --------------------------------------------------------------------------------------------------- Qwen3-VL


QWEN3_VL_DEEPSTACK = dict(deepstack_visual_indexes=[0])  # vision layer 0's merged features go into LM layer 0


def make_tiny_qwen3_vl(out: Path, texts: list[str], config_class=Qwen3VLConfig,
                       model_class=Qwen3VLForConditionalGeneration, text: dict | None = None,
                       vision: dict = QWEN3_VL_DEEPSTACK, chat_template: str = QWEN3_VL_TEMPLATE) -> Path:
    """Qwen3VLForConditionalGeneration (Qwen/Qwen3-VL-*-Instruct layout): DeepStack features into the first LM layer.

    The families built on Qwen3-VL's tower and processor (Qwen3-VL-MoE, Qwen3.5...) pass their own config and model
    classes, `text` settings beyond Qwen3-VL's, `vision` settings beyond the shared tower, and chat template."""
    tokenizer = qwen_tokenizer(texts)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    text_config = mrope_text_config(len(tokenizer), ids, mrope_interleaved=True)
    text_config["head_dim"] = head_dim  # Qwen3's default is 128, not hidden / heads
    tower = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TINY_LM["hidden_size"],
                 patch_size=QWEN2_VL_VISION["patch_size"], temporal_patch_size=QWEN2_VL_VISION["temporal_patch_size"],
                 spatial_merge_size=QWEN2_VL_VISION["merge_size"],
                 num_position_embeddings=16)  # a 4x4 grid of learned positions, interpolated to each image's grid
    config = config_class(text_config={**text_config, **(text or {})}, vision_config={**tower, **vision},
                          **qwen_ids(tokenizer))
    torch.manual_seed(0)
    model = model_class(config)
    half = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])  # Qwen3-VL normalizes to [-1, 1]
    image_processor = Qwen2VLImageProcessorPil(**QWEN2_VL_VISION, **QWEN2_VL_PIXELS, **half)
    video = qwen2_video(video_processor_type="Qwen3VLVideoProcessor", **half)
    return save_with_video_processor(out, model, qwen_generation(tokenizer), "Qwen3VLProcessor", image_processor,
                                     tokenizer, chat_template, video)


# ------------------------------------------------------------------------------------------ LLaVA-OneVision-1.5


def make_tiny_llava_onevision1_5(out: Path, texts: list[str]) -> Path:
    """LlavaOnevision15ForConditionalGeneration (Deep-VLM/LLaVA-OneVision-1.5-*-Instruct-hf layout): RICE-ViT tower,
    Qwen3 LM."""
    # Imported here: transformers 5.17 (the floor) has no LLaVA-OneVision-1.5, and the other builders stand alone.
    from transformers import LlavaOnevision15Config, LlavaOnevision15ForConditionalGeneration

    tokenizer = qwen_tokenizer(texts)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    text = dict(TINY_LM, model_type="qwen3", vocab_size=len(tokenizer), head_dim=head_dim, bos_token_id=None, **ids)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=TINY_LM["hidden_size"],
                  patch_size=QWEN2_VL_VISION["patch_size"], spatial_merge_size=QWEN2_VL_VISION["merge_size"])
    config = LlavaOnevision15Config(text_config=text, vision_config=vision, **qwen_ids(tokenizer))
    torch.manual_seed(0)
    model = LlavaOnevision15ForConditionalGeneration(config)
    single_frame = dict(QWEN2_VL_VISION, temporal_patch_size=1)  # the tower embeds 2-D patches
    image_processor = Qwen2VLImageProcessorPil(**single_frame, **QWEN2_VL_PIXELS)
    # The template: transformers' integration test of the -hf checkpoint decodes "system\nYou are a helpful
    # assistant.\nuser\n..." from input ids <|im_start|> system ... <|vision_start|><|image_pad|>: Qwen2-VL's.
    return save_with_video_processor(out, model, qwen_generation(tokenizer), "Exaone4_5_Processor", image_processor,
                                     tokenizer, QWEN2_VL_TEMPLATE, qwen2_video(**single_frame))


# --------------------------------------------------------------------------------------------------- DeepSeek-VL


def _deepseek_tokenizer(texts: list[str]):
    """A byte-level BPE with DeepSeek-VL's specials: BOS prepended to every text (as its Llama tokenizer does),
    EOS = pad = <｜end▁of▁sentence｜>, `.image_token` <image_placeholder>; no chat template (the processor has
    it)."""
    tokenizer = train_bpe_tokenizer(list(texts) + ["You are a helpful language and vision assistant. User: Assistant:"],
                                    "<image_placeholder>", vocab_size=300)
    tokenizer.add_tokens([DEEPSEEK_BOS, DEEPSEEK_EOS], special_tokens=True)
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = DEEPSEEK_BOS, DEEPSEEK_EOS, DEEPSEEK_EOS
    bos = (DEEPSEEK_BOS, tokenizer.bos_token_id)
    backend = tokenizer.backend_tokenizer
    backend.post_processor = processors.Sequence([
        backend.post_processor,  # byte-level offsets, as train_bpe_tokenizer set them
        processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos]),
    ])
    tokenizer.chat_template = None
    return tokenizer


def _deepseek_text_config(tokenizer) -> LlamaConfig:
    return LlamaConfig(**TINY_LM, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _deepseek_generation(tokenizer) -> GenerationConfig:
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)


SIGLIP_TOKENS = (TINY_VISION["image_size"] // TINY_VISION["patch_size"]) ** 2  # every SigLIP patch is a token: 16
SQUARE_32 = dict(size={"height": TINY_VISION["image_size"], "width": TINY_VISION["image_size"]})


def make_tiny_deepseek_vl(out: Path, texts: list[str]) -> Path:
    """DeepseekVLForConditionalGeneration (deepseek-community/deepseek-vl-1.3b-chat layout): SigLIP, aligner,
    Llama."""
    tokenizer = _deepseek_tokenizer(texts)
    config = DeepseekVLConfig(text_config=_deepseek_text_config(tokenizer),
                              vision_config=SiglipVisionConfig(**TINY_VISION),
                              image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"))
    torch.manual_seed(0)
    model = DeepseekVLForConditionalGeneration(config)
    processor = DeepseekVLProcessor(DeepseekVLImageProcessorPil(**SQUARE_32), tokenizer,
                                    chat_template=DEEPSEEK_VL_TEMPLATE, num_image_tokens=SIGLIP_TOKENS)
    return save_checkpoint(out, model, processor, _deepseek_generation(tokenizer))


def make_tiny_deepseek_vl_hybrid(out: Path, texts: list[str]) -> Path:
    """DeepseekVLHybridForConditionalGeneration (deepseek-community/deepseek-vl-7b-chat layout): a SAM branch at 64x64
    beside SigLIP at 32x32, both reduced to SigLIP's 4x4 grid."""
    tokenizer = _deepseek_tokenizer(texts)
    # SAM's default initializer_range (1e-10) would leave a random branch's features all but zero.
    high_res = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                               mlp_dim=64, image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1],
                               initializer_range=0.02)
    config = DeepseekVLHybridConfig(text_config=_deepseek_text_config(tokenizer),
                                    vision_config=SiglipVisionConfig(**TINY_VISION), high_res_vision_config=high_res,
                                    image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"))
    torch.manual_seed(0)
    model = DeepseekVLHybridForConditionalGeneration(config)
    with torch.no_grad():  # initialized to 0, which would cut the global-attention branch off (trained: non-zero)
        model.model.high_res_vision_alpha.fill_(0.5)
    image_processor = DeepseekVLHybridImageProcessorPil(**SQUARE_32, high_res_size={"height": 64, "width": 64})
    processor = DeepseekVLHybridProcessor(image_processor, tokenizer, chat_template=DEEPSEEK_VL_TEMPLATE,
                                          num_image_tokens=SIGLIP_TOKENS)
    return save_checkpoint(out, model, processor, _deepseek_generation(tokenizer))


BUILDERS = {
    "qwen2_5_vl": make_tiny_qwen2_5_vl,
    "qwen3_vl": make_tiny_qwen3_vl,
    "llava_onevision1_5": make_tiny_llava_onevision1_5,
    "deepseek_vl": make_tiny_deepseek_vl,
    "deepseek_vl_hybrid": make_tiny_deepseek_vl_hybrid,
}
