"""What several `verbo` commands share: the help layout, the subcommand records the table in `cli/__init__.py` lists,
the decoding flags and the flags saying how to read a data path.

Modules the flags' defaults come from (infer, readers) load torch, so they are imported where a parser is built, not
when the cli is imported.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ..infer.options import OPTION_RULES

if TYPE_CHECKING:
    from ..data.rows import ReadOptions
    from ..infer.options import DecodeOptions
    from ..infer.vlm import VLM


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and every option's default shown: appended as "(default: X)" unless the help
    already says it (in words, or where showing it would print a secret from the environment) or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        no_default = action.default is None or action.default is False or action.default == [] \
            or action.default is argparse.SUPPRESS
        if no_default or "default" in help or not (action.option_strings or action.nargs in ("?", "*")):
            return help
        return f"{help} (default: %(default)s)"


@dataclass(frozen=True)
class Command:
    """One `verbo` subcommand: its help line (also its --help description), the function adding its arguments, the
    function it runs with the parsed arguments, and the examples closing its --help."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    examples: str
    one_shot: bool = False
    """Loads a model (`load_vlm`), generates, and has written everything out (printed, or in files it closed) when
    `run` returns: the `verbo` program runs it with the cyclic garbage collector paused until the model is loaded,
    and ends at once after it, without the interpreter's teardown (see `cli.program`)."""

    def add_to(self, subparsers, name: str) -> None:
        parser = subparsers.add_parser(name, help=self.help, description=self.help, epilog=self.examples,
                                       formatter_class=HelpFormatter)
        parser.set_defaults(func=self.run, one_shot=self.one_shot)
        self.arguments(parser)


@dataclass(frozen=True)
class CommandGroup:
    """A subcommand made of subcommands (`verbo data synth`, ...); `dest` names the chosen one in the arguments."""

    help: str
    commands: dict[str, Command]
    dest: str
    metavar: str

    def add_to(self, subparsers, name: str) -> None:
        add_commands(subparsers.add_parser(name, help=self.help), self.commands, self.dest, self.metavar)


def add_commands(parser: argparse.ArgumentParser, commands: dict[str, Command | CommandGroup], dest: str,
                 metavar: str) -> None:
    """Give `parser` the subcommands of a table, in its order (the order --help lists them in)."""
    subparsers = parser.add_subparsers(dest=dest, metavar=metavar, required=True)
    for name, command in commands.items():
        command.add_to(subparsers, name)


# ------------------------------------------------------------------------------------------------ generation

MODEL_HELP = ("a model directory, a run folder (its final model), a LoRA adapter directory (its base read from its "
              "metadata) or a hub id")


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """MODEL, as every command that loads a model for generation takes it (`load_vlm`)."""
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)


def add_decode_options(parser: argparse.ArgumentParser, length_default: str | None = None) -> None:
    """The decoding flags of every generating command; each flag's dest is the DecodeOptions field it sets, and the
    defaults are DecodeOptions' own, so that `decode_options_from_flags` of no flags is `DecodeOptions()`.

    `length_default` says in words what --max-new-tokens defaults to where the command decides it (its value is
    then None when the flag is not given)."""
    from ..infer.options import DecodeOptions

    group = parser.add_argument_group("decoding (greedy by default)")
    group.add_argument("--max-new-tokens", type=int,
                       default=None if length_default else DecodeOptions.max_new_tokens,
                       help=f"longest reply in tokens (default: {length_default or '%(default)s'}); replies cut there "
                            "are counted as truncated")
    group.add_argument("--beams", type=int, default=DecodeOptions.beams, help="beam search width")
    group.add_argument("--temperature", type=float, help="sampling temperature (turns sampling on)")
    group.add_argument("--top-p", type=float, help="nucleus sampling mass (turns sampling on)")
    group.add_argument("--top-k", type=int, help="sample among the k most likely tokens (turns sampling on)")
    group.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeating tokens")
    group.add_argument("--no-repeat-ngram-size", type=int, help="no n-gram of this size appears twice in a reply")
    group.add_argument("--min-new-tokens", type=int, help="shortest reply in tokens")
    group.add_argument("--length-penalty", type=float,
                       help="beam search: > 0 favours longer replies, < 0 shorter ones")
    group.add_argument("--early-stopping", action="store_true",
                       help="beam search: stop as soon as --beams candidates are finished")
    group.add_argument("--stop", action="append", default=[], help="stop string (repeat for several)")
    group.add_argument("--seed", type=int, help="seed for reproducible sampling")
    _add_model_options(group)


def _add_model_options(group) -> None:
    """How the model is loaded and batched (`load_vlm` reads them), listed with the decoding flags."""
    from ..config.sources import TEMPLATES
    from ..infer.options import BATCH_SIZE, CACHE_STEP

    group.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="replies generated together")
    group.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    add_dtype_option(group)
    group.add_argument("--quantize", default="none", metavar="{none,int8-dynamic,8bit,4bit}",
                       help="int8-dynamic: int8 linear layers on the CPU (half the memory); 8bit / 4bit: bitsandbytes "
                            "(pip install bitsandbytes) on a CUDA GPU, 4bit on the CPU too")
    group.add_argument("--template", choices=TEMPLATES,
                       help="how prompts are laid out (default: what the model was trained with, its verbovision.json; "
                            "else its chat template; else the family's own prompt format): chat, plain (images, "
                            "then the prompt on its line), caption (images only) or prefix (PaliGemma's: images, "
                            "BOS, the prompt and a newline)")
    group.add_argument("--compile", action="store_true",
                       help="static KV cache + torch.compile'd decoding steps: identical replies, faster once "
                            "compiled; batches are padded to a power of two rows (at most --batch-size) and the cache "
                            f"to a multiple of {CACHE_STEP} tokens, each such shape compiling once (serve compiles "
                            "them before serving); beam search runs eagerly")


def add_dtype_option(group) -> None:
    """--dtype, on every command that loads a model (`model.store.resolve_dtype` reads it)."""
    from ..config.schema import DTYPES

    group.add_argument("--dtype", default="auto", choices=DTYPES,
                       help="what the weights load in; auto: bfloat16 on a CUDA GPU that supports it, else float32")


_FLAG_RULES: dict[str, tuple[str, Callable]] = {
    **OPTION_RULES,
    "temperature": ("a number > 0 (leave the flag out for greedy decoding)", lambda v: v > 0),
    "batch_size": ("an integer >= 1", lambda v: v >= 1),
}
"""The decoding flags' valid values (dest -> rule in words, check), refused before a model loads."""


def check_flags(args: argparse.Namespace, rules: dict[str, tuple[str, Callable]]) -> None:
    """A ConfigError naming the first flag whose value breaks its rule (dest -> rule in words, check); flags not
    given (None) pass."""
    from ..errors import ConfigError

    for dest, (rule, ok) in rules.items():
        value = getattr(args, dest)
        if value is not None and not ok(value):
            raise ConfigError(f"--{dest.replace('_', '-')} {value}: give {rule}")


def decode_options_from_flags(args: argparse.Namespace) -> DecodeOptions:
    """The DecodeOptions the decoding flags of `add_decode_options` ask for; a value out of its flag's range is a
    ConfigError naming the flag."""
    from ..errors import ConfigError
    from ..infer.options import DecodeOptions, shorter_than_asked

    check_flags(args, _FLAG_RULES)
    values = {field.name: getattr(args, field.name) for field in fields(DecodeOptions)}
    length = DecodeOptions.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens  # see length_default
    options = DecodeOptions(**{**values, "max_new_tokens": length, "stop": tuple(args.stop)})
    if shorter_than_asked(options):
        raise ConfigError(f"--min-new-tokens {options.min_new_tokens} is more than --max-new-tokens {length}: the "
                          "reply would stop short of it; raise --max-new-tokens")
    return options


def load_vlm(args: argparse.Namespace) -> VLM:
    """The model a generation command names, on its --device, in its --dtype, quantized as asked."""
    from ..infer.vlm import VLM

    vlm = VLM(args.model, device=args.device, quantize=args.quantize, compiled=args.compile, template=args.template,
              dtype=args.dtype)
    resume_collector()
    return vlm


_collector_paused = False


def pause_collector() -> None:
    """Pause the cyclic garbage collector while a one-shot command starts (`Command.one_shot`): importing torch and
    transformers and loading a model create hundreds of thousands of objects that live as long as the process, which
    the collector would otherwise scan again and again as they are made (benchmarks/process_bench.py)."""
    global _collector_paused
    gc.disable()
    _collector_paused = True


def resume_collector() -> None:
    """Where `pause_collector` paused it: the objects made since are kept out of every later collection
    (`gc.freeze`), and the collector runs again for what the command makes from here on."""
    global _collector_paused
    if _collector_paused:
        gc.freeze()
        gc.enable()
        _collector_paused = False


# ------------------------------------------------------------------------------------------------ reading data


def add_reading_options(parser: argparse.ArgumentParser) -> None:
    """The flags saying how to read a data path (`read_options` turns them into ReadOptions)."""
    from ..data.readers import FORMATS
    from ..data.rows import ReadOptions

    group = parser.add_argument_group("reading")
    group.add_argument("--format", choices=FORMATS,
                       help="llava (JSON/JSONL conversations), coco (caption annotations), pairs (JSONL/CSV/TSV "
                            "rows), imagefolder (metadata.jsonl), webdataset (.tar shards), hf (save_to_disk/parquet), "
                            "hf-stream (a hub dataset id or folder streamed by datasets, its train split)")
    group.add_argument("--image-column", help="column with the image path (default: image, file_name, ...)")
    group.add_argument("--text-column", help="column with the caption or answer (default: caption, text, ...)")
    group.add_argument("--question-column", help="column with the question (default: question, instruction, ...)")
    group.add_argument("--image-root", help="folder relative image paths start from (default: the data file's; "
                                            "COCO: a guess near it)")
    group.add_argument("--prompt", default=ReadOptions.prompt, help="user turn of caption records "
                                                                    "(default: %(default)r)")


def read_options(args: argparse.Namespace) -> ReadOptions:
    from ..data.rows import Columns, ReadOptions

    columns = Columns(image=args.image_column, text=args.text_column, question=args.question_column)
    root = Path(args.image_root) if args.image_root else None
    return ReadOptions(format=args.format, columns=columns, image_root=root, prompt=args.prompt, check_image_files=True)
