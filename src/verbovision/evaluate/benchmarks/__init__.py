"""The benchmarks papers report, each read from its official files and scored by its official rule (base.py says
what a benchmark is)."""

from . import coco_karpathy
from . import chair
from . import flickr30k
from . import gqa
from . import nocaps
from . import pope
from . import textcaps
from . import textvqa
from . import vizwiz
from . import vqav2
from .base import Benchmark

BENCHMARKS: dict[str, Benchmark] = {module.BENCHMARK.name: module.BENCHMARK for module in (
    coco_karpathy,
    nocaps,
    flickr30k,
    textcaps,
    vqav2,
    textvqa,
    vizwiz,
    gqa,
    pope,
    chair,
)}
"""Every benchmark `verbo eval --benchmark` runs, by name."""
