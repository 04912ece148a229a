"""What `GET /metrics` reports: time to first token and latency of recent requests, generated tokens per second."""

from __future__ import annotations

import threading
import time
from collections import deque

RECENT = 1000
"""Requests the percentiles are taken over (the latest)."""


class Metrics:
    """Counters the worker thread updates and the event loop reads (hence the lock)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.first_token_s: deque[float] = deque(maxlen=RECENT)
        self.latency_s: deque[float] = deque(maxlen=RECENT)
        self.generated_tokens = 0
        self.busy_s = 0.0
        """Seconds the worker spent generating (prefills, decoding steps, whole batches)."""

    def record(self, submitted: float, generations: list) -> None:
        """A request answered: `submitted` and its generations' first-token times are `time.monotonic()` readings."""
        now = time.monotonic()
        first = min((g.first_token_at for g in generations if g.first_token_at is not None), default=now)
        with self.lock:
            self.first_token_s.append(first - submitted)
            self.latency_s.append(now - submitted)
            self.generated_tokens += sum(g.completion_tokens for g in generations)

    def add_busy(self, seconds: float) -> None:
        with self.lock:
            self.busy_s += seconds

    def snapshot(self) -> dict:
        with self.lock:
            first, latency = sorted(self.first_token_s), sorted(self.latency_s)
            tokens, busy = self.generated_tokens, self.busy_s
        return {"time_to_first_token_s": {"p50": percentile(first, 0.5), "p95": percentile(first, 0.95)},
                "latency_s": {"p50": percentile(latency, 0.5), "p95": percentile(latency, 0.95)},
                "over_requests": len(latency), "generated_tokens": tokens, "busy_s": round(busy, 3),
                "generated_tokens_per_s": round(tokens / busy, 2) if busy else None}


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-quantile of sorted values (nearest rank), rounded to the millisecond; None without values."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)
