"""One generation at a time: a single worker thread, a FIFO of waiting jobs, a hard bound on it.

The model is CPU-bound, blocking code with one KV cache per generation; running two generations
at once would only split the same cores. So jobs run one after another on one thread, the event
loop stays free for I/O, and a full queue is refused (HTTP 429) instead of growing without limit.
``Generation`` carries one decoding job's text pieces from that thread to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..api import Stream
from ..decode import Result

log = logging.getLogger(__name__)

JobFn = Callable[[threading.Event], bool]  # runs on the worker thread; True = ran to the end


class QueueFull(Exception):
    """Every slot (the running job plus ``max_queue`` waiting ones) is taken."""


class Closed(Exception):
    """The worker is shutting down and takes no more jobs."""


class Job:
    """A submitted unit of work; ``cancel()`` asks it to stop (or not to start) as soon as it can."""

    def __init__(self, fn: JobFn):
        self.fn = fn
        self.cancelled = threading.Event()  # read by fn between steps
        self.finished = threading.Event()  # set by the worker after fn returned

    def cancel(self) -> None:
        self.cancelled.set()


class Worker:
    """Runs jobs one at a time, in arrival order; admits at most ``1 + max_queue`` at once.

    A job always runs, even when cancelled while waiting: its function sees the cancel flag and
    returns at once, which lets it tell its consumer that it ended. The slot of a job is freed only
    when its function has returned, so "not busy" means the model really is free.
    """

    def __init__(self, max_queue: int = 32):
        if not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        self.capacity = 1 + max_queue
        self.completed = 0  # jobs whose function ran to the end
        self.stopped = 0  # jobs that stopped early (cancelled) or raised
        self._admitted = 0  # running + waiting
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._current: Job | None = None
        self._pending: set[Job] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="paradec-worker", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        return 1 if self._current is not None else 0

    @property
    def queued(self) -> int:
        with self._lock:
            return self._admitted - self.running

    @property
    def full(self) -> bool:
        with self._lock:
            return self._admitted >= self.capacity

    def submit(self, fn: JobFn) -> Job:
        """Queue ``fn(cancelled_event)``; raise ``QueueFull`` when every slot is taken, ``Closed`` after ``close``."""
        job = Job(fn)
        with self._lock:
            if self._closed:
                raise Closed("the server is shutting down")
            if self._admitted >= self.capacity:
                raise QueueFull(f"{self._admitted} requests are running or waiting (limit {self.capacity})")
            self._admitted += 1
            self._pending.add(job)
        self._jobs.put(job)
        return job

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the running and waiting jobs, let them end, stop the thread."""
        with self._lock:
            self._closed = True
            for job in [*self._pending, self._current]:
                if job is not None:
                    job.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self._pending.discard(job)
                self._current = job
            try:
                ok = bool(job.fn(job.cancelled))
            except Exception:  # the job reports its own errors; this only keeps the worker alive
                log.exception("a job failed")
                ok = False
            with self._lock:
                self._current = None
                self._admitted -= 1
                if ok:
                    self.completed += 1
                else:
                    self.stopped += 1
            job.finished.set()


class Cancelled(Exception):
    """The generation was stopped before its end (client gone or server shutting down)."""


class Generation:
    """One generation on the worker thread, seen from the event loop as an async iterator of pieces."""

    def __init__(self, worker: Worker, pieces: Stream):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stream = pieces
        self.result: Result | None = None
        self.job = worker.submit(self._run)  # raises QueueFull

    def _emit(self, kind: str, value: Any = None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _run(self, cancelled: threading.Event) -> bool:
        """Worker thread: step the decoder, checking the cancel flag after every piece."""
        if cancelled.is_set():
            self._emit("cancelled")
            return False
        pieces = iter(self._stream)
        try:
            for piece in pieces:
                self._emit("piece", piece)
                if cancelled.is_set():
                    self._emit("cancelled")
                    return False
            self._emit("done", self._stream.result)
            return True
        except Exception as exc:  # reported to the client; the worker keeps serving
            log.exception("generation failed")
            self._emit("error", exc)
            return False
        finally:
            pieces.close()  # type: ignore[attr-defined]  # drops the KV cache now, not at GC

    async def pieces(self) -> AsyncIterator[str]:
        while True:
            kind, value = await self._events.get()
            if kind == "piece":
                yield value
            elif kind == "done":
                self.result = value
                return
            elif kind == "cancelled":
                raise Cancelled()
            else:
                raise value

    async def text(self) -> str:
        return "".join([piece async for piece in self.pieces()])

    def cancel(self) -> None:
        self.job.cancel()
