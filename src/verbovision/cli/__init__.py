"""`verbo`: one entry point; `COMMANDS` lists every subcommand, each defined (help, arguments, function run) in the
cli module of its stage."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import warnings
from typing import NoReturn

from ..errors import RANK_ERRORS, VerboError, show_error
from . import chat, data, evaluate, generate, predict, serve, train
from .common import Command, CommandGroup, HelpFormatter, add_commands, pause_collector

COMMANDS: dict[str, Command | CommandGroup] = {
    "quickstart": train.QUICKSTART,
    "data": data.DATA,
    "build": train.BUILD,
    "train": train.TRAIN,
    "merge": train.MERGE,
    "eval": evaluate.EVAL,
    "score": evaluate.SCORE,
    "caption": generate.CAPTION,
    "ask": generate.ASK,
    "predict": predict.PREDICT,
    "chat": chat.CHAT,
    "serve": serve.SERVE,
    "web": serve.WEB,
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verbo",
        description="Build, train, fine-tune, evaluate and serve vision-language models.",
        formatter_class=HelpFormatter,
    )
    add_commands(parser, COMMANDS, dest="command", metavar="COMMAND")
    return parser


def _quiet_libraries() -> None:
    # transformers announces every image processor that falls back to PIL without torchvision; users need none of it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` (default: the program's arguments) names; returns the exit status."""
    return _run(make_parser().parse_args(argv))


def program() -> NoReturn:
    """The `verbo` program (its console script, `python -m verbovision`): `main`, then the process exits. A one-shot
    command (`Command.one_shot`: caption, ask, predict) starts with the garbage collector paused until its model is
    loaded, and the process then exits without the interpreter's teardown of every module, which with torch and
    transformers loaded can take longer than a small model's captions; the atexit handlers still run and the output
    is flushed first."""
    args = make_parser().parse_args()
    if args.one_shot:
        pause_collector()
    status = _run(args)
    if status == 0 and args.one_shot:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _run(args: argparse.Namespace) -> int:
    _quiet_libraries()
    try:
        args.func(args)
    except VerboError as e:
        show_error(e)
        return 2
    except KeyboardInterrupt:
        if RANK_ERRORS not in os.environ:  # else a process of `verbo train --nproc`, which says it once for all
            print("verbo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`verbo data check ... --json | head`): stop without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush would fail again
        return 1
    return 0
