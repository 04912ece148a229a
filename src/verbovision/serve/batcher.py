"""Dynamic batching: a request handler validates its request, decodes its images, checks its limits and queues it as
a `Job`; one worker thread owns the model and runs the oldest waiting job together with every compatible job waiting
or arriving within `max_wait_ms`, up to `batch_size` replies, as one `VLM.generate_details` call. While a batch runs,
new requests queue up and form the next one, so under load the batches fill by themselves."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ApiError

if TYPE_CHECKING:  # imported lazily at run time: `verbo --help` should not load torch or the web stack
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

    def send(self, *event) -> None:
        """Hand an event to the job's handler (called from the worker thread)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Batcher:
    """Runs queued jobs in batches on one worker thread, the only thread that generates with the model."""

    def __init__(self, vlm: VLM, max_rows: int, max_wait: float):
        self.vlm = vlm
        self.max_rows = max(1, max_rows)
        self.max_wait = max_wait
        self.queue: queue.Queue = queue.Queue()
        self.waiting: deque[Job] = deque()
        self.closing = False
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}
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
        self.queue.put(job)

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            self._execute(batch)

    def _collect(self) -> list[Job] | None:
        """The oldest job and the compatible jobs waiting or arriving within max_wait; None once closed and empty."""
        while not self.waiting:
            job = self.queue.get()
            if job is None:
                return None
            self.waiting.append(job)
        batch = [self.waiting.popleft()]
        rows = len(batch[0].records)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_rows:
            job = next((j for j in self.waiting if j.key == batch[0].key and rows + len(j.records) <= self.max_rows),
                       None)
            if job is not None:
                self.waiting.remove(job)
                batch.append(job)
                rows += len(job.records)
                continue
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:  # closing: leave the signal for when the waiting jobs are done
                self.queue.put(None)
                break
            self.waiting.append(job)
        return batch

    def _execute(self, batch: list[Job]) -> None:
        rows = [(job, choice) for job in batch for choice in range(len(job.records))]

        def on_text(row: int, piece: str) -> None:
            job, choice = rows[row]
            if job.streaming:
                job.send("text", choice, piece)

        try:
            generations = self.vlm.generate_details(
                [r for job in batch for r in job.records], [o for job in batch for o in job.options],
                batch_size=self.max_rows, on_text=on_text if any(job.streaming for job in batch) else None)
        except Exception as error:  # noqa: BLE001 - reported to every request of the batch
            for job in batch:
                job.send("error", error)
            return
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(rows))
        start = 0
        for job in batch:
            job.send("done", generations[start : start + len(job.records)])
            start += len(job.records)
