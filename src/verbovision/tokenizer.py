"""Tokenizers for VLMs: train a byte-level BPE for from-scratch LMs, add the image token to pretrained ones.

Every tokenizer leaves here as a standard `PreTrainedTokenizerFast` with a pad token, an EOS token, the image token
as a special token and a chat template, so the saved processor works with plain transformers.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"

# ChatML, accepting content as a string ("<image>\nWhat is this?") or as a list of typed parts
# ([{"type": "image"}, {"type": "text", "text": "What is this?"}]) so processor.apply_chat_template works too.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '[IMAGE]' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_template(image_token: str) -> str:
    return CHATML_TEMPLATE.replace("[IMAGE]", image_token)


def train_bpe_tokenizer(texts: Iterable[str], image_token: str, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with ChatML special tokens and `image_token`."""
    specials = [EOS_TOKEN, TURN_START, TURN_END, image_token]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact; label masking relies on them.
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        extra_special_tokens={"image_token": image_token},
    )
    tokenizer.chat_template = chatml_template(image_token)
    return tokenizer


def prepare_pretrained_tokenizer(name: str, image_token: str) -> PreTrainedTokenizerBase:
    """Load a language model's tokenizer and make it VLM-ready (image token, pad token, chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(name)
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    tokenizer.image_token = image_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.add_special_tokens({"additional_special_tokens": [TURN_START, TURN_END]})
        tokenizer.chat_template = chatml_template(image_token)
    return tokenizer


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a generated reply: EOS and, when the chat template uses it, the end-of-turn token."""
    ids = [tokenizer.eos_token_id]
    vocab = tokenizer.get_vocab()
    if TURN_END in vocab and TURN_END in (tokenizer.chat_template or ""):
        ids.append(vocab[TURN_END])
    return sorted(set(i for i in ids if i is not None))
