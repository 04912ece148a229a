"""The import rule of ../shared/DESIGN.md, read from the source (AST, imports inside functions included): packages
follow the pipeline and each imports only from those to its left; `serve` only from `infer`, `data` and the leaves;
nothing imports `cli`; and no module imports itself back through others (no cycle)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

import verbovision

PACKAGE = Path(verbovision.__file__).parent

LAYERS = [
    {"errors", "files", "progress"},
    {"config"},
    {"families"},
    {"data"},
    {"model"},
    {"merge", "infer"},
    {"evaluate"},
    {"train"},
    {"quickstart"},
    {"cli"},
]
"""The pipeline, left to right: a unit (a top-level module or package) imports only units of the layers before its
own (and itself)."""

LEAVES = LAYERS[0]
OUTSIDE_THE_PIPELINE = {"serve": {"infer", "data"} | LEAVES}
"""Units beside the pipeline and all they may import; only cli imports them."""

ENTRY_POINTS = {"__init__", "__main__"}
"""`verbovision.load` (the package itself) and `python -m verbovision`: they import, nothing imports them."""


def module_imports(package: Path) -> dict[str, set[str]]:
    """Each module of `package` (dotted, relative to it: "data.records") -> the modules of the package it imports,
    anywhere in its code. `from . import x` counts as importing the submodule x when x is one."""
    modules = {_module_name(path, package): path for path in package.rglob("*.py")}
    imports = defaultdict(set)
    for name, path in modules.items():
        imports[name]  # a module importing nothing is still a module
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, name, path.name == "__init__.py", package.name):
                imports[name].add(target if target in modules else _submodule(target, modules))
    return dict(imports)


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _targets(node: ast.AST, module: str, is_package: bool, root: str) -> list[str]:
    """The package modules an import statement names (dotted, relative to the package root)."""
    if isinstance(node, ast.Import):
        return [a.name.removeprefix(root + ".") for a in node.names if a.name.startswith(root + ".")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        if module == "__init__":
            here = []
        base = here[: len(here) - (node.level - 1)]
    elif node.module == root or (node.module or "").startswith(root + "."):
        base = []
    else:
        return []
    named = node.module.removeprefix(root).lstrip(".") if not node.level and node.module else node.module
    prefix = ".".join(base + ([named] if named else []))
    return [f"{prefix}.{a.name}" if prefix else a.name for a in node.names]


def _submodule(target: str, modules: dict) -> str:
    """`pkg.name` where name is not a module: the module `pkg` (its __init__, or the package root)."""
    parent = target.rpartition(".")[0]
    if not parent:
        return "__init__"
    return parent if parent in modules else target


def unit(module: str) -> str:
    return module.split(".")[0]


def layer_violations(imports: dict[str, set[str]]) -> list[str]:
    """Every import against the rule, as `importer -> imported: why`."""
    position = {name: index for index, layer in enumerate(LAYERS) for name in layer}
    found = []
    for importer, targets in sorted(imports.items()):
        for target in sorted(targets):
            source, wanted = unit(importer), unit(target)
            if source == wanted or importer in ENTRY_POINTS:
                continue
            if target in ENTRY_POINTS:
                found.append(f"{importer} -> {target}: nothing imports the package's entry points")
            elif wanted == "cli":
                found.append(f"{importer} -> {target}: nothing imports cli")
            elif wanted in OUTSIDE_THE_PIPELINE:
                if source != "cli":
                    found.append(f"{importer} -> {target}: only cli imports {wanted}")
            elif source in OUTSIDE_THE_PIPELINE:
                if wanted not in OUTSIDE_THE_PIPELINE[source]:
                    found.append(f"{importer} -> {target}: {source} imports only {sorted(OUTSIDE_THE_PIPELINE[source])}")
            elif source not in position or wanted not in position:
                found.append(f"{importer} -> {target}: {sorted({source, wanted} - position.keys())} not in LAYERS")
            elif position[wanted] >= position[source]:
                found.append(f"{importer} -> {target}: {wanted} is not to the left of {source}")
    return found


def cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: each strongly connected group of more than one module (or a module importing itself)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(imports.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1 or module in imports.get(module, ()):
                groups.append(sorted(group))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles():
    assert cycles(module_imports(PACKAGE)) == []


def test_every_import_follows_the_layers():
    assert layer_violations(module_imports(PACKAGE)) == []


def test_every_import_names_a_module_of_the_package():
    imports = module_imports(PACKAGE)
    assert {target for targets in imports.values() for target in targets} - imports.keys() - {"__init__"} == set()


def test_every_unit_has_a_place():
    placed = set().union(*LAYERS) | OUTSIDE_THE_PIPELINE.keys() | ENTRY_POINTS
    assert {unit(module) for module in module_imports(PACKAGE)} - placed == set()


def test_no_private_name_is_imported_across_modules():
    """What a module shares is public; an `_underscored` name stays in the module that defines it."""
    private = [f"{path.relative_to(PACKAGE)}: {alias.name}" for path in PACKAGE.rglob("*.py")
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert private == []


def test_tests_use_public_names():
    tests = Path(__file__).parent
    private = [f"{path.name}: {alias.name}" for path in tests.glob("*.py")
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
               and (node.module or "").startswith("verbovision")
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert private == []


def planted(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "verbovision"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_a_planted_cycle_is_found_inside_a_function(tmp_path):
    package = planted(tmp_path, {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/records.py": "from .batching import Collator\n",
        "data/batching.py": "def collate():\n    from . import records\n",
        "data/sources.py": "from .records import Record\n",
    })
    assert cycles(module_imports(package)) == [["data.batching", "data.records"]]


def test_planted_imports_against_the_rule_are_found(tmp_path):
    package = planted(tmp_path, {
        "__init__.py": "from .infer import VLM\n",
        "data/__init__.py": "",
        "data/records.py": "from ..model.store import load_model\nfrom ..errors import DataError\n",
        "model/__init__.py": "",
        "model/store.py": "from verbovision.cli import main\n",
        "infer.py": "from . import merge\n",
        "merge.py": "",
        "errors.py": "",
        "serve.py": "from .train import run\n",
        "train.py": "from .serve import app\n",
        "cli.py": "from .serve import app\n",
    })
    assert layer_violations(module_imports(package)) == [
        "data.records -> model.store: model is not to the left of data",
        "infer -> merge: merge is not to the left of infer",
        "model.store -> cli: nothing imports cli",
        "serve -> train: serve imports only ['data', 'errors', 'files', 'infer', 'progress']",
        "train -> serve: only cli imports serve",
    ]


@pytest.mark.parametrize("statement, target", [
    ("from ..files import write_json", "files"),
    ("from . import encoding", "data.encoding"),
    ("from .encoding import Encoder", "data.encoding"),
    ("from verbovision.model import store", "model.store"),
    ("import verbovision.files", "files"),
    ("from .. import families", "families"),
])
def test_imports_resolve_to_modules(tmp_path, statement, target):
    package = planted(tmp_path, {
        "__init__.py": "", "files.py": "", "families.py": "", "model/__init__.py": "", "model/store.py": "",
        "data/__init__.py": "", "data/encoding.py": "", "data/records.py": statement + "\n",
    })
    assert module_imports(package)["data.records"] == {target}


def test_the_readme_lays_out_every_unit():
    """README's "How the code is laid out" table names each top-level module and package once, in layer order."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    named = [name.removesuffix(".py").removesuffix("/") for line in section.splitlines() if line.startswith("| `")
             for name in re.findall(r"`([\w]+(?:\.py|/))`", line.split("|")[1])]
    units = {unit(module) for module in module_imports(PACKAGE)} - ENTRY_POINTS
    assert sorted(named) == sorted(units)
    pipeline = [name for name in named if name not in OUTSIDE_THE_PIPELINE]
    position = {name: index for index, layer in enumerate(LAYERS) for name in layer}
    assert [position[name] for name in pipeline] == sorted(position[name] for name in pipeline)
