"""Print pip requirements pinning every dependency pyproject.toml declares (and the dev extras) to its floor:
`name>=X` becomes `name==X`, so CI proves the floors the package promises. torchvision is no dependency of ours, but
transformers' image processors need it in the oldest transformers we accept; it is pinned to the release paired
with the torch floor, as a CUDA install of that torch has it."""

import re
import sys
import tomllib
from pathlib import Path

TORCHVISION_FOR_TORCH = {"2.11": "0.26"}

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
pins = []
for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?(?:>=|==)([0-9][^,;\s]*)[^;]*(;.*)?", requirement)
    if not match:
        sys.exit(f"{requirement!r}: no floor (>= or ==) to pin")
    name, floor, marker = match.groups()
    pins.append(f"{name}=={floor}{marker or ''}")
    if name == "torch":
        pins.append(f"torchvision=={TORCHVISION_FOR_TORCH[floor]}")
print("\n".join(pins))
