"""Tiny random checkpoints of image-text families whose images are not simply placeholders the processor expands
where the text puts them: Florence-2, BLIP-2, InstructBLIP and Kosmos-2 (same contract as tests/tiny_families.py).

None of these families' Hub checkpoints has a chat template, so none is saved here. Quirks (transformers 5.x):
- Florence-2 (florence-community/Florence-2-* layout): a BART encoder-decoder whose ENCODER input holds the image.
  The processor first turns a task token prompt into its question (`<CAPTION>` -> "What does the image describe?";
  any other text stays as it is), then builds `<image>` + `<s>` + prompt + `</s>` and expands `<image>` into
  `image_seq_length` copies (saved in the image processor's settings; here 5: a 2x2 map from the 64x64 image + one
  pooled token). The model takes input_ids / attention_mask (encoder), pixel_values and decoder_input_ids; with
  `labels` and no decoder_input_ids it shifts the labels right itself, starting from decoder_start_token_id (</s>),
  and computes the loss unshifted. Image size 64, not 32: the DaViT tower downsamples 32x, and 32 leaves a 1x1 map.
  The Hub tokenizer's 1000 `<loc_N>` tokens (boxes) are left out.
- BLIP-2 (Salesforce/blip2-opt-* layout): vision tower -> Q-Former (`num_query_tokens` learned queries, here 8) ->
  `language_projection` -> OPT. The processor puts `num_query_tokens` x `<image>` IN FRONT of every text (before
  OPT's BOS `</s>`), whatever the text holds: an `<image>` written in the text is one more image token, and the
  forward then scatters 8 features into 9 places. `processor.image_token` is a tokenizers `AddedToken`, not a str
  (the tokenizer has no `image_token`). With labels the forward takes the loss over the last labels.size(1) logits,
  shifted (labels = input_ids with -100 at the image tokens); `generate` returns the prompt and the reply.
- InstructBLIP (Salesforce/instructblip-* layout, with OPT): BLIP-2 plus a second tokenizer for the Q-Former (BERT
  WordPiece, saved in `qformer_tokenizer/`): the processor also returns `qformer_input_ids` / `qformer_attention_mask`
  (the text, tokenized again), which the forward REQUIRES (the queries read the instruction).
- Kosmos-2 (microsoft/kosmos-2-patch14-224 layout): the processor prepends `<image>` + 64 placeholders + `</image>`
  (after `<s>`) and a space to the text; the 64 placeholders are the ORDINARY vocabulary ids unk+1 .. unk+64, so
  only the returned `image_embeds_position_mask` (1 on them) says where the 64 latent-query features go. It adds
  11 tag tokens (`<grounding>`, `<phrase>`, ...) and 1024 `<patch_index_NNNN>` tokens to the tokenizer. The count
  is the processor call's `num_image_tokens` (default 64, not saved) and must equal config.latent_query_num.
  Prompts: `<grounding>An image of` for a grounded caption. An XLM-R Unigram tokenizer trained on `texts` (ASCII
  letters, digits and punctuation in its alphabet; other characters become <unk>).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    BartConfig,
    BartTokenizer,
    BertTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    Florence2VisionConfig,
    GenerationConfig,
    GPT2Tokenizer,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    Kosmos2Config,
    Kosmos2ForConditionalGeneration,
    Kosmos2Processor,
    OPTConfig,
    XLMRobertaTokenizer,
)

from .tiny_families import TINY_VISION, gpt2_tokenizer, save_checkpoint, wordpiece_vocab

__all__ = ["BUILDERS", "make_tiny_blip_2", "make_tiny_florence2", "make_tiny_instructblip", "make_tiny_kosmos_2"]

TINY_QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    encoder_hidden_size=TINY_VISION["hidden_size"])
NUM_QUERY_TOKENS = 8  # 32 on the Hub


def _roberta_bpe(texts: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of `gpt2_tokenizer`'s byte-level BPE renumbered after the fairseq specials (<s> 0, <pad> 1,
    </s> 2, <unk> 3), as BART's and OPT's vocabularies start."""
    bpe = json.loads(gpt2_tokenizer(texts).backend_tokenizer.to_str())["model"]
    learnt = sorted((i, token) for token, i in bpe["vocab"].items() if token != "<|endoftext|>")  # not theirs
    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + [token for _, token in learnt]
    return {token: i for i, token in enumerate(tokens)}, [tuple(m) for m in bpe["merges"]]


# ------------------------------------------------------------------------------------------------- Florence-2

FLORENCE2_PROMPTS = "What does the image describe? Describe in detail what is shown in the image."


def make_tiny_florence2(out: Path, texts: list[str]) -> Path:
    """Florence2ForConditionalGeneration: DaViT tower + projector, image features at the BART encoder's input."""
    vocab, merges = _roberta_bpe(list(texts) + [FLORENCE2_PROMPTS])
    vocab["<mask>"] = len(vocab)
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.eos_token_id)
    # Four stages, strides 4-2-2-2 (32x down), each a spatial-window block and a channel-group block.
    vision = Florence2VisionConfig(depths=(1, 1, 1, 1), embed_dim=(8, 16, 32, 32), num_heads=(1, 1, 2, 2),
                                   num_groups=(1, 1, 2, 2), window_size=2, projection_dim=32, drop_path_rate=0.0,
                                   max_position_embeddings=8)
    text = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      max_position_embeddings=512, forced_eos_token_id=tokenizer.eos_token_id, **ids)
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config)
    grid = (64 // 32) ** 2  # the last stage's map, plus one pooled ("temporal") token
    image_processor = CLIPImageProcessorPil(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                                            do_center_crop=False, image_mean=[0.485, 0.456, 0.406],
                                            image_std=[0.229, 0.224, 0.225], image_seq_length=grid + 1)
    processor = Florence2Processor(image_processor, tokenizer)
    return save_checkpoint(out, model, processor, GenerationConfig(**ids))


# --------------------------------------------------------------------------------------------- BLIP-2 / InstructBLIP


def _opt(texts: list[str]) -> tuple[GPT2Tokenizer, OPTConfig]:
    """OPT's tokenizer layout (GPT-2 BPE; `</s>` is BOS, prepended to every text, EOS and UNK; `<pad>` 1; `<image>`
    added last, as on Salesforce/blip2-opt-*) and a tiny OPT config for it. The tokenizer has no `image_token`:
    given one, the BLIP-2 and InstructBLIP processors of transformers 5.25 fail (they read `image_token.content`)."""
    vocab, merges = _roberta_bpe(texts)
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>", unk_token="</s>",
                              pad_token="<pad>", add_bos_token=True)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    text = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                     word_embed_proj_dim=32, max_position_embeddings=512, **_special_ids(tokenizer))
    return tokenizer, text


def _special_ids(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def make_tiny_blip_2(out: Path, texts: list[str]) -> Path:
    """Blip2ForConditionalGeneration with an OPT language model: query tokens in front of the text."""
    tokenizer, text = _opt(list(texts) + ["Question: Answer:"])
    config = Blip2Config(vision_config=dict(TINY_VISION), qformer_config=TINY_QFORMER, text_config=text,
                         num_query_tokens=NUM_QUERY_TOKENS, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config)
    processor = Blip2Processor(BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer,
                               num_query_tokens=NUM_QUERY_TOKENS)
    return save_checkpoint(out, model, processor, GenerationConfig(**_special_ids(tokenizer)))


def make_tiny_instructblip(out: Path, texts: list[str]) -> Path:
    """InstructBlipForConditionalGeneration: BLIP-2 whose Q-Former also reads the prompt, through its own BERT
    tokenizer. The LM is OPT (InstructBlipConfig's default; the Hub has Vicuna and Flan-T5 ones)."""
    tokenizer, text = _opt(list(texts))
    qformer_tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(wordpiece_vocab(list(texts)))})
    config = InstructBlipConfig(vision_config=dict(TINY_VISION),
                                qformer_config=dict(TINY_QFORMER, vocab_size=len(qformer_tokenizer)), text_config=text,
                                num_query_tokens=NUM_QUERY_TOKENS,
                                image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(config)
    processor = InstructBlipProcessor(BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer,
                                      qformer_tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    return save_checkpoint(out, model, processor, GenerationConfig(**_special_ids(tokenizer)))


# --------------------------------------------------------------------------------------------------- Kosmos-2

ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-"
KOSMOS2_IMAGE_TOKENS = 64
"""The processor call's default num_image_tokens (not saved with it; a class attribute only after transformers 5.17),
which config.latent_query_num must equal."""


def _xlm_roberta_tokenizer(texts: list[str], vocab_size: int = 300) -> XLMRobertaTokenizer:
    """An XLM-R-style Unigram (SentencePiece) tokenizer trained on `texts`: <s> <pad> </s> <unk> first, <mask> last."""
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", initial_alphabet=list(ASCII), show_progress=False)
    unigram.train_from_iterator(texts, trainer=trainer)
    pieces = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    return XLMRobertaTokenizer(vocab=pieces + [("<mask>", 0.0)])


def make_tiny_kosmos_2(out: Path, texts: list[str]) -> Path:
    """Kosmos2ForConditionalGeneration: 64 latent-query image features at the positions the processor marks."""
    tokenizer = _xlm_roberta_tokenizer(list(texts) + ["An image of"])
    processor = Kosmos2Processor(CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32,
                                                                                              "width": 32}),
                                 tokenizer)  # adds the tag and patch-index tokens to the tokenizer
    ids = _special_ids(tokenizer)
    text = dict(vocab_size=len(tokenizer), embed_dim=32, layers=2, ffn_dim=64, attention_heads=2,
                max_position_embeddings=512, **ids)
    config = Kosmos2Config(text_config=text, vision_config=dict(TINY_VISION),
                           latent_query_num=KOSMOS2_IMAGE_TOKENS)
    torch.manual_seed(0)
    model = Kosmos2ForConditionalGeneration(config)
    return save_checkpoint(out, model, processor, GenerationConfig(**ids))


BUILDERS = {
    "florence2": make_tiny_florence2,
    "blip-2": make_tiny_blip_2,
    "instructblip": make_tiny_instructblip,
    "kosmos-2": make_tiny_kosmos_2,
}
