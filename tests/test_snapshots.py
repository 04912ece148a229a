"""What a user sees and writes stays as it is unless a change means to alter it: `verbo --help` and every command's
help, and every shipped recipe as parsed (its keys with their defaults filled in), are committed in
tests/snapshots/ and compared whole.

A change meant to alter them rewrites the files (`VERBO_WRITE_SNAPSHOTS=1 pytest tests/test_snapshots.py`) and the diff
shows what users will see differ. Help text is argparse's, which words it per Python version: one file per version."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from verbovision.cli import make_parser
from verbovision.config.parse import load_recipe, shipped_recipe, to_dict

from .helpers import subcommands

SNAPSHOTS = Path(__file__).parent / "snapshots"
RECIPES = Path(__file__).resolve().parents[1] / "src" / "verbovision" / "recipes"


def help_texts() -> str:
    parsers = [((), make_parser()), *subcommands(make_parser())]
    return "".join(f"$ {' '.join(('verbo', *words))} --help\n{parser.format_help()}\n" for words, parser in parsers)


def parsed_recipes() -> str:
    recipes = {path.stem: to_dict(load_recipe(shipped_recipe(path.stem))) for path in sorted(RECIPES.glob("*.yaml"))}
    return json.dumps(recipes, indent=1, sort_keys=True) + "\n"


SNAPSHOTTED = {
    f"help-python{sys.version_info.major}.{sys.version_info.minor}.txt": help_texts,
    "recipes.json": parsed_recipes,
}


@pytest.mark.parametrize("name", SNAPSHOTTED)
def test_snapshot_is_unchanged(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # argparse wraps to the terminal's width
    current, path = SNAPSHOTTED[name](), SNAPSHOTS / name
    if os.environ.get("VERBO_WRITE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(current)
    if not path.exists():
        pytest.skip(f"no {path.name} recorded: record it with VERBO_WRITE_SNAPSHOTS=1 on the commit before the change")
    assert current == path.read_text()


def test_every_command_is_in_the_help_snapshot():
    words = [" ".join(("verbo", *path)) for path, _ in subcommands(make_parser())]
    assert {"verbo train", "verbo data synth", "verbo serve", "verbo eval"} <= set(words)
    assert all(f"$ {w} --help\n" in help_texts() for w in ["verbo", *words])
