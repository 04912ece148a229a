"""Shared by the benchmark scripts: print a result table and append it to benchmarks/RESULTS.md."""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(text: str, record: bool = True) -> None:
    print(text)
    if record:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + text + "\n")
