"""`verbo chat`: a conversation with a model in the terminal (see `verbovision.chat`)."""

from __future__ import annotations

import argparse
import sys

from ..infer.chat import HELP, ChatSession, repl
from .common import Command, add_decode_options, add_model_argument, decode_options_from_flags, load_vlm


def _chat_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--image", help="image of the conversation (change it later with /image PATH)")
    p.add_argument("--system", help="system message opening the conversation")
    add_decode_options(p)


def cmd_chat(args: argparse.Namespace) -> None:
    options = decode_options_from_flags(args)  # a bad flag is refused before the model loads
    session = ChatSession(load_vlm(args), options, args.image, args.system)
    repl(session, sys.stdin, sys.stdout, sys.stderr)


CHAT = Command("talk with a model about images, replies streamed", _chat_arguments, cmd_chat, """examples:
  verbo chat runs/qs/final --image photo.png
  verbo chat runs/qs/final --image photo.png --temperature 0.7 --top-p 0.9
  printf 'Describe the image.\\nWhat colour is it?\\n/save chat.json\\n' | verbo chat runs/qs/final --image photo.png
""" + HELP)
