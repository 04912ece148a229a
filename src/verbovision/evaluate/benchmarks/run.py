"""`verbo eval --benchmark`: read each named benchmark's items, generate a reply to each with one model, score them
by the benchmark's official rule and write `OUT/<benchmark>/` (predictions.jsonl, the submission file, report.json,
report.md, metrics.png) and `OUT/summary.json`.

Each benchmark is read from its official files under --data-dir, or from a hub dataset (hub.py), which the settings
and summary record. A run resumes: replies are kept in chunk files (`OUT/<benchmark>/generated/`, each written
atomically) as they are generated, a rerun with the same settings (`settings.json`) generates only what is missing,
and skips a benchmark whose report is written.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ...config.parse import check_choice
from ...errors import ConfigError, DataError
from ...files import read_json, write_atomic, write_json
from ...infer.options import BATCH_SIZE, DecodeOptions, Generation, Truncation
from ..compare import Comparison, check_same_items, compare, write_comparison
from ..report import write_eval_folder
from . import BENCHMARKS
from .base import Benchmark, BenchmarkItem
from .hub import benchmark_data, check_data

if TYPE_CHECKING:
    from ...data.records import Record

CHUNK_ITEMS = 256
"""Replies kept per chunk file: at most this many are generated again after an interruption."""
LIMIT_SEED = 0


class Generator(Protocol):
    """What generates the replies: a loaded VLM, or a client of a server that answers the same way."""

    def generate_details(self, records: Sequence[Record], options: DecodeOptions,
                         batch_size: int) -> list[Generation]: ...


@dataclass(frozen=True)
class BenchmarkRun:
    """What `verbo eval --benchmark` was asked."""

    benchmarks: tuple[Benchmark, ...]
    data_dir: str | Path | None
    """--data-dir: official files, a local copy of a hub dataset, a hub id, or None: each one's hub dataset."""
    out: Path
    split: str | None = None
    """The split of every benchmark (None: each benchmark's default, its first)."""
    limit: int | None = None
    """Score a seeded sample of this many items of each benchmark (see `sample`)."""
    options: DecodeOptions = field(default_factory=DecodeOptions)
    max_new_tokens: int | None = None
    """None: each benchmark's own (the reference implementation's)."""
    batch_size: int = BATCH_SIZE
    about: Mapping[str, object] = field(default_factory=dict)
    """The model and how it was loaded: part of the settings a resumed run must share."""


def benchmarks_named(text: str) -> tuple[Benchmark, ...]:
    """The benchmarks of a comma-separated list, each checked (did-you-mean for a misspelt one)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--benchmark: no benchmark named; use {', '.join(BENCHMARKS)}")
    for name in names:
        starting = [known for known in BENCHMARKS if known.startswith(name)]
        if name not in BENCHMARKS and starting:  # a name's start ("coco"): too short for check_choice's difflib
            raise ConfigError(f"--benchmark: {name!r} unknown (did you mean {starting[0]!r}?); use "
                              f"{', '.join(BENCHMARKS)}")
        check_choice(name, tuple(BENCHMARKS), "--benchmark")
    return tuple(BENCHMARKS[name] for name in dict.fromkeys(names))


def sample(items: list[BenchmarkItem], limit: int | None) -> list[BenchmarkItem]:
    """`limit` items drawn with seed LIMIT_SEED, kept in the benchmark's order (all of them without a limit): a
    sample of every part of the split (NoCaps' domains, VQAv2's answer types), the same on every run."""
    if limit is None or limit >= len(items):
        return items
    chosen = sorted(random.Random(LIMIT_SEED).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def run_benchmarks(run: BenchmarkRun, open_generator: Callable[[], Generator]) -> dict[str, dict]:
    """Every benchmark of `run`, each read and checked before the model is opened (`open_generator`, called once
    and only if a benchmark has replies left to generate); benchmark name -> its report.json."""
    check_data(run.benchmarks, run.data_dir)
    planned = [(benchmark, *load_items(benchmark, run.data_dir, run.split, run.limit)) for benchmark in run.benchmarks]
    generator = None
    reports = {}
    for benchmark, items, origin in planned:
        folder = run.out / benchmark.name
        settings = _settings(benchmark, items, run, origin)
        _claim(folder, settings)
        if not (folder / "report.md").is_file():
            generator = generator or open_generator()
            _evaluate(benchmark, items, folder, generator, run, settings)
        reports[benchmark.name] = read_json(folder / "report.json")
    write_json(run.out / "summary.json", summary(reports))
    return reports


def compare_benchmarks(run: BenchmarkRun, other: str | Path) -> dict[str, Comparison]:
    """`run`'s finished benchmarks against another run of the same benchmarks (`other`: its --out folder): both
    sides' replies scored by each benchmark's rule on the same items, tested per metric (`compare.compare`), and
    written into each of `run`'s benchmark reports."""
    check_data(run.benchmarks, run.data_dir)
    comparisons = {}
    for benchmark in run.benchmarks:
        items, _ = load_items(benchmark, run.data_dir, run.split, run.limit)
        ours = _replies(run.out / benchmark.name / "predictions.jsonl")
        theirs_file = Path(other) / benchmark.name / "predictions.jsonl"
        if not theirs_file.is_file():
            raise DataError(f"{theirs_file}: not found; --compare takes the --out folder of another verbo eval "
                            f"--benchmark run of {benchmark.name}")
        theirs = _replies(theirs_file)
        check_same_items(dict.fromkeys(ours, ()), dict.fromkeys(theirs, ()), theirs_file)  # ids only: replies differ
        comparison = compare(benchmark.score(items, ours), benchmark.score(items, theirs),
                             str(Path(other) / benchmark.name))
        write_comparison(run.out / benchmark.name, comparison)
        comparisons[benchmark.name] = comparison
    return comparisons


def _replies(predictions: Path) -> dict[str, str]:
    """Reply by item id from a benchmark's predictions.jsonl; a DataError naming the file where it is not one."""
    lines = [line for line in predictions.read_text("utf-8").splitlines() if line.strip()]
    try:
        return {str(row["id"]): row["prediction"] for row in map(json.loads, lines)}
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{predictions}: not the predictions.jsonl of a verbo eval --benchmark run ({e!r}); "
                        "--compare takes the --out folder of one") from None


def load_items(benchmark: Benchmark, data: str | Path | None, split: str | None,
               limit: int | None) -> tuple[list[BenchmarkItem], dict]:
    """The items of a split (None: the benchmark's default), sampled down to `limit`, their images checked, and
    where they were read from (`hub.DataSource.origin`); `data` as `BenchmarkRun.data_dir`."""
    split = split or benchmark.splits[0]
    check_choice(split, benchmark.splits, f"--split of {benchmark.name}")
    source = benchmark_data(benchmark, data, split)
    items = sample(benchmark.read(source.folder, split), limit)
    if not items:
        raise DataError(f"{benchmark.name}: no items in split {split!r} of {source.folder}")
    missing = next((item.image for item in items if not Path(item.image).is_file()), None)
    if missing is not None:
        raise DataError(f"{benchmark.name}: image {missing} not found; --data-dir should hold {benchmark.files}")
    return items, dict(source.origin)


def _options(benchmark: Benchmark, run: BenchmarkRun) -> DecodeOptions:
    return replace(run.options, max_new_tokens=run.max_new_tokens or benchmark.max_new_tokens)


def _settings(benchmark: Benchmark, items: list[BenchmarkItem], run: BenchmarkRun, origin: dict) -> dict:
    """What the replies depend on: a rerun resumes only where these are the same (the data's origin included)."""
    return {**run.about, "benchmark": benchmark.name, "split": run.split or benchmark.splits[0], "limit": run.limit,
            "items": len(items), **origin, "decoding": asdict(_options(benchmark, run))}


def _claim(folder: Path, settings: dict) -> None:
    """Keep `settings` in the benchmark's folder, or find the same there (a resumed run); refuse other settings'
    replies, which would mix into these."""
    kept = read_json(folder / "settings.json")
    if kept is None:
        write_json(folder / "settings.json", settings)
        return
    if json.loads(json.dumps(settings)) != kept:
        changed = sorted(key for key in {*settings, *kept}
                         if json.dumps(settings.get(key)) != json.dumps(kept.get(key)))
        raise DataError(f"{folder} holds replies of other settings ({', '.join(changed)} differ); pass another --out "
                        "or delete that folder")


def _evaluate(benchmark: Benchmark, items: list[BenchmarkItem], folder: Path, generator: Generator,
              run: BenchmarkRun, settings: dict) -> None:
    options = _options(benchmark, run)
    generated = _generate(items, folder / "generated", generator, options, run.batch_size)
    replies = {item.id: generated[item.id]["prediction"] for item in items}
    result = benchmark.score(items, replies)
    result.predictions = [{"id": item.id, "image": str(item.image), "prompt": item.prompt,
                           "prediction": replies[item.id], "finish_reason": generated[item.id]["finish_reason"],
                           "references": list(item.references), "group": item.group} for item in items]
    result.truncation = Truncation(options.max_new_tokens).add(row["finish_reason"] for row in result.predictions)
    submission = benchmark.write_submission(items, replies, folder)
    about = {**settings, "prompt": benchmark.prompt_source, "metric": benchmark.metric,
             "reference": benchmark.reference, "submission": submission.name}
    write_eval_folder(folder, result, about)  # report.md last: the mark of a finished benchmark
    shutil.rmtree(folder / "generated", ignore_errors=True)


def replies_for(items: Sequence[BenchmarkItem], generator: Generator, options: DecodeOptions,
                batch_size: int) -> list[Generation]:
    """The generator's reply to each item: its image and prompt as one user turn."""
    from ...infer.messages import prompt_record

    return generator.generate_details([prompt_record(item.image, item.prompt) for item in items], options, batch_size)


def _generate(items: list[BenchmarkItem], chunks: Path, generator: Generator, options: DecodeOptions,
              batch_size: int) -> dict[str, dict]:
    """Item id -> {prediction, finish_reason}: those of earlier chunk files, then the rest generated CHUNK_ITEMS at a
    time, each chunk kept as soon as it is generated."""
    done = {row["id"]: row for path in sorted(chunks.glob("*.jsonl"))
            for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
    todo = [item for item in items if item.id not in done]
    for start in range(0, len(todo), CHUNK_ITEMS):
        chunk = todo[start:start + CHUNK_ITEMS]
        generations = replies_for(chunk, generator, options, batch_size)
        rows = [{"id": item.id, "prediction": g.text, "finish_reason": g.finish_reason}
                for item, g in zip(chunk, generations)]
        write_atomic(chunks / f"{len(list(chunks.glob('*.jsonl'))):06d}.jsonl",
                     "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        done.update((row["id"], row) for row in rows)
    return done


def summary(reports: Mapping[str, dict]) -> dict:
    """summary.json: per benchmark, its split, where its data came from (the folder, or the hub dataset and its
    fingerprint), item count, metric values, what was skipped and the submission file."""
    return {name: {"split": report["split"], "data": report.get("hub", report.get("data_dir")),
                   "records": report["records"], "metrics": report["metrics"], "skipped": report["skipped"],
                   "submission": report["submission"]}
            for name, report in reports.items()}


def summary_rows(reports: Mapping[str, dict]) -> list[tuple[str, str, str]]:
    """(benchmark, metric, value) rows of the summary table: every value, and why a metric has none."""
    rows = []
    for name, report in reports.items():
        rows += [(name, metric, f"{value:.4f}") for metric, value in report["metrics"].items()]
        rows += [(name, metric, reason) for metric, reason in report["skipped"].items()]
    return rows
