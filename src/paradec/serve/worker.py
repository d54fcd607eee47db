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
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..api import Stream
from ..decode import Result

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every slot (the running job plus ``max_queue`` waiting ones) is taken."""


class Closed(Exception):
    """The worker is shutting down and takes no more jobs."""


class Job:
    """The controls of one submitted unit of work: ``cancel()``, an optional deadline, and the
    time of its last step (which tells a busy worker from a wedged one).

    ``interrupt`` is the decoder's between-steps hook (``paradec.stream(..., interrupt=job.interrupt)``).
    """

    def __init__(self, deadline: float | None = None):
        self.deadline = deadline  # time.monotonic() after which the job should stop, or None
        self.cancelled = threading.Event()  # read by the job between steps
        self.finished = threading.Event()  # set by the worker after the job's function returned
        self.last_step: float | None = None  # time.monotonic() of its start or last step

    def cancel(self) -> None:
        self.cancelled.set()

    def interrupt(self) -> str | None:
        """Called between steps: note the progress; "cancelled" or "deadline" if the job must stop."""
        self.last_step = now = time.monotonic()
        if self.cancelled.is_set():
            return "cancelled"
        if self.deadline is not None and now >= self.deadline:
            return "deadline"
        return None


JobFn = Callable[[Job], bool]  # runs on the worker thread; True = ran to the end


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
        self._jobs: queue.SimpleQueue[tuple[JobFn, Job] | None] = queue.SimpleQueue()
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
    def step_age(self) -> float | None:
        """Seconds since the running job started or last reported a step; None when idle."""
        job = self._current
        if job is None or job.last_step is None:
            return None
        return time.monotonic() - job.last_step

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def full(self) -> bool:
        with self._lock:
            return self._admitted >= self.capacity

    def submit(self, fn: JobFn, job: Job | None = None) -> Job:
        """Queue ``fn(job)``; raise ``QueueFull`` when every slot is taken, ``Closed`` after ``close``."""
        job = job or Job()
        with self._lock:
            if self._closed:
                raise Closed("the server is shutting down")
            if self._admitted >= self.capacity:
                raise QueueFull(f"{self._admitted} requests are running or waiting (limit {self.capacity})")
            self._admitted += 1
            self._pending.add(job)
        self._jobs.put((fn, job))
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
        while (item := self._jobs.get()) is not None:
            fn, job = item
            job.last_step = time.monotonic()
            with self._lock:
                self._pending.discard(job)
                self._current = job
            try:
                ok = bool(fn(job))
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
    """One generation on the worker thread, seen from the event loop as an async iterator of pieces.

    ``pieces`` must have been built with ``interrupt=job.interrupt``, so that a cancel (or the
    deadline) stops the decoder between steps, whether or not it is emitting text.
    """

    def __init__(self, worker: Worker, pieces: Stream, job: Job):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stream = pieces
        self.result: Result | None = None
        self.job = worker.submit(self._run, job)  # raises QueueFull

    def _emit(self, kind: str, value: Any = None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _run(self, job: Job) -> bool:
        """Worker thread: run the decoder (which asks ``job.interrupt`` between steps)."""
        if job.cancelled.is_set():
            self._emit("cancelled")
            return False
        pieces = iter(self._stream)
        try:
            for piece in pieces:
                self._emit("piece", piece)
            if job.cancelled.is_set():  # the decoder stopped early for it (or finished just as it came)
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
