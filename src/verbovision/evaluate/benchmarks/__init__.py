"""The benchmarks papers report, each read from its official files and scored by its official rule (base.py says
what a benchmark is)."""
