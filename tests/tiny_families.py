"""Tiny random checkpoints of stock transformers image-text-to-text families, built offline.

Each `make_tiny_*(out, texts)` saves a random float32 model (70k-90k parameters) and its processor to `out`, laid
out like the family's checkpoints on the Hub, so that `AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` load them with no `trust_remote_code`. `texts` are a few strings the tokenizer
is trained on; other text still tokenizes (byte-level BPE; for GIT, WordPiece with ASCII letters, digits and
punctuation as single characters, so only characters found neither there nor in `texts` become [UNK]).

Quirks worth knowing (transformers 5.x):
- Idefics3: the processor replaces each `<image>` with, per crop, `<fake_token_around_image><row_R_col_C>` +
  `image_seq_len` x `<image>` (a newline after each row of crops), then `\n<fake_token_around_image><global-img>` +
  `image_seq_len` x `<image>` + `<fake_token_around_image>`. Images are first resized so their longest edge is
  `size["longest_edge"]` (upscaling too), so the crop grid follows the aspect ratio: here 32x32 -> 3x3 crops + global
  (40 image tokens), 64x40 -> 2x3 + global (28). The model takes `pixel_values` (B, crops, 3, 32, 32) and
  `pixel_attention_mask`.
- Qwen2-VL: the processor replaces `<|image_pad|>` with (grid_t*grid_h*grid_w) / merge_size**2 copies; the model
  takes flat `pixel_values` (patches, 3*2*8*8), `image_grid_thw` and (since 5.x, required with images)
  `mm_token_type_ids` (1 on image tokens) for M-RoPE. `Qwen2VLProcessor` has a video processor, and every video
  processor needs torchvision: without it the processor can be neither built nor loaded (`AutoProcessor` fails), only
  its image processor (PIL backend) and tokenizer. Without torchvision the builder therefore writes the files
  `Qwen2VLProcessor.save_pretrained` would write: byte-identical except that the `video_processor` entry of
  processor_config.json lists only the non-default settings (checked with torchvision: both load to equal processors).
- GIT: no image token; the image's patch embeddings (16 + CLS = 17) are prepended inside the model. With `labels`
  the loss is taken over the text logits only, shifted by one inside the model (so labels = input_ids; -100 ignored).
  `generate(pixel_values=...)` starts from `bos_token_id` ([CLS]) and stops at [SEP], as microsoft/git-base does.
- Vision encoder-decoder: with `labels` and no `decoder_input_ids`, the model builds them as
  `shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)` (-100 -> pad) and computes the
  loss itself, unshifted, over all labels. There is no processor class for the family, so the stock
  `VisionTextDualEncoderProcessor` (image processor + tokenizer) is saved: `processor_config.json` names it and
  `AutoProcessor` brings it back (nlpconnect/vit-gpt2 has only separate tokenizer/image-processor files instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    GitConfig,
    GitForCausalLM,
    GitProcessor,
    GPT2Config,
    GPT2Tokenizer,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    VisionTextDualEncoderProcessor,
    ViTConfig,
    ViTImageProcessorPil,
)
from transformers.utils import is_torchvision_available

from verbovision.data.tokenizer import train_bpe_tokenizer

__all__ = ["make_tiny_git", "make_tiny_idefics3", "make_tiny_llava", "make_tiny_qwen2_vl",
           "make_tiny_vision_encoder_decoder"]

TINY_LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=512)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                   patch_size=8)

# llava-hf/llava-1.5-*-hf's chat template: it lives on the processor and expects typed content parts.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# HuggingFaceTB/SmolVLM-*-Instruct's chat template (Idefics3 family): typed parts, "User:" / "Assistant:".
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Qwen/Qwen2-VL-*-Instruct's chat template.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_checkpoint(out: Path, model, processor, generation: GenerationConfig) -> Path:
    out = Path(out)
    model.generation_config = generation
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------------------ Llava


def make_tiny_llava(out: Path, texts: list[str]) -> Path:
    """LlavaForConditionalGeneration in llava-hf's LLaVA-1.5 layout: CLIP tower, penultimate layer, CLS dropped."""
    tokenizer = train_bpe_tokenizer(list(texts) + ["USER: ASSISTANT:"], "<image>", vocab_size=300)
    tokenizer.chat_template = None
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION), text_config=LlamaConfig(**TINY_LM, vocab_size=len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                               tokenizer, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                         pad_token_id=tokenizer.pad_token_id))


# --------------------------------------------------------------------------------------------------- Idefics3


def idefics3_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A BPE with the Idefics3/SmolVLM specials (`<image>`, `<fake_token_around_image>`, `<global-img>`,
    `<row_R_col_C>`, `<end_of_utterance>`) and SmolVLM's bos / eos / pad; no chat template (the processor has it)."""
    tokenizer = train_bpe_tokenizer(list(texts) + ["User: Assistant: Describe."], "<image>", vocab_size=300)
    tokenizer.add_tokens(["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
                         + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)], special_tokens=True)
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = "<|im_start|>", "<end_of_utterance>", "<|im_end|>"
    tokenizer.chat_template = None
    return tokenizer


def special_ids(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def idefics3_config(config_class, vision_config_class, tokenizer):
    """A config of the Idefics3 layout (Idefics3, SmolVLM): tiny vision tower, pixel shuffle by 2, Llama LM with the
    tokenizer's special ids; and the image tokens per 32x32 crop (4)."""
    vision = vision_config_class(**TINY_VISION)
    scale_factor = 2
    image_seq_len = (vision.image_size // vision.patch_size) ** 2 // scale_factor**2
    text = LlamaConfig(**TINY_LM, vocab_size=len(tokenizer), **special_ids(tokenizer))
    return config_class(vision_config=vision, text_config=text, scale_factor=scale_factor,
                        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                        pad_token_id=tokenizer.pad_token_id), image_seq_len


def make_tiny_idefics3(out: Path, texts: list[str]) -> Path:
    """Idefics3ForConditionalGeneration (SmolVLM layout) with image splitting on: the token count follows the image."""
    tokenizer = idefics3_tokenizer(texts)
    config, image_seq_len = idefics3_config(Idefics3Config, Idefics3VisionConfig, tokenizer)
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    # Longest edge resized to 96, then cut into 32x32 crops: the grid (up to 3x3) follows the aspect ratio.
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=True, size={"longest_edge": 96},
                                                max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=image_seq_len,
                                  chat_template=IDEFICS3_TEMPLATE)
    return save_checkpoint(out, model, processor, GenerationConfig(**special_ids(tokenizer)))


# --------------------------------------------------------------------------------------------------- Qwen2-VL

QWEN2_VL_VISION = dict(patch_size=8, temporal_patch_size=2, merge_size=2)
# smart_resize rounds each side to a multiple of patch*merge = 16 and keeps the area within [32*32, 64*64]:
# 32x32 -> 2x2 merged tokens = 4, 64x40 (w x h) -> 2x4 = 8, 64x64 -> 4x4 = 16.
QWEN2_VL_PIXELS = dict(min_pixels=32 * 32, max_pixels=64 * 64)


def qwen_tokenizer(texts: list[str]):
    """A byte-level BPE with Qwen2-VL's special tokens: <|image_pad|> (also `.image_token`), <|vision_start|>,
    <|vision_end|>, <|video_pad|>, ChatML turns; EOS <|im_end|> and pad <|endoftext|>, as on Qwen2-VL-*-Instruct. It
    has no chat template: the processor carries it."""
    tokenizer = train_bpe_tokenizer(list(texts) + ["system user assistant You are a helpful assistant."],
                                    "<|image_pad|>", vocab_size=300)
    tokenizer.add_tokens(["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"], special_tokens=True)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = None
    return tokenizer


def mrope_text_config(vocab_size: int, ids: dict, **rope) -> dict:
    """The tiny text config of the Qwen-VL families, with M-RoPE (`rope`: more rope parameters)."""
    head_dim = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
    # M-RoPE: (temporal, height, width) sections of the head_dim/2 rotary frequencies ([16, 24, 24] at 128)
    sections = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    return dict(TINY_LM, vocab_size=vocab_size, bos_token_id=None, **ids,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections, **rope})


def make_tiny_qwen2_vl(out: Path, texts: list[str]) -> Path:
    """Qwen2VLForConditionalGeneration with a dynamic-resolution image processor (4..16 image tokens)."""
    tokenizer = qwen_tokenizer(texts)
    token = tokenizer.convert_tokens_to_ids
    ids = dict(eos_token_id=token("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    text = mrope_text_config(len(tokenizer), ids)
    vision = dict(depth=2, embed_dim=32, hidden_size=TINY_LM["hidden_size"], num_heads=2, mlp_ratio=2,
                  patch_size=QWEN2_VL_VISION["patch_size"], temporal_patch_size=QWEN2_VL_VISION["temporal_patch_size"],
                  spatial_merge_size=QWEN2_VL_VISION["merge_size"])
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=token("<|image_pad|>"),
                           video_token_id=token("<|video_pad|>"), vision_start_token_id=token("<|vision_start|>"),
                           vision_end_token_id=token("<|vision_end|>"))
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessorPil(**QWEN2_VL_VISION, **QWEN2_VL_PIXELS)
    video = {  # Qwen2VLVideoProcessor's own defaults fill in the rest
        "video_processor_type": "Qwen2VLVideoProcessor", **QWEN2_VL_VISION,
        "size": {"shortest_edge": QWEN2_VL_PIXELS["min_pixels"], "longest_edge": QWEN2_VL_PIXELS["max_pixels"]},
    }
    return save_with_video_processor(out, model, GenerationConfig(**ids), "Qwen2VLProcessor", image_processor,
                                     tokenizer, QWEN2_VL_TEMPLATE, video)


def save_with_video_processor(out: Path, model, generation: GenerationConfig, processor_class: str, image_processor,
                              tokenizer, chat_template: str, video: dict) -> Path:
    """Save a model and a processor class that holds a video processor (`video`: its type and non-default settings).

    Every video processor needs torchvision. Without it the processor can be neither built nor loaded, so this
    writes the files `processor_class(...).save_pretrained(out)` would write: byte-identical except that the
    `video_processor` entry of processor_config.json lists only `video` (the class's defaults fill in the rest).
    """
    import transformers

    if is_torchvision_available():
        settings = {k: v for k, v in video.items() if k != "video_processor_type"}
        video_processor = getattr(transformers, video["video_processor_type"])(**settings)
        processor = getattr(transformers, processor_class)(image_processor, tokenizer, video_processor,
                                                           chat_template=chat_template)
        return save_checkpoint(out, model, processor, generation)
    out = Path(out)
    model.generation_config = generation
    model.save_pretrained(out)
    save_processor_files(out, processor_class, image_processor, tokenizer, chat_template, video)
    return out


def save_processor_files(out: Path, processor_class: str, image_processor, tokenizer, chat_template: str,
                         video: dict, **settings) -> None:
    """The files `processor_class(...).save_pretrained(out)` writes for a processor holding a video processor, written
    without building it (video processors need torchvision): `video` lists the video processor's non-default
    settings, `settings` the processor's own (SmolVLM's image_seq_len...)."""
    tokenizer._set_processor_class(processor_class)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    config = {"image_processor": image_processor.to_dict(), "video_processor": video, **settings,
              "processor_class": processor_class}
    (out / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------- GIT


def wordpiece_vocab(texts: list[str]) -> list[str]:
    """BERT specials, the lower-cased words of `texts`, and every single character both as a word start and as a
    `##` continuation, so any text tokenizes without [UNK]."""
    probe = BertTokenizer()  # only for its normalizer (lower case, accents stripped) and pre-tokenizer
    backend = probe.backend_tokenizer
    words = set()
    for text in texts:
        normalized = backend.normalizer.normalize_str(text)
        words.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))
    chars = set("abcdefghijklmnopqrstuvwxyz0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    chars.update(ch for word in words for ch in word)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += sorted(chars) + sorted(f"##{ch}" for ch in chars) + sorted(w for w in words if len(w) > 1)
    return vocab


def make_tiny_git(out: Path, texts: list[str]) -> Path:
    """GitForCausalLM (microsoft/git-base layout): CLIP image processor, BERT WordPiece tokenizer."""
    vocab = wordpiece_vocab(list(texts))
    # git-base's tokenizer returns no token_type_ids (GitForCausalLM takes none)
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)},
                              model_input_names=["input_ids", "attention_mask"])
    ids = dict(bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = GitConfig(vision_config=dict(**TINY_VISION), vocab_size=len(tokenizer), hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                       **ids)
    torch.manual_seed(0)
    model = GitForCausalLM(config)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = GitProcessor(image_processor, tokenizer)
    return save_checkpoint(out, model, processor, GenerationConfig(**ids))


# ------------------------------------------------------------------------------------ vision encoder-decoder


def gpt2_tokenizer(texts: list[str], vocab_size: int = 300) -> GPT2Tokenizer:
    """A GPT-2-style byte-level BPE whose only special token is <|endoftext|> (bos = eos = unk)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return GPT2Tokenizer(vocab=trained["vocab"], merges=merges)


def make_tiny_vision_encoder_decoder(out: Path, texts: list[str], decoder_layers: int = 2) -> Path:
    """VisionEncoderDecoderModel: ViT encoder + GPT-2 decoder with cross-attention (nlpconnect/vit-gpt2 layout)."""
    tokenizer = gpt2_tokenizer(list(texts))
    eos = tokenizer.eos_token_id  # == bos == unk; GPT-2 has no pad, so pad is eos too (as in nlpconnect/vit-gpt2)
    encoder = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=32, patch_size=8)
    decoder = GPT2Config(n_embd=32, n_layer=decoder_layers, n_head=2, n_positions=512, vocab_size=len(tokenizer),
                         add_cross_attention=True, is_decoder=True, bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=eos, decoder_start_token_id=eos)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = eos
    config.pad_token_id = eos
    config.eos_token_id = eos
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config)
    # No processor class maps to "vision-encoder-decoder"; VisionTextDualEncoderProcessor is a stock ProcessorMixin
    # holding just .image_processor and .tokenizer, and AutoProcessor restores it from processor_config.json.
    processor = VisionTextDualEncoderProcessor(ViTImageProcessorPil(size={"height": 32, "width": 32}), tokenizer)
    generation = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, decoder_start_token_id=eos)
    return save_checkpoint(out, model, processor, generation)
