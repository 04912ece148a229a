"""How to decode: the options of generation, what a generation returns, how prompts are cut."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace

BATCH_SIZE = 16
"""Replies generated together unless a command or call says otherwise (caption, ask, predict, eval, serve)."""

CACHE_STEP = 256
"""Under `--compile` (`infer.compiled`), static KV caches are sized in multiples of this many tokens."""

SEED_LIMIT = 2**63
"""Seeds are 64-bit integers, as torch.manual_seed takes them: -SEED_LIMIT <= seed < SEED_LIMIT."""

TextCallback = Callable[[int, str], None]
"""Called with (index of the reply, new text) as replies grow."""


@dataclass
class DecodeOptions:
    """How to pick tokens: greedy by default; beams or sampling on request."""

    max_new_tokens: int = 256
    """Longest reply in tokens; a reply cut there ends with finish_reason "length". Long enough for the shipped
    recipes' replies: step-by-step geometry answers (Geo170K, `verbo data synth geometry`) end with "Answer: X"."""
    beams: int = 1
    """Beam search width (1 = no beam search)."""
    temperature: float | None = None
    """Sampling temperature; setting it (or top_p / top_k) turns sampling on."""
    top_p: float | None = None
    """Nucleus sampling: keep the smallest token set with this probability mass."""
    top_k: int | None = None
    """Sample among the k most likely tokens."""
    repetition_penalty: float | None = None
    """> 1 discourages repeating tokens."""
    seed: int | None = None
    """Seed for reproducible sampling."""
    stop: tuple[str, ...] = ()
    """Stop strings: a reply ends just before the first one it produces."""
    length_penalty: float | None = None
    """Beam search: scores are divided by length ** length_penalty (> 0 favours longer replies, < 0 shorter)."""
    early_stopping: bool = False
    """Beam search: stop once `beams` finished candidates exist, instead of when no better one can appear."""
    no_repeat_ngram_size: int | None = None
    """No n-gram of this size appears twice in a reply."""
    min_new_tokens: int | None = None
    """Shortest reply in tokens: EOS is not allowed before."""

    @property
    def sampling(self) -> bool:
        return any(v is not None for v in (self.temperature, self.top_p, self.top_k))

    @property
    def plain_greedy(self) -> bool:
        """Greedy decoding with no logits processor: the argmax token at every step."""
        return (self.beams == 1 and not self.sampling and self.repetition_penalty is None
                and self.no_repeat_ngram_size is None and self.min_new_tokens is None)

    def batch_key(self) -> tuple:
        """What replies generated in one batch must share; max_new_tokens and stop are followed per reply."""
        seed = self.seed if self.sampling else None
        return (self.beams, self.temperature, self.top_p, self.top_k, self.repetition_penalty, seed,
                self.length_penalty, self.early_stopping, self.no_repeat_ngram_size, self.min_new_tokens)

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": self.beams, "do_sample": self.sampling}
        for key in _OPTIONAL_GENERATE_KWARGS:
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.beams > 1:  # transformers warns about beam-only settings without beams
            kwargs["early_stopping"] = self.early_stopping
        return kwargs


def decode_options(options: DecodeOptions | None = None, **changes) -> DecodeOptions:
    """`options` (default: greedy `DecodeOptions()`) with the fields named by keyword changed, as the Python API takes
    them: `vlm.caption(images, max_new_tokens=8, beams=3)`. `stop` may be one string or several."""
    options = options or DecodeOptions()
    known = [f.name for f in fields(DecodeOptions)]
    for name in changes:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(f"unknown decoding option {name!r}; {hint}the options are {', '.join(known)}")
    if "stop" in changes:
        stop = changes["stop"]
        if not (isinstance(stop, (str, list, tuple)) or stop is None) or any(not isinstance(s, str) for s in stop or ()):
            raise ValueError(f"stop={stop!r}: give a string or a list of strings")
        changes["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
    options = replace(options, **changes)
    for name, (rule, ok) in OPTION_RULES.items():
        value = getattr(options, name)
        if value is not None and not ok(value):
            raise ValueError(f"{name}={value!r}: give {rule}")
    if shorter_than_asked(options):
        raise ValueError(f"min_new_tokens={options.min_new_tokens} is more than max_new_tokens="
                         f"{options.max_new_tokens}: the reply would stop short of it")
    return options


def shorter_than_asked(options: DecodeOptions) -> bool:
    """Whether generation would stop at max_new_tokens before min_new_tokens (as the server refuses min_tokens over
    max_tokens)."""
    return options.min_new_tokens is not None and options.min_new_tokens > options.max_new_tokens


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


OPTION_RULES: dict[str, tuple[str, Callable]] = {
    "max_new_tokens": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "beams": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "temperature": ("a number > 0 (leave it out for greedy decoding)", lambda v: _number(v) and v > 0),
    "top_p": ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    "top_k": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "repetition_penalty": ("a number > 0", lambda v: _number(v) and v > 0),
    "no_repeat_ngram_size": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "min_new_tokens": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "seed": ("a 64-bit integer", lambda v: _integer(v) and -SEED_LIMIT <= v < SEED_LIMIT),
    "length_penalty": ("a number", _number),
}
"""The valid values of the decoding options (name -> rule in words, check), refused before any generation: the CLI
names the flag (`--max-new-tokens`), the Python API the keyword. Without them max_new_tokens=0 still generated a
token and beams=0 divided by zero inside transformers."""


_OPTIONAL_GENERATE_KWARGS = ("temperature", "top_p", "top_k", "repetition_penalty", "length_penalty",
                             "no_repeat_ngram_size", "min_new_tokens")
"""DecodeOptions fields passed to `generate` only when set, so that unset ones keep the model's generation config."""


@dataclass
class Generation:
    """One reply with what a server reports about it."""

    text: str
    """The reply, without EOS, stop string or surrounding whitespace."""
    prompt_tokens: int
    """Tokens of the prompt (image tokens included)."""
    completion_tokens: int
    """Tokens generated, the final EOS or stop string included."""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (max_new_tokens reached)."""
    first_token_at: float | None = field(default=None, compare=False, repr=False)
    """When its first token came (`time.monotonic()`; beam search: when the search ended); not part of the reply."""


@dataclass
class Truncation:
    """How many replies of a set were cut at max_new_tokens (finish_reason "length"): a cut reply may lack its end
    (the "Answer: X" a score reads), so every command that generates many says how many there were."""

    max_new_tokens: int
    replies: int = 0
    truncated: int = 0

    def add(self, finish_reasons: Iterable[str]) -> Truncation:
        for reason in finish_reasons:
            self.replies += 1
            self.truncated += reason == "length"
        return self

    def __str__(self) -> str:
        return f"truncated: {self.truncated} of {self.replies} replies hit max_new_tokens={self.max_new_tokens}"
