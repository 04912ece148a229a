"""`verbo caption` and `verbo ask`: a model's replies about images, printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import Command, add_decode_options, add_model_argument, decode_options_from_flags, load_vlm


def _caption_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders whose images are all captioned")
    p.add_argument("--prompt", help="what to ask (default: the caption prompt the model was trained on, in its "
                                    "language, else its family's (PaliGemma: 'caption en'), else 'Describe the image "
                                    "briefly.')")
    add_decode_options(p)


def cmd_caption(args: argparse.Namespace) -> None:
    from ..data.readers import image_files

    images = image_files(args.images)
    for image, caption in zip(images, _replies(args, images, args.prompt)):
        print(f"{image}\t{caption}")


CAPTION = Command(
    "caption images", _caption_arguments, cmd_caption,
    "examples:\n  verbo caption runs/qs/final img1.png img2.png\n"
    "  verbo caption runs/qs/final photos/                # every image in the folder, by name\n"
    "  verbo caption runs/qs/final img.png --top-p 0.9 --temperature 0.7 --seed 0", one_shot=True)


def _ask_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("question")
    add_decode_options(p)


def cmd_ask(args: argparse.Namespace) -> None:
    print(_replies(args, [args.image], args.question)[0])


ASK = Command("answer a question about an image", _ask_arguments, cmd_ask,
              "examples:\n  verbo ask runs/qs/final img.png \"How many shapes are there?\"", one_shot=True)


def _replies(args: argparse.Namespace, images: list[str], prompt: str | None) -> list[str]:
    """The model's reply to `prompt` (None: the model's caption prompt) about each image; says on stderr how many
    hit the token limit, if any did."""
    from ..data.images import image_size
    from ..infer.messages import prompt_record
    from ..infer.options import Truncation

    options = decode_options_from_flags(args)
    vlm = load_vlm(args)
    for image in images:  # a missing or unreadable one fails before any reply, not after the batches before its own
        image_size(Path(image))  # the header only: decoding every image twice would cost more than a GPU generating
    prompt = vlm.caption_prompt if prompt is None else prompt
    generations = vlm.generate_details([prompt_record(image, prompt) for image in images], options, args.batch_size)
    truncation = Truncation(options.max_new_tokens).add(g.finish_reason for g in generations)
    if truncation.truncated:
        print(f"{truncation} (raise --max-new-tokens for whole replies)", file=sys.stderr)
    return [g.text for g in generations]
