"""Tiny random checkpoints of Gemma 3, PaliGemma and SmolVLM (SmolVLM2), built offline like tests/tiny_families.py.

Same contract there: `make_tiny_*(out, texts)` saves a random float32 model and its real processor classes to `out`,
laid out like the family's Hub checkpoints, loadable by `AutoModelForImageTextToText` / `AutoProcessor` with no
`trust_remote_code`. Gemma 3 and PaliGemma get a Gemma-style tokenizer (`GemmaTokenizer`: BPE with byte fallback,
`<bos>` added to every text, pad 0 / eos 1 / bos 2 as on the Hub) trained on `texts`; SmolVLM the Idefics3 one.

Quirks worth knowing (transformers 5.x):
- Gemma 3: the text's image token is `<start_of_image>` (the processor's `image_token`, `image_token_id` and the chat
  template's image part); the processor replaces each with `\\n\\n<start_of_image>` + `image_seq_length` x
  `<image_soft_token>` + `<end_of_image>\\n\\n`, and the model's `image_token_id` is `<image_soft_token>`'s, not the
  processor's. Here 32x32 images -> 4x4 SigLIP patches, average-pooled to `mm_tokens_per_image` = 4 soft tokens; their
  projection is random here (transformers initialises it to zeros: a fresh model would not see its images). The
  image processor also returns `num_crops` (pan-and-scan bookkeeping, 0 here), which the processor drops from its
  output; the processor returns `token_type_ids` (1 on the soft tokens, its `mm_token_type_ids` renamed), which the
  model takes for bidirectional attention within each image (causal without them). The chat template (with BOS)
  is on the processor and the tokenizer, as on google/gemma-3-4b-it; `<end_of_turn>` is an EOS of the generation
  config beside `<eos>`.
- PaliGemma: no chat template; the prompt is a task prefix ("caption en", "answer en <question>"). The processor turns
  a text `T` with images into `<image>` x (images x `image_seq_length`) + `<bos>` + `T` + `\\n` (it adds the
  `<image>` tokens itself when `T` has none, with a warning) and tokenizes it with `add_bos_token` off (it sets
  that on the tokenizer). With `suffix=S` it tokenizes `S + <eos>` as the text pair: `token_type_ids` are 0 on the
  prefix (images, BOS, prompt, newline) and 1 on the suffix; it always returns `labels` too (input_ids with the
  prefix at -100: all -100 without a suffix). The model takes `token_type_ids` for its prefix-LM mask
  (bidirectional over the prefix, causal over the suffix; `generate` marks new tokens 1). Without them its mask is
  causal only where the batch has padding: its Gemma config sets `use_bidirectional_attention`, so an unpadded
  batch attends both ways over the whole text, replies included. Positions count from 1 (a rotary shift: no
  effect). The processor also adds 1,152 `<locNNNN>` / `<segNNN>` tokens to the tokenizer. Here 32x32 images ->
  `image_seq_length` = 16 tokens (kept on the image processor, as on the Hub).
- SmolVLM: the Idefics3 layout (see tests/tiny_families.py: `<fake_token_around_image><row_R_col_C>` + 4 x `<image>`
  per 32x32 crop, then the global image; `pixel_values` (B, crops, 3, 32, 32) and `pixel_attention_mask`), with
  longest edge 64: a square image is 2x2 crops + global (20 `<image>`), 64x30 is 1x2 + global (12). `SmolVLMProcessor`
  holds a video processor (torchvision) and needs the `num2words` package even for images: where either is missing
  it can be neither built nor loaded, so the builder writes the files its `save_pretrained` would write (checked with
  num2words and no video processor: the same input_ids and pixels as transformers' own expansion by hand, which
  tests/test_tiny_families_gemma_smol.py uses).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaTokenizer,
    GenerationConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
    SmolVLMVisionConfig,
)

from .tiny_families import (
    TINY_LM,
    TINY_VISION,
    save_checkpoint,
    idefics3_config,
    idefics3_tokenizer,
    save_processor_files,
    special_ids,
)

__all__ = ["BUILDERS", "make_tiny_gemma3", "make_tiny_paligemma", "make_tiny_smolvlm"]

GEMMA_LM = dict(TINY_LM, head_dim=TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"])
SIGLIP = dict(TINY_VISION, vision_use_head=False)  # 32x32 images, 8x8 patches: 16 patches per image

# google/gemma-3-4b-it's chat template (its tokenizer_config.json and chat_template.json; the same text is in
# transformers' Gemma 3 docs): BOS first, "model" for the assistant, an image part is <start_of_image>.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# HuggingFaceTB/SmolVLM2-*-Video-Instruct's chat template (chat_template.json; transformers' processing_smolvlm.py
# carries it as DEFAULT_CHAT_TEMPLATE, there with a branch for string contents added): SmolVLM's plus video parts.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
"""Gemma's first ids, in its order: pad 0, eos 1, bos 2, unk 3, mask 4."""


def gemma_tokenizer(texts: list[str], added: list[str], **extra_special_tokens: str) -> GemmaTokenizer:
    """A `GemmaTokenizer` as Gemma's: BPE over text whose spaces are `▁`, with byte fallback (`<0x00>`..`<0xFF>`, so
    any text tokenizes without <unk>) and `<bos>` added to every text; `added` are special tokens after the rest."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")  # GemmaTokenizer's own normalizer
    bpe.train_from_iterator(texts, trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=GEMMA_SPECIALS,
                                                               show_progress=False))
    trained = json.loads(bpe.to_str())["model"]
    vocab = dict(trained["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True,
                               extra_special_tokens=extra_special_tokens)
    tokenizer.add_tokens(added, special_tokens=True)
    return tokenizer


# ----------------------------------------------------------------------------------------------------- Gemma 3


def make_tiny_gemma3(out: Path, texts: list[str]) -> Path:
    """Gemma3ForConditionalGeneration (google/gemma-3-4b-it layout): SigLIP tower, pooled to 4 soft tokens an image."""
    images = dict(boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")
    turns = ["<start_of_turn>", "<end_of_turn>"]
    tokenizer = gemma_tokenizer(list(texts) + ["user\nmodel\n"], turns + list(images.values()), **images)
    tokenizer.chat_template = GEMMA3_TEMPLATE
    token = tokenizer.convert_tokens_to_ids
    ids = special_ids(tokenizer)
    text = Gemma3TextConfig(**GEMMA_LM, vocab_size=len(tokenizer), query_pre_attn_scalar=GEMMA_LM["head_dim"],
                            sliding_window=8, layer_types=["sliding_attention", "full_attention"], **ids)
    config = Gemma3Config(vision_config=SiglipVisionConfig(**SIGLIP), text_config=text, mm_tokens_per_image=4,
                          boi_token_index=token("<start_of_image>"), eoi_token_index=token("<end_of_image>"),
                          image_token_index=token("<image_soft_token>"))
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    # Gemma 3 initialises its projection to zeros: the images would not reach a fresh model at all
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    torch.nn.init.normal_(projection, std=projection.shape[0] ** -0.5)
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor, tokenizer, chat_template=GEMMA3_TEMPLATE,
                                image_seq_length=config.mm_tokens_per_image)
    # gemma-3-4b-it's generation config (its cache_implementation "hybrid" left out: transformers picks the cache)
    generation = GenerationConfig(**dict(ids, eos_token_id=[tokenizer.eos_token_id, token("<end_of_turn>")]),
                                  do_sample=True, top_k=64, top_p=0.95)
    return save_checkpoint(out, model, processor, generation)


# --------------------------------------------------------------------------------------------------- PaliGemma


def make_tiny_paligemma(out: Path, texts: list[str]) -> Path:
    """PaliGemmaForConditionalGeneration (google/paligemma-3b-pt-224 layout): 16 image tokens, no chat template."""
    tokenizer = gemma_tokenizer(list(texts) + ["caption en\nanswer en"], ["<image>"])
    ids = special_ids(tokenizer)
    vision = SiglipVisionConfig(**SIGLIP)
    image_seq_length = (vision.image_size // vision.patch_size) ** 2
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_seq_length=image_seq_length)
    processor = PaliGemmaProcessor(image_processor, tokenizer)  # adds the <loc>/<seg> tokens: build it first
    text = GemmaConfig(**GEMMA_LM, vocab_size=len(tokenizer), **ids)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             vocab_size=len(tokenizer), projection_dim=text.hidden_size, hidden_size=text.hidden_size)
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config)
    save_checkpoint(out, model, processor, GenerationConfig(**ids))
    tokenizer.add_bos_token = True  # as on the Hub: the tokenizer alone adds BOS, the processor turns that off
    tokenizer.save_pretrained(out)
    return Path(out)


# ----------------------------------------------------------------------------------------------------- SmolVLM

SMOLVLM_SIZES = dict(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
"""Longest edge resized to 64, then cut into 32x32 crops (2x2 for a square image) + the global image."""


def make_tiny_smolvlm(out: Path, texts: list[str]) -> Path:
    """SmolVLMForConditionalGeneration (HuggingFaceTB/SmolVLM2-*-Video-Instruct layout), image splitting on."""
    tokenizer = idefics3_tokenizer(texts)
    config, image_seq_len = idefics3_config(SmolVLMConfig, SmolVLMVisionConfig, tokenizer)
    torch.manual_seed(0)
    model = SmolVLMForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**special_ids(tokenizer))
    model.save_pretrained(out)
    image_processor = SmolVLMImageProcessorPil(do_image_splitting=True, **SMOLVLM_SIZES)
    # SmolVLMVideoProcessor's own defaults fill in the rest when it is loaded; video_sampling as on SmolVLM2
    video = {"video_processor_type": "SmolVLMVideoProcessor", **SMOLVLM_SIZES,
             "video_sampling": {"fps": 1, "max_frames": 64, "video_size": SMOLVLM_SIZES["size"]}}
    save_processor_files(Path(out), "SmolVLMProcessor", image_processor, tokenizer, SMOLVLM_TEMPLATE, video,
                         image_seq_len=image_seq_len)
    return Path(out)


BUILDERS = {"gemma3": make_tiny_gemma3, "paligemma": make_tiny_paligemma, "smolvlm": make_tiny_smolvlm}
