"""What every benchmark of `verbo eval --benchmark` is: where its official files are (and the hub dataset they can
be written from), how one item is asked, how the replies are scored by the benchmark's official rule, and how they
are written in its submission format."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..metrics import EvalResult


@dataclass(frozen=True)
class BenchmarkItem:
    """One image and the prompt a model answers about it."""

    id: str
    """The benchmark's own id of the item, as a string: question_id for VQA, image_id for captioning."""
    image: Path
    prompt: str
    """The exact user text sent with the image (the reference implementation's prompt)."""
    references: tuple[str, ...] = ()
    """Reference captions or human answers; empty where the split publishes none (VQAv2 test-dev)."""
    group: str = ""
    """The breakdown the benchmark reports, e.g. NoCaps' in/near/out-domain, POPE's random/popular/adversarial."""
    meta: Mapping[str, object] = field(default_factory=dict)
    """What the scorer or the submission file needs besides: image_id, question, OCR tokens, ground-truth objects."""


@dataclass(frozen=True)
class HubTable:
    """One config of a hub dataset and the columns the benchmark's writer reads from it."""

    config: str | None
    """None: the dataset's default config."""
    columns: tuple[str, ...]
    answers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Our split -> the columns read only there (its answers: a test split publishes none)."""

    def read(self, split: str) -> tuple[str, ...]:
        return self.columns + tuple(self.answers.get(split, ()))


@dataclass(frozen=True)
class HubDataset:
    """The hub dataset a benchmark can be read from, and how its rows become the official layout."""

    id: str
    splits: Mapping[str, str]
    """Our split -> the hub dataset's; a split not here has no hub data (e.g. one needing another file)."""
    tables: tuple[HubTable, ...]
    write: Callable[[Path, str, Sequence], None]
    """(folder, our split, the rows of each table) -> the official files and images written under the folder."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    """As given to --benchmark, e.g. "coco-karpathy"."""
    task: str
    """"caption" or "vqa" (POPE's yes/no questions are "vqa")."""
    splits: tuple[str, ...]
    """The splits it can read; the first is the default."""
    files: str
    """The files read under --data-dir, laid out as the benchmark publishes them (README and error messages)."""
    prompt_source: str
    """Where the prompt comes from (README)."""
    metric: str
    """What is scored and by which official rule (README)."""
    reference: str
    """The reference implementation whose numbers ours match (README)."""
    max_new_tokens: int
    read: Callable[[Path, str], list[BenchmarkItem]]
    """(data dir, split) -> the split's items, in the benchmark's order; DataError naming the missing file or key."""
    score: Callable[[Sequence[BenchmarkItem], Mapping[str, str]], EvalResult]
    """(items, reply by item id) -> values with intervals, details (breakdowns), per-item scores."""
    write_submission: Callable[[Sequence[BenchmarkItem], Mapping[str, str], Path], Path]
    """(items, reply by item id, folder) -> the file in the benchmark's submission format, written atomically."""
    hub: HubDataset | None = None
    """The hub dataset (lmms-eval's) the official files can be written from; None where none carries them all."""
