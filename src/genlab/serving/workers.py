"""Dynamic batching for the families that make a whole output per call (images, seq2seq, tables).

A worker thread owns its model. Concurrent jobs with the same batching key (the same sampler
and steps, say) are run as one call, up to `max_batch_size` items, after waiting at most
`max_wait_ms` for company; results are handed back through futures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The worker's queue is at its bound: the server answers 503."""


class EngineStopped(RuntimeError):
    """The engine's process is gone (and being replaced, or not): the server answers 503."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Job:
    key: Hashable  # jobs with equal keys may share one call
    items: list[Any]  # what the call handles per output (one seed and label per image, say)
    future: Future = field(default_factory=Future)


class BatchWorker:
    """Runs `run(items) -> outputs` (one output per item) over batches of compatible jobs."""

    def __init__(self, run: Callable[[Hashable, list[Any]], list[Any]], *, max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256, name: str = "genlab-worker",
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.run, self.max_batch_size, self.max_queue = run, max_batch_size, max_queue
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch or (lambda size: None)
        self.jobs: list[Job] = []
        self.running = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, items: list[Any]) -> Future:
        with self._cond:
            if len(self.jobs) >= self.max_queue:
                raise QueueFull
            job = Job(key, items)
            self.jobs.append(job)
            self._cond.notify()
        job.future.add_done_callback(lambda future: future.cancelled() and self._drop(job))
        return job.future

    def _drop(self, job: Job) -> None:
        """A job cancelled while it waits leaves the queue at once: its place is not held by a client that left."""
        with self._cond:
            if job in self.jobs:
                self.jobs.remove(job)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop

    @property
    def healthy(self) -> bool:
        return self.alive

    @property
    def depth(self) -> int:
        return len(self.jobs) + self.running

    def stop(self, drain_seconds: float = 30.0) -> None:
        end = time.monotonic() + drain_seconds
        while self.depth and time.monotonic() < end and self._thread.is_alive():
            time.sleep(0.01)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        import torch  # here, so that declaring a served kind imports no torch

        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            items = [item for job in batch for item in job.items]
            self.on_batch(len(items))
            try:
                with torch.inference_mode():
                    outputs = self.run(batch[0].key, items)
            except Exception as err:  # the error goes to the callers; the worker keeps serving
                for job in batch:
                    job.future.set_exception(err)
            else:
                start = 0
                for job in batch:
                    job.future.batch_size = len(items)  # for the request's log line
                    job.future.set_result(outputs[start:start + len(job.items)])
                    start += len(job.items)
            finally:
                self.running = 0

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self.jobs:
                if self._stop:
                    return None
                self._cond.wait(timeout=0.1)
            deadline = time.monotonic() + self.max_wait
            while (left := deadline - time.monotonic()) > 0 and self._size(self.jobs[0].key) < self.max_batch_size:
                self._cond.wait(timeout=left)
            key, batch, size = self.jobs[0].key, [], 0
            for job in list(self.jobs):
                if job.key == key and (not batch or size + len(job.items) <= self.max_batch_size):
                    self.jobs.remove(job)
                    if job.future.set_running_or_notify_cancel():  # False: its client left while it waited
                        batch.append(job)
                        size += len(job.items)
            self.running = size
            return batch

    def _size(self, key: Hashable) -> int:
        return sum(len(j.items) for j in self.jobs if j.key == key)
