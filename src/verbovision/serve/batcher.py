"""Batching: a request handler validates its request, decodes its images, checks its limits and queues it as a `Job`;
one worker thread owns the model and generates.

Continuous batching (`infer.continuous`), for greedy requests to a model it fits: a request joins the running batch
at the next decoding step and each reply leaves it at its end, so new requests never wait for a batch to finish.
Dynamic batching, for sampling and beam search (and every request where continuous batching does not fit, or with
`--batching dynamic`): the oldest waiting job runs together with every compatible job waiting or arriving within
`max_wait_ms`, up to `batch_size` replies, as one `VLM.generate_details` call; while it runs, new requests queue up and
form the next batch. Both kinds share the worker: a dynamic batch runs between two decoding steps."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ApiError
from .metrics import Metrics

if TYPE_CHECKING:  # imported lazily at run time: `verbo --help` should not load torch or the web stack
    from ..infer.continuous import ContinuousBatch
    from ..infer.vlm import VLM


@dataclass
class Job:
    """A request waiting for or in a batch: n copies of its record, and the way back to its handler."""

    records: list
    """One record per choice."""
    options: list
    """One DecodeOptions per record."""
    loop: asyncio.AbstractEventLoop
    """The event loop of the handler waiting for the result."""
    events: asyncio.Queue
    """("text", choice, piece), then ("done", generations) or ("error", exception)."""
    streaming: bool
    """Whether the handler wants the text as it grows."""
    key: tuple = ()
    """Jobs with equal keys can share a batch (set by the batcher)."""
    metrics: Metrics | None = None
    """Where its answer is counted (set by the batcher)."""
    submitted: float = field(default_factory=time.monotonic)

    def send(self, *event) -> None:
        """Hand an event to the job's handler (called from the worker thread)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def text(self, choice: int, piece: str) -> None:
        self.send("text", choice, piece)

    def done(self, generations: list) -> None:
        if self.metrics is not None:
            self.metrics.record(self.submitted, generations)
        self.send("done", generations)

    def failed(self, error: Exception) -> None:
        self.send("error", error)


class Batcher:
    """Runs queued jobs on one worker thread, the only thread that generates with the model: greedy jobs through
    `continuous` (when given), the others in dynamic batches."""

    def __init__(self, vlm: VLM, max_rows: int, max_wait: float, continuous: ContinuousBatch | None = None):
        self.vlm = vlm
        self.max_rows = max(1, max_rows)
        self.max_wait = max_wait
        self.continuous = continuous
        self.queue: queue.Queue = queue.Queue()
        self.waiting: deque[Job] = deque()
        """Jobs for dynamic batching."""
        self.closing = False
        self.closed = False
        """The worker took the close signal: it stops once nothing is left."""
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}
        """Continuous batching counts a batch from the step its first rows join to the step its last rows leave."""
        self.metrics = Metrics()
        self._unique = itertools.count()
        self.thread = threading.Thread(target=self._run, name="verbo-batcher")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Finish every queued job, then stop the worker."""
        self.closing = True
        self.queue.put(None)
        self.thread.join()

    def submit(self, job: Job) -> None:
        if self.closing:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
        options = job.options[0]
        # A seeded sampler runs alone: its output must not depend on which requests shared its batch.
        alone = (next(self._unique),) if options.sampling and options.seed is not None else ()
        job.key = options.batch_key() + alone
        job.metrics = self.metrics
        self.queue.put(job)

    @property
    def queued(self) -> int:
        """Requests not generating yet."""
        joining = len(self.continuous.waiting) if self.continuous is not None else 0
        return len(self.waiting) + self.queue.qsize() + joining

    def _run(self) -> None:
        while self._gather():
            if self.waiting:
                self._execute(self._collect())
            if self.continuous is not None and self.continuous.busy:
                self._step()

    def _busy(self) -> bool:
        return bool(self.waiting) or (self.continuous is not None and self.continuous.busy)

    def _gather(self) -> bool:
        """Take the queued jobs: when idle, wait for one and then up to max_wait for more (to start together);
        False once closed and nothing is left."""
        if self._busy():
            while self._take(block=False):
                pass
            return True
        if self.closed or not self._take(block=True):
            return False
        deadline = time.monotonic() + self.max_wait
        while self._take(timeout=max(0.0, deadline - time.monotonic())):
            pass
        return True

    def _take(self, block: bool = True, timeout: float | None = None) -> bool:
        """Route one queued job to continuous or dynamic batching; False if none came (or the close signal)."""
        try:
            job = self.queue.get(block=block, timeout=timeout)
        except queue.Empty:
            return False
        if job is None:
            self.closed = True
            return False
        if self.continuous is not None and job.options[0].plain_greedy:
            try:
                self.continuous.submit(job)
            except Exception as error:  # noqa: BLE001 - its prompt could not be encoded
                job.failed(error)
        else:
            self.waiting.append(job)
        return True

    def _collect(self) -> list[Job]:
        """The oldest waiting job and the compatible jobs waiting, up to max_rows replies."""
        batch = [self.waiting.popleft()]
        rows = len(batch[0].records)
        for job in list(self.waiting):
            if job.key == batch[0].key and rows + len(job.records) <= self.max_rows:
                self.waiting.remove(job)
                batch.append(job)
                rows += len(job.records)
        return batch

    def _step(self) -> None:
        """One step of continuous batching (new requests join, every row decodes a token), counted."""
        started = time.monotonic()
        fresh, waiting = not self.continuous.rows, len(self.continuous.waiting)
        self.continuous.step()
        self.metrics.add_busy(time.monotonic() - started)
        joined = waiting - len(self.continuous.waiting)
        self.stats["requests"] += joined
        self.stats["batches"] += fresh and joined > 0
        self.stats["largest_batch"] = max(self.stats["largest_batch"], self.continuous.rows_decoded)

    def _execute(self, batch: list[Job]) -> None:
        rows = [(job, choice) for job in batch for choice in range(len(job.records))]

        def on_text(row: int, piece: str) -> None:
            job, choice = rows[row]
            if job.streaming:
                job.text(choice, piece)

        started = time.monotonic()
        try:
            generations = self.vlm.generate_details(
                [r for job in batch for r in job.records], [o for job in batch for o in job.options],
                batch_size=self.max_rows, on_text=on_text if any(job.streaming for job in batch) else None)
        except Exception as error:  # noqa: BLE001 - reported to every request of the batch
            for job in batch:
                job.failed(error)
            return
        finally:
            self.metrics.add_busy(time.monotonic() - started)
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(rows))
        start = 0
        for job in batch:
            job.done(generations[start : start + len(job.records)])
            start += len(job.records)
