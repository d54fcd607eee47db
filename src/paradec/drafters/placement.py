"""Where ``pearl``'s two models run, and what their forwards cost there while the other one runs.

Placement: the cores this process may use (``os.sched_getaffinity``), split between the draft model's
thread pool and the target's. One core: no overlap, the draft drafts on the loop's thread as ``draft``
does. Two: one each. More: the draft's share follows its share of the work, its one-row forward over
the target's (δ, from both models' measured cost curves, ``paradec.costs``): round(cores × δ / (1 + δ)),
at least one core each. ``--draft-threads`` / ``--target-threads`` override it; the target gets the
first cores, the draft the next ones.

Costs: two forwards at once on one machine slow each other (memory bandwidth, shared caches), so the
costs that matter are measured with both running: the target's forward over k rows while the draft
drafts on its cores, and the draft's one-row forward meanwhile. A few seconds, once per machine, pair
of models and placement, cached as JSON beside the cost curves (``paradec.costs``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .. import costs
from ..costs import CostCurve, cost_curve, fingerprint, measure_contexts
from .draft_chain import use_cores

log = logging.getLogger(__name__)

KS = (1, 2, 3, 4, 6, 8, 12, 16)  # rows of the target's measured verify forwards
CONTEXT = 64  # tokens in each cache before the measured rows
ROUNDS = 3
PROTOCOL = 2


def machine_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Placement:
    """overlap: the draft runs on a thread of its own (False: on the loop's thread, in turn)."""

    overlap: bool
    draft_threads: int = 0
    target_threads: int = 0
    draft_cpus: tuple[int, ...] = ()
    target_cpus: tuple[int, ...] = ()


def place(draft_threads: int | None, target_threads: int | None, overlap: bool | None,
          work_share: Callable[[], float]) -> Placement:
    """The placement for the given options (None: the default). ``work_share``: δ / (1 + δ), asked only
    when the split is not forced (more than two cores and no thread counts given)."""
    cpus = machine_cpus()
    if overlap is None:
        overlap = len(cpus) > 1
    if not overlap:
        return Placement(False)
    if draft_threads is None and target_threads is None:
        if len(cpus) <= 2:
            draft_threads = 1
        else:
            draft_threads = min(len(cpus) - 1, max(1, round(len(cpus) * work_share())))
    if draft_threads is None:
        draft_threads = max(1, len(cpus) - target_threads)
    if target_threads is None:
        target_threads = max(1, len(cpus) - draft_threads)
    target = tuple(cpus[i % len(cpus)] for i in range(target_threads))
    draft = tuple(cpus[(target_threads + i) % len(cpus)] for i in range(draft_threads))
    return Placement(True, draft_threads, target_threads, draft, target)


def work_share(target_model, draft_model, layers: int | None) -> float:
    """δ / (1 + δ): the draft's share of a step's work, from both models' cost curves (full threads)."""
    delta = cost_curve(draft_model, layers).seconds / cost_curve(target_model).seconds
    return delta / (1 + delta)


@dataclass(frozen=True)
class OverlapCosts:
    """target: the target's verify forward over k rows while the draft drafts (``.seconds`` = 1 row),
    after CONTEXT tokens (read alike at every context: measuring side by side at the contexts of
    ``paradec.costs`` would prefill thousands of tokens on a share of the cores); draft: the draft's
    one-row forward meanwhile."""

    target: CostCurve
    draft: float

    def draft_ratio(self) -> float:
        """One draft forward in one-row target forwards, both running."""
        return self.draft / self.target.seconds


def overlap_costs(target_model, draft_model, layers: int | None, placement: Placement) -> OverlapCosts:
    """The costs of ``placement`` (``layers``: the draft is the target's first layers): from the cache,
    or measured now (a few seconds) and cached."""
    key = {"protocol": PROTOCOL, "target": fingerprint(target_model), "draft": fingerprint(draft_model, layers),
           "placement": [placement.target_threads, list(placement.target_cpus), placement.draft_threads,
                         list(placement.draft_cpus)]}
    name = "overlap-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = costs.cache_dir() / f"{name}.json"
    try:
        data = json.loads(path.read_text())
        if data["key"] == key:
            times = [{int(k): float(v) for k, v in t.items()} for t in data["target"]]
            return OverlapCosts(CostCurve.from_contexts(data["contexts"], times), float(data["draft"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.warning("measuring the target's and the draft's forwards side by side on their cores (once; cached in %s)",
                path.parent)
    contexts, times, draft = _measure(target_model, draft_model, layers, placement)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        target = [{str(k): v for k, v in t.items()} for t in times]
        tmp.write_text(json.dumps({"key": key, "contexts": contexts, "target": target, "draft": draft}, indent=1))
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not cache the overlap costs in %s: %s", path.parent, exc)
    return OverlapCosts(CostCurve.from_contexts(contexts, times), draft)


def _measure(target_model, draft_model, layers, placement: Placement):
    """Each model on a thread with its own cores, as ``pearl`` runs them: the target's k-row forwards
    while the draft drafts without pause, and the draft's forwards meanwhile."""
    out: dict = {}
    stop, running = threading.Event(), threading.Event()
    native = getattr(target_model.runtime, "name", "") == "native"

    def drafting() -> None:
        undo = use_cores(placement.draft_threads, placement.draft_cpus, native)
        try:
            t = draft_model.target(layers)
            vocab = draft_model.vocab_size
            t.prefill([(7 * i + 3) % vocab for i in range(min(CONTEXT, draft_model.max_length - 2))])
            seconds, i = [], 0
            while not stop.is_set() or i < 3:
                start = time.perf_counter()
                t.forward([(5 * i + 1) % vocab], [0])
                seconds.append(time.perf_counter() - start)
                t.commit([])
                i += 1
                running.set()
            out["draft"] = statistics.median(seconds[1:])
        finally:
            running.set()
            undo()

    def verifying() -> None:
        undo = use_cores(placement.target_threads, placement.target_cpus, native)
        try:
            running.wait(timeout=60)
            out["target"] = measure_contexts(target_model, KS, (CONTEXT,), ROUNDS, warmup=1)
        finally:
            undo()
            stop.set()

    side = threading.Thread(target=drafting, daemon=True)
    side.start()
    _in_thread(verifying)
    side.join()
    missing = {"target", "draft"} - set(out)
    if missing:
        raise RuntimeError(f"measuring pearl's placement failed ({', '.join(sorted(missing))} not measured)")
    return (*out["target"], out["draft"])


def _in_thread(fn, *args) -> None:
    """Run ``fn`` on a thread of its own (its cores are its own; the caller's stay as they are); raise its error."""
    error: list[BaseException] = []

    def body():
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
            error.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
