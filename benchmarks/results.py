"""Shared by the benchmark scripts: print a result table and append it to benchmarks/RESULTS.md; the options and
held-out records of the benchmarks that run a trained quickstart model."""

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(text: str, record: bool = True, results: Path = RESULTS) -> None:
    print(text)
    if record:
        with open(results, "a", encoding="utf-8") as f:
            f.write("\n" + text + "\n")


def quickstart_options(description: str) -> argparse.ArgumentParser:
    """The options of a benchmark on a trained quickstart model and its held-out captions."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="quickstart/run/final", help="a trained model (default: make demo's)")
    parser.add_argument("--data", default="quickstart/data/shapes", help="the quickstart's synthesized data")
    parser.add_argument("--n", type=int, default=300, help="held-out images")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per variant")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a small shared machine, torch's threads waiting on "
                             "each other cost more than they give; 0 = torch's default, one per core)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    return parser


def held_out_records(args) -> list:
    """The first --n held-out records with references; sets torch's threads as --threads asks."""
    import torch

    from verbovision.data.sources import read_records
    from verbovision.quickstart import TEST_FILE

    if args.threads:
        torch.set_num_threads(args.threads)
    return [r for r in read_records(Path(args.data) / TEST_FILE) if r.references][: args.n]
