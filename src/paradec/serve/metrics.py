"""The server's /metrics in Prometheus' text format (version 0.0.4), written without a client library.

Gauges: requests waiting, requests and sequences running, tokens per second and tokens per forward
over the last ``WINDOW`` seconds, whether the batch drafts. Counters: tokens generated, forwards,
rows, requests ended by outcome.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..parallel.batch import Counters
    from .worker import Worker

WINDOW = 10.0  # seconds the rates average over
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Meter:
    """Rates from the batch's counters: a snapshot after every step, kept for ``WINDOW`` seconds."""

    def __init__(self, counters: "Counters", window: float = WINDOW):
        self.counters, self.window = counters, window
        self.snapshots: deque[tuple[float, int, int]] = deque()  # (time.monotonic(), tokens, forwards)
        self.snapshots.append((time.monotonic(), 0, 0))

    def record(self, now: float) -> None:
        """After a step (worker thread)."""
        self.snapshots.append((now, self.counters.tokens, self.counters.forwards))
        while len(self.snapshots) > 2 and self.snapshots[1][0] < now - self.window:
            self.snapshots.popleft()

    def rates(self, now: float | None = None) -> tuple[float, float]:
        """(tokens per second, tokens per forward) over the window; 0 when nothing ran in it."""
        now = time.monotonic() if now is None else now
        snaps = list(self.snapshots)
        recent = [s for s in snaps if s[0] >= now - self.window]
        if not recent:
            return 0.0, 0.0
        older = [s for s in snaps if s[0] < now - self.window]
        t0, tokens0, forwards0 = older[-1] if older else recent[0]
        _, tokens1, forwards1 = recent[-1]
        tokens, forwards = tokens1 - tokens0, forwards1 - forwards0
        span = max(now - max(t0, now - self.window), 1e-9)
        return tokens / span, (tokens / forwards if forwards else 0.0)


def render(worker: "Worker") -> str:
    """The metrics page."""
    per_second, per_forward = worker.meter.rates()
    c = worker.batch.counters
    switch = worker.batch.switch
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    metric("paradec_queue_length", "gauge", "Requests waiting for a place in the batch.", [("", worker.queued)])
    metric("paradec_running_requests", "gauge", "Requests in the batch.", [("", worker.running)])
    metric("paradec_running_sequences", "gauge", "Sequences in the batch (a request with n choices has n).",
           [("", worker.sequences)])
    metric("paradec_tokens_per_second", "gauge", f"Tokens generated per second over the last {WINDOW:g} s.",
           [("", per_second)])
    metric("paradec_tokens_per_forward", "gauge",
           f"Tokens generated per forward (all sequences of a step) over the last {WINDOW:g} s.", [("", per_forward)])
    metric("paradec_drafting", "gauge", "1 while the batch drafts, 0 while the draft switch holds it to plain steps.",
           [("", 1 if switch is None or switch.drafting else 0)])
    metric("paradec_generated_tokens_total", "counter", "Tokens generated.", [("", c.tokens)])
    metric("paradec_forwards_total", "counter", "Forwards run (one per batch step).", [("", c.forwards)])
    metric("paradec_rows_total", "counter", "Rows scored by the forwards (prompts, roots, drafts).", [("", c.rows)])
    metric("paradec_requests_total", "counter", "Requests that ended, by outcome.",
           [('{outcome="completed"}', worker.completed), ('{outcome="stopped"}', worker.stopped)])
    return "\n".join(lines) + "\n"
