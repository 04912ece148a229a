"""The examples users copy: the README's and docs' code and commands, and every `verbo COMMAND --help` example.

Commands that fit a CPU test run as written, in a folder holding tiny stand-ins of the files they name (a trained
tiny model as `runs/qs/final` and `quickstart/run/final`, shapes images as `img.png`...); the others (hub models,
GPUs, hours of training) are parsed by `verbo`'s own parser, and their recipes loaded with their overrides.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from verbovision.cli import make_parser
from verbovision.config.parse import load_recipe, recipe_file

from .helpers import running, subcommands

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]+(\.\w+)?$|\.\.\.|[{}\[\]|]")
"""A synopsis token standing for something (MODEL, RECIPE.yaml, IMAGE..., {shapes,geometry}, [--out DIR])."""

SHELL_OPERATORS = {">", ">>", "2>", "|", "&&", ";"}
"""Where the shell takes over from the verbo command on a line."""


def command_words(line: str) -> list[str] | None:
    """The arguments of the `verbo` command on a line (`verbo ...`, `... | verbo ...`, `accelerate launch ... -m
    verbovision ...`), comments and redirections dropped; None where the line runs no verbo command."""
    for start in ("verbo ", "-m verbovision "):
        if line.startswith(start) or f" {start}" in line:
            rest = line[line.index(start) + len(start):] if line.startswith(start) else line.split(f" {start}", 1)[1]
            words = shlex.split(rest, comments=True)
            return words[: next((i for i, w in enumerate(words) if w in SHELL_OPERATORS), len(words))]
    return None


def help_examples() -> list[str]:
    """Every example line of every `verbo ... --help` that runs verbo."""
    lines = []
    for _, parser in subcommands(make_parser()):
        epilog = parser.epilog or ""
        for line in epilog.split("examples:\n", 1)[-1].splitlines() if "examples:" in epilog else []:
            if line.startswith("  ") and command_words(line.strip()) is not None:
                lines.append(line.strip())
    return lines


def doc_commands() -> list[str]:
    """Every verbo command the README and docs show: lines of code blocks and inline code."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        # Fences at line starts, so that the prose between two blocks is not read as one (a closing fence is no
        # opening one); a line ending in a backslash goes on on the next.
        blocks = [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
                  if lang in ("", "bash", "sh")]
        candidates = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
        candidates += [" ".join(code.split()) for code in re.findall(r"`((?:verbo|accelerate launch)\s[^`]+)`", text)]
        found += [c for c in candidates if command_words(c) is not None]
    return found


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


def check_parses(line: str) -> argparse.Namespace:
    """`verbo`'s parser takes the line as it is; the repository files and recipes it names exist and load."""
    words = command_words(line)
    try:
        args = make_parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"verbo does not take: {line}")
    for word in words:
        if word.startswith(("recipes/", "configs/")):
            assert (REPO / word).is_file(), f"{line}: {word} does not exist"
    if words[0] == "train":
        load_recipe(REPO / recipe_file(args.recipe), args.overrides)  # every override names a key of the recipe
    return args


def command_path(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The subcommand the words name (`data`, `synth`) and the words after it."""
    commands = dict(subcommands(make_parser()))
    path = ()
    while words and (*path, words[0]) in commands:
        path, words = (*path, words[0]), words[1:]
    return path, words


def check_synopsis(line: str) -> None:
    """A command named, or a synopsis with placeholders: the command exists and takes every flag shown."""
    path, words = command_path(command_words(line))
    assert path, f"{line}: no such command"
    known = {option for action in dict(subcommands(make_parser()))[path]._actions for option in action.option_strings}
    flags = {word.strip("[]") for word in words if word.strip("[]").startswith("--")}
    assert flags <= known, f"{line}: verbo {' '.join(path)} has no {sorted(flags - known)}"


def test_every_documented_command_is_one_verbo_takes(monkeypatch):
    monkeypatch.chdir(REPO)  # where the README's relative paths (recipes/, configs/) are
    commands = doc_commands()
    assert "verbo train recipes/geovlm.yaml stages.0.lr=3e-4" in commands and "verbo train quickstart" in commands
    for line in commands:
        words = command_words(line)
        if "--help" in words:  # `verbo --help`, `verbo COMMAND --help`: test_cli.py reads them
            continue
        if any(PLACEHOLDER.search(word) for word in words) or not command_path(words)[1]:
            check_synopsis(line)
        else:
            check_parses(line)


def test_every_help_example_parses(monkeypatch):
    monkeypatch.chdir(REPO)
    examples = help_examples()
    assert len(examples) > 25 and any(line.startswith("printf ") for line in examples)
    for line in examples:
        check_parses(line)


# ------------------------------------------------------------------------------------------- run as written


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, plain_model_dir, shapes_data) -> Path:
    """A folder holding what the examples name: the quickstart's model at both places examples put it, images, and
    the shapes data."""
    root = tmp_path_factory.mktemp("examples")
    for run in ("runs/qs/final", "quickstart/run/final"):
        (root / run).parent.mkdir(parents=True)
        (root / run).symlink_to(plain_model_dir.resolve())
    images = sorted((shapes_data / "images").glob("*.png"))
    for name, image in zip(("a.png", "b.png", "img.png", "img1.png", "img2.png", "photo.png"), images):
        shutil.copy(image, root / name)
    (root / "photos").mkdir()
    for image in images[:3]:
        shutil.copy(image, root / "photos" / image.name)
    (root / "data").mkdir()
    (root / "data/shapes").symlink_to(shapes_data)
    return root


def run_help_example(line: str, cwd: Path) -> str:
    """Run one help example as written (a `printf ... |` feeding it included); returns what it printed."""
    assert line in help_examples(), f"not a help example: {line}"
    *feed, command = line.split(" | ")
    given = None
    if feed:
        printf = shlex.split(feed[0])
        assert printf[0] == "printf"
        given = printf[1].encode().decode("unicode_escape")
    result = subprocess.run([sys.executable, "-m", "verbovision", *command_words(command)], input=given, cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{line}\n{result.stderr}"
    return result.stdout


def test_help_examples_that_fit_a_cpu_run_as_written(workspace):
    captions = run_help_example("verbo caption runs/qs/final img1.png img2.png", workspace)
    assert [row.split("\t")[0] for row in captions.splitlines()] == ["img1.png", "img2.png"]
    folder = run_help_example("verbo caption runs/qs/final photos/                # every image in the folder, by name",
                              workspace)
    assert [row.split("\t")[0] for row in folder.splitlines()] == sorted(f"photos/{p.name}"
                                                                      for p in (workspace / "photos").iterdir())
    sampled = run_help_example("verbo caption runs/qs/final img.png --top-p 0.9 --temperature 0.7 --seed 0", workspace)
    assert sampled.startswith("img.png\t")
    assert run_help_example('verbo ask runs/qs/final img.png "How many shapes are there?"', workspace).strip()
    run_help_example("verbo eval runs/qs/final --data data/shapes/test/caption_short_en.json --out eval/qs", workspace)
    scores = run_help_example("verbo score eval/qs/predictions.jsonl --metrics cider,bleu", workspace)
    assert "CIDEr" in scores and "Bleu_4" in scores
    chat = "printf 'Describe the image.\\nWhat colour is it?\\n/save chat.json\\n' | verbo chat runs/qs/final --image photo.png"
    run_help_example(chat, workspace)
    assert (workspace / "chat.json").is_file()


def test_readme_python_example_runs(workspace, monkeypatch):
    (example,) = [block for block in python_blocks() if "verbovision.load" in block]
    monkeypatch.chdir(workspace)
    exec(compile(example, "README.md", "exec"), {})


def test_readme_openai_example_runs_against_verbo_serve(workspace, monkeypatch, capsys):
    """The README's client code, as written but for the port, with the real openai client against `verbo serve`."""
    (example,) = [block for block in python_blocks() if "from openai import OpenAI" in block]
    assert 'base_url="http://127.0.0.1:8000/v1"' in example and 'model="verbo"' in example
    with running("serve", workspace / "quickstart/run/final") as (_, url):
        monkeypatch.chdir(workspace)
        namespace = {}
        exec(compile(example.replace("http://127.0.0.1:8000", url), "README.md", "exec"), namespace)
    reply = namespace["reply"]
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert capsys.readouterr().out == reply.choices[0].message.content + "\n"
