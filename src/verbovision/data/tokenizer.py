"""Tokenizers for VLMs: train a byte-level BPE for from-scratch LMs, add the image token to pretrained ones.

Every tokenizer leaves here as a standard `PreTrainedTokenizerFast` with a pad token, an EOS token, the image token
as a special token and a chat template, so the saved processor works with plain transformers."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Prepended to a text LM's chat template for the processor: content given as typed parts
# ([{"type": "image"}, {"type": "text", "text": ...}]) is flattened into the string form the LM template expects,
# with the image token where each image goes, parts joined as `join_parts` joins them.
_FLATTEN_PARTS = (
    "{%- set flat = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set flat.messages = flat.messages + [message] -%}"
    "{%- else -%}{%- set text = namespace(value='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- set piece = '[IMAGE]' if part['type'] in ['image', 'image_url'] else (part['text'] or '') "
    "if part['type'] == 'text' else none -%}"
    "{%- if piece is not none -%}"
    "{%- if text.value and not text.value.endswith('\\n') and not piece.startswith('\\n') -%}"
    "{%- set text.value = text.value + '\\n' -%}{%- endif -%}"
    "{%- set text.value = text.value + piece -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set flat.messages = flat.messages + [{'role': message['role'], 'content': text.value}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = flat.messages -%}"
)


def with_image_parts(template: str, image_token: str) -> str:
    """A chat template that also accepts typed content parts, rendering image parts as `image_token`."""
    return _FLATTEN_PARTS.replace("[IMAGE]", image_token) + template


def flattens_parts(template: str) -> bool:
    """Whether a chat template is one `with_image_parts` wrote."""
    return template.startswith(_FLATTEN_PARTS.split("[IMAGE]")[0])


def join_parts(pieces: Iterable[str]) -> str:
    """A message's content parts as one text (an image part's piece is its image token): joined by newlines, except
    where one side of a boundary already has one, as `with_image_parts` templates join them."""
    text = ""
    for piece in pieces:
        if text and not text.endswith("\n") and not piece.startswith("\n"):
            text += "\n"
        text += piece
    return text


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
    tokenizer.chat_template = CHATML_TEMPLATE
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
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a generated reply: EOS and, when the chat template uses it, the end-of-turn token."""
    ids = [tokenizer.eos_token_id]
    vocab = tokenizer.get_vocab()
    if TURN_END in vocab and TURN_END in (tokenizer.chat_template or ""):
        ids.append(vocab[TURN_END])
    return sorted(set(i for i in ids if i is not None))
