"""The model's thread: a continuous batch of generations, a FIFO of waiting ones, a hard bound on both.

The model is CPU-bound blocking code, so one thread runs it. Generations join a running ``Batch``
between its steps and leave as they finish (iteration-level scheduling): each step is one forward for
every running sequence, so concurrent clients share the weights' reads instead of waiting for one
another. At most ``max_batch`` sequences run at once and ``max_queue`` more requests may wait; more
are refused (HTTP 429). The event loop stays free for I/O; ``Generation`` carries one request's text
pieces from this thread to it.

Besides generations the thread runs *exclusive* jobs (``submit(fn)``): a function run alone between
two steps, e.g. a maintenance task; the batch waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..decode import Result, Sequence
from ..parallel.batch import Batch
from .switch import DraftSwitch
from .metrics import Meter

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every slot (the running requests plus ``max_queue`` waiting ones) is taken."""


class Closed(Exception):
    """The worker is shutting down and takes no more jobs."""


class Job:
    """The controls of one submitted unit of work: ``cancel()``, an optional deadline, and the
    time of its last step (which tells a busy worker from a wedged one).

    ``interrupt`` is the decoder's between-steps hook (``paradec.prepare(..., interrupt=job.interrupt)``).
    """

    def __init__(self, deadline: float | None = None):
        self.deadline = deadline  # time.monotonic() after which the job should stop, or None
        self.cancelled = threading.Event()  # read by the job between steps
        self.finished = threading.Event()  # set by the worker once the job has ended (``end``)
        self.last_step: float | None = None  # time.monotonic() of its start or last step
        self._on_end: list[Callable[[], None]] = []

    def cancel(self) -> None:
        self.cancelled.set()

    def when_ended(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the job has ended, however it ended (e.g. to give back what it borrowed)."""
        self._on_end.append(fn)

    def end(self) -> None:
        """The job has ended: set ``finished``, run the ``when_ended`` calls."""
        self.finished.set()
        for fn in self._on_end:
            try:
                fn()
            except Exception:  # noqa: BLE001 (a clean-up call must not stop the worker)
                log.exception("a job's end call failed")
        self._on_end.clear()

    def interrupt(self) -> str | None:
        """Called between steps: note the progress; "cancelled" or "deadline" if the job must stop."""
        self.last_step = now = time.monotonic()
        if self.cancelled.is_set():
            return "cancelled"
        if self.deadline is not None and now >= self.deadline:
            return "deadline"
        return None


JobFn = Callable[[Job], bool]  # an exclusive job, run on the worker thread; True = ran to the end


class Worker:
    """Runs generations in one continuous batch and exclusive jobs between its steps, admitting in
    arrival order; at most ``max_batch`` sequences run and ``max_batch + max_queue`` requests are
    admitted at once (running + waiting).

    A request cancelled while it waits never runs (its generation ends as cancelled). A request's
    slot is freed only when all its sequences have left the batch, so "not busy" means the model
    really is free.
    """

    def __init__(self, max_queue: int = 32, max_batch: int = 8, switch: DraftSwitch | None = None):
        for name, value, low in (("max_queue", max_queue, 0), ("max_batch", max_batch, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.max_batch = max_batch
        self.capacity = max_batch + max_queue
        self.completed = 0  # requests that ran to the end
        self.stopped = 0  # requests that stopped early (cancelled) or failed
        self.batch = Batch(switch)
        self.meter = Meter(self.batch.counters)
        self._admitted = 0  # running + waiting
        self._running = 0  # requests in the batch, plus an exclusive job while it runs
        self._lock = threading.Lock()
        self._arrivals: queue.SimpleQueue[Generation | tuple[JobFn, Job] | None] = queue.SimpleQueue()
        self._waiting: deque[Generation | tuple[JobFn, Job]] = deque()  # worker thread only
        self._owner: dict[Sequence, Generation] = {}  # worker thread only
        self._jobs: set[Job] = set()  # admitted, not ended
        self._exclusive: Job | None = None
        self._last_step: float | None = None
        self._closed = self._stopping = False
        self._thread = threading.Thread(target=self._run, name="paradec-worker", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """Requests in the batch (and an exclusive job while it runs)."""
        return self._running

    @property
    def queued(self) -> int:
        with self._lock:
            return self._admitted - self._running

    @property
    def sequences(self) -> int:
        """Sequences in the batch (a request with n choices has n)."""
        return len(self._owner)

    @property
    def step_age(self) -> float | None:
        """Seconds since the batch's last step (or the exclusive job's start or last report); None when idle."""
        job = self._exclusive
        if job is not None:
            return None if job.last_step is None else time.monotonic() - job.last_step
        if not self._owner or self._last_step is None:
            return None
        return time.monotonic() - self._last_step

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def full(self) -> bool:
        with self._lock:
            return self._admitted >= self.capacity

    def submit(self, fn: JobFn, job: Job | None = None) -> Job:
        """Queue the exclusive job ``fn(job)``; raise ``QueueFull`` when every slot is taken, ``Closed`` after ``close``."""
        job = job or Job()
        self._admit((fn, job), job)
        return job

    def join(self, gen: "Generation") -> None:
        """Queue a generation to join the batch; ``QueueFull`` / ``Closed`` as ``submit``."""
        self._admit(gen, gen.job)

    def _admit(self, item, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise Closed("the server is shutting down")
            if self._admitted >= self.capacity:
                raise QueueFull(f"{self._admitted} requests are running or waiting (limit {self.capacity})")
            self._admitted += 1
            self._jobs.add(job)
        self._arrivals.put(item)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the running and waiting work, let it end, stop the thread."""
        with self._lock:
            self._closed = True
            for job in self._jobs:
                job.cancel()
        self._arrivals.put(None)
        self._thread.join(timeout)

    # ---- the worker thread ----

    def _run(self) -> None:
        while True:
            self._receive(block=not self._owner and not self._waiting)
            self._start_waiting()
            if self._owner:
                # the batch ends a failing sequence alone; this last guard keeps the thread alive whatever
                try:  # a step raises (a request must never stop the worker)
                    self._step()
                except Exception as exc:  # noqa: BLE001
                    self._abandon(exc)
            elif self._stopping and not self._waiting:
                return

    def _abandon(self, exc: Exception) -> None:
        """A step failed outside the batch's per-sequence guards: whose fault it was is unknown, so every
        running generation ends with the error (its clients get a 500), and the worker goes on."""
        log.error("a batch step failed; its generations end", exc_info=exc)
        for seq in self._owner:
            self.batch.remove(seq)
        gens = list(dict.fromkeys(self._owner.values()))
        self._owner.clear()
        for gen in gens:
            self._end(gen, ok=False, event=("error", exc))

    def _receive(self, block: bool) -> None:
        """Move arrivals to the waiting line (waiting for one when there is nothing else to do)."""
        try:
            item = self._arrivals.get(block=block)
            while True:
                if item is None:
                    self._stopping = True
                else:
                    self._waiting.append(item)
                item = self._arrivals.get_nowait()
        except queue.Empty:
            pass

    def _start_waiting(self) -> None:
        """Start waiting work in arrival order while the batch has room for it."""
        while self._waiting:
            head = self._waiting[0]
            if isinstance(head, tuple):
                self._waiting.popleft()
                self._exclusive_job(*head)
                continue
            if head.job.cancelled.is_set():  # gone while it waited: it never runs
                self._waiting.popleft()
                self._end(head, ok=False, event=("cancelled", None), started=False)
                continue
            if self._owner and len(self._owner) + len(head.seqs) > self.max_batch:
                return  # the head waits for room; those behind it wait too
            self._waiting.popleft()
            try:
                self.batch.add(*head.seqs)
            except Exception as exc:  # noqa: BLE001 (reported to its client; the worker goes on)
                log.exception("a generation could not start")
                self._end(head, ok=False, event=("error", exc), started=False)
                continue
            with self._lock:
                self._running += 1
            for s in head.seqs:
                self._owner[s] = head
            if self._last_step is None or len(self._owner) == len(head.seqs):
                self._last_step = time.monotonic()  # the batch (re)starts now

    def _exclusive_job(self, fn: JobFn, job: Job) -> None:
        job.last_step = time.monotonic()
        with self._lock:
            self._running += 1
        self._exclusive = job
        try:
            ok = bool(fn(job))
        except Exception:  # the job reports its own errors; this only keeps the worker alive
            log.exception("a job failed")
            ok = False
        self._exclusive = None
        with self._lock:
            self._running -= 1
            self._admitted -= 1
            self._jobs.discard(job)
            self.completed += ok
            self.stopped += not ok
        job.end()

    def _step(self) -> None:
        outcome = self.batch.step()
        self._last_step = time.monotonic()
        self.meter.record(self._last_step)
        for seq, piece in outcome.pieces:
            gen = self._owner.get(seq)
            if gen is not None:
                gen._emit("piece", (gen.seqs.index(seq), piece))
        for seq in outcome.finished:
            gen = self._owner.pop(seq, None)
            if gen is None:
                continue
            gen._emit("end", (gen.seqs.index(seq), seq.result))
            if not any(s in self._owner for s in gen.seqs):
                if gen.job.cancelled.is_set():  # stopped early for it (or finished just as it came)
                    self._end(gen, ok=False, event=("cancelled", None))
                else:
                    self._end(gen, ok=True, event=("done", [s.result for s in gen.seqs]))
        for seq, exc in outcome.failed:
            gen = self._owner.pop(seq, None)
            if gen is None:
                continue
            log.error("generation failed", exc_info=exc)
            for other in gen.seqs:  # its other choices end with it
                if self._owner.pop(other, None) is not None:
                    self.batch.remove(other)
            self._end(gen, ok=False, event=("error", exc))

    def _end(self, gen: "Generation", ok: bool, event: tuple[str, Any], started: bool = True) -> None:
        with self._lock:
            self._admitted -= 1
            self._running -= started
            self._jobs.discard(gen.job)
            self.completed += ok
            self.stopped += not ok
        gen.job.end()  # before its client hears of the end: what it borrowed is back when the client asks again
        gen._emit(*event)


class Cancelled(Exception):
    """The generation was stopped before its end (client gone or server shutting down)."""


class Generation:
    """One request's sequences (its n choices) in the worker's batch, seen from the event loop as
    events: text pieces per choice, each choice's end, then the results.

    Each sequence must have been built with ``interrupt=job.interrupt``, so that a cancel (or the
    deadline) stops it between steps, whether or not it is emitting text.
    """

    def __init__(self, worker: Worker, seqs: list[Sequence], job: Job):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.seqs, self.job = seqs, job
        self.results: list[Result] | None = None
        self._enqueue(worker)  # raises QueueFull / Closed

    def _enqueue(self, worker: Worker) -> None:
        worker.join(self)

    def _emit(self, kind: str, value: Any = None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def events(self) -> AsyncIterator[tuple[str, int, Any]]:
        """("piece", choice, text) and ("end", choice, Result) until every choice has ended; raises
        ``Cancelled`` when the generation was stopped, or the exception that ended it."""
        while True:
            kind, value = await self._events.get()
            if kind in ("piece", "end"):
                yield kind, value[0], value[1]
            elif kind == "done":
                self.results = value
                return
            elif kind == "cancelled":
                raise Cancelled()
            else:
                raise value

    async def texts(self) -> list[str]:
        """Every choice's whole text."""
        texts = [""] * len(self.seqs)
        async for kind, i, value in self.events():
            if kind == "piece":
                texts[i] += value
        return texts

    def cancel(self) -> None:
        self.job.cancel()


class Denoising(Generation):
    """A diffusion LM's generation: ``seqs`` are its choices' denoising loops (``paradec.prepare_denoising``,
    each built with ``interrupt=job.interrupt``), run one after another as one exclusive job (diffusion
    LMs are not batched), with the same events as a ``Generation``."""

    def _enqueue(self, worker: Worker) -> None:
        worker.submit(self._run, self.job)

    def _run(self, job: Job) -> bool:
        results = []
        try:
            for i, loop in enumerate(self.seqs):
                while True:
                    try:
                        self._emit("piece", (i, next(loop)))
                    except StopIteration as end:
                        results.append(end.value)
                        break
                self._emit("end", (i, results[-1]))
        except Exception as exc:  # noqa: BLE001 (reported to its client; the worker goes on)
            log.exception("a denoising generation failed")
            self._emit("error", exc)
            return False
        if job.cancelled.is_set():
            self._emit("cancelled")
            return False
        self._emit("done", results)
        return True
