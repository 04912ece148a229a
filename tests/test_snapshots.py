"""What a user sees and writes stays as it is unless a change means to alter it: `verbo --help` and every command's
help, and every shipped recipe as parsed (its keys with their defaults filled in), are committed in
tests/snapshots/ and compared whole.

A change meant to alter them rewrites the files (`VERBO_WRITE_SNAPSHOTS=1 pytest tests/test_snapshots.py`) and the diff
shows what users will see differ. Help text is argparse's, which words it per Python version: one file per version."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pytest

from verbovision.cli import make_parser
from verbovision.recipe import load_recipe, shipped_recipe, to_dict

SNAPSHOTS = Path(__file__).parent / "snapshots"
RECIPES = Path(__file__).resolve().parents[1] / "src" / "verbovision" / "recipes"


def command_parsers(parser: argparse.ArgumentParser, prefix: str = "verbo") -> dict[str, argparse.ArgumentParser]:
    """Every command line's parser, by its words: `verbo`, `verbo train`, `verbo data synth`..."""
    found = {prefix: parser}
    for action in parser._actions:  # argparse keeps its subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(command_parsers(sub, f"{prefix} {name}"))
    return found


def help_texts() -> str:
    return "".join(f"$ {words} --help\n{parser.format_help()}\n" for words, parser in command_parsers(make_parser()).items())


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
    words = command_parsers(make_parser())
    assert {"verbo", "verbo train", "verbo data synth", "verbo serve", "verbo eval"} <= words.keys()
    assert all(f"$ {w} --help\n" in help_texts() for w in words)
