"""`verbo chat`: a multi-turn conversation with a model in the terminal, each reply streamed as it is generated.

Commands: `/image PATH` (your next message carries this image, read once), `/reset`, `/save FILE` (the conversation
as a LLaVA JSON record, which `verbo train` reads back), `/help`, `/quit`. With stdin not a terminal (a pipe, a file)
it reads one message per line and writes one reply per line to stdout, command feedback going to stderr, so scripts
can drive it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import DataError

if TYPE_CHECKING:  # imported lazily at run time: `verbo --help` should not load torch
    from ..data.images import BytesImage
    from .options import DecodeOptions
    from .vlm import VLM


HELP = """commands:
  /image PATH   your next message carries this image (read now: the file may change or go afterwards)
  /reset        forget the conversation (the current image goes with your next message again)
  /save FILE    write the conversation as LLaVA JSON (a new file, or one this chat saved)
  /quit         leave (so does Ctrl-D)"""


class Quit(Exception):
    """/quit was typed."""


class ChatSession:
    """A conversation as OpenAI-style messages, and the image the next user message will carry."""

    def __init__(self, vlm: VLM, options: DecodeOptions | None = None, image: str | Path | None = None,
                 system: str | None = None):
        self.vlm = vlm
        self.options = options
        self.system = system
        self.image: BytesImage | None = None
        """The image's file as read by /image, named by its absolute path."""
        self.messages: list[dict] = []
        self.image_pending = False
        """Whether the next user message carries `image`."""
        self.saved: set[Path] = set()
        """The files /save wrote: saved again, they are updated; another existing file (a dataset) is not replaced."""
        if image is not None:
            self.set_image(image)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.image_pending = self.image is not None

    def set_image(self, path: str | Path) -> None:
        from ..data.images import BytesImage, load_image

        path = Path(path).resolve()
        load_image(path)  # a missing or unreadable file is refused now, not at the next message
        # Read once: every turn re-reads the conversation's images, and what the model was shown must not change
        # (nor a deleted file end the conversation) when the file is later deleted or overwritten.
        self.image = BytesImage(str(path), path.read_bytes())
        self.image_pending = True

    def stream(self, text: str) -> Iterator[str]:
        """Send a user message and yield the reply's pieces; the exchange joins the conversation once complete."""
        content = [{"type": "image", "image": self.image}] if self.image_pending else []
        message = {"role": "user", "content": [*content, {"type": "text", "text": text}]}
        reply = ""
        for piece in self.vlm.stream([*self.messages, message], self.options):
            reply += piece
            yield piece
        self.messages += [message, {"role": "assistant", "content": reply}]
        self.image_pending = False

    def command(self, line: str) -> str:
        """Run a /command; returns what to tell the user."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            raise Quit
        if name == "/help":
            return HELP
        if name == "/reset":
            self.reset()
            return "conversation cleared"
        if name == "/image" and arg:
            self.set_image(arg)
            return f"image: {self.image} (sent with your next message)"
        if name == "/save" and arg:
            from ..files import write_json

            if Path(arg).is_file() and Path(arg).resolve() not in self.saved:
                raise DataError(f"/save {arg}: a file this chat did not write; give a new file name (or delete it "
                                "first)")
            try:
                write_json(arg, [self.llava_record()])
                self.saved.add(Path(arg).resolve())
            except OSError as e:  # a folder, a missing drive...: the conversation goes on, to be saved elsewhere
                raise DataError(f"/save {arg}: cannot write ({e.strerror or e}); give a file path") from None
            gone = [name for name in self._image_names() if not Path(name).exists()]
            note = f" (gone from disk since: {', '.join(gone)})" if gone else ""  # LLaVA JSON holds paths, not images
            return f"saved {len(self.messages)} messages to {arg}{note}"
        if name in ("/image", "/save"):
            return f"usage: {name} {'PATH' if name == '/image' else 'FILE'}"
        return f"unknown command {name}; /help lists them"

    def _image_names(self) -> list[str]:
        """The paths of the images sent so far, in order."""
        return [str(part["image"]) for message in self.messages if isinstance(message["content"], list)
                for part in message["content"] if part["type"] == "image"]

    def llava_record(self) -> dict:
        """The conversation in LLaVA's JSON format: turns with `<image>` placeholders and absolute image paths."""
        from dataclasses import replace

        from ..data.convert import llava_row
        from .messages import messages_record

        record = messages_record(self.messages)
        return llava_row(replace(record, turns=record.turns[:-1]), str)  # [-1]: the reply to come


def repl(session: ChatSession, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
    """Read messages and commands until EOF or /quit; a terminal gets prompts, a pipe gets bare replies."""
    interactive = stdin.isatty()
    info = stdout if interactive else stderr
    if interactive:
        print(f"chatting with {session.vlm.path}; /help lists commands", file=info)
    for line in _lines(stdin, interactive):
        if not line:
            continue
        try:
            if line.startswith("/"):
                print(session.command(line), file=info)
                continue
            if interactive:
                stdout.write("model> ")
            for piece in session.stream(line):
                stdout.write(piece)
                stdout.flush()
            stdout.write("\n")
            stdout.flush()
        except Quit:
            return
        except DataError as e:  # a bad image or a prompt the model cannot take: the conversation goes on
            print(f"verbo: error: {e}", file=stderr)


def _lines(stdin: TextIO, interactive: bool) -> Iterator[str]:
    if not interactive:
        yield from (line.strip() for line in stdin)
        return
    importlib.import_module("readline")  # importing it gives input() line editing and history

    while True:
        try:
            yield input("you> ").strip()
        except EOFError:
            print()
            return
