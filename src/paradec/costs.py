"""What a forward over k new rows costs relative to one row, c(k)/c(1): measured, cached, read — the
one cost model of the project.

Draft trees are verified in one forward, but on a CPU that forward is not free: on the 2-core AVX2
machine of this project 4-bit SmolLM2-135M reads c(4) = 1.55 and c(16) = 5.8. So whether a draft of
k - 1 nodes pays depends on the machine as much as on the text: a step that yields tau tokens on k
rows speeds decoding up by about tau / c(k). ``auto`` reads the curve to size its drafts, the tree
drafters to size their trees (``StepCost``), and a batch's draft switch (``serve/switch.py``) to
decide whether drafting pays at the batch's size.

The ratio depends on how many tokens the cache holds: every row reads the whole cache, so where
attention reads it once per row, rows cost more with a longer context (4-bit SmolLM2 on an Intel
machine: c(8)/c(1) 3.59 at 256 tokens, 4.21 at 2,048). The curve is therefore measured at a few
context lengths (``CACHE_CONTEXTS``) and read at the sequence's own length, interpolated between
them (held beyond the longest). Nothing is assumed about the shape: where the runtime reads the
cache once per block the measured curves come out alike and the context changes nothing.

One convention for a curve that dips (a 4-row forward measured cheaper than a 3-row one: tiles,
noise): more rows never cost less, so a ratio below an earlier one is raised to it. A planner reading
the curve never counts on a dip it would not get (the loop never pads a block to reach it).

The curves are measured once per machine, model, dtype, runtime, quantization and thread count (a
few seconds: one prefill of the longest context, cropped for the shorter ones; k in 1..64, a few
rounds) and cached as JSON under ``$PARADEC_CACHE/costs/``, one file per fingerprint of all of
those, so a change of any of them measures anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .machine import cpu_times, others_busy

log = logging.getLogger(__name__)

# rows measured for the cache: auto's drafts stay within 16 rows; a batch's forwards reach further
CACHE_KS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
CACHE_CONTEXTS = (64, 512, 2048)  # tokens in the cache before the rows (those that fit the model)
CACHE_ROUNDS = 5
PROTOCOL = 4  # bump when the cached measurement changes, so old files are not read
BUSY = 0.25  # CPUs other processes kept busy while measuring above which a curve is not cached


def measure(model, ks=CACHE_KS, context: int = 256, rounds: int = 15, warmup: int = 2,
            layers: int | None = None) -> dict[int, float]:
    """Seconds of one forward over k rows, the fastest of ``rounds``, for every k in ``ks`` (``layers``:
    of the model's first layers only, as ``layerskip`` drafts). The fastest, not the median: what a row
    costs is the machine's; what comes on top is other work, which a load spike adds to one round.

    After a prompt of ``context`` tokens, a chain of k rows is read and dropped (the cache returns to
    the prompt); the k values are interleaved round by round, so a load spike hits all of them alike.
    """
    return measure_contexts(model, ks, (context,), rounds, warmup, layers)[1][0]


def measure_contexts(model, ks=CACHE_KS, contexts=CACHE_CONTEXTS, rounds: int = 15, warmup: int = 2,
                     layers: int | None = None) -> tuple[list[int], list[dict[int, float]]]:
    """``measure`` at several context lengths, longest first from one prefill (the cache is cropped for
    the shorter ones). Returns the contexts that fit the model, ascending, and their timings."""
    target = model.target(layers)
    vocab = model.vocab_size
    ks = [k for k in ks if k < model.max_length] or [1]  # a tiny context window: the row counts that fit
    room = model.max_length - max(ks)
    fit = sorted({max(1, min(c, room)) for c in contexts})
    prompt = [(7 * i + 3) % vocab for i in range(fit[-1])]
    target.prefill(prompt)
    out: list[dict[int, float]] = []
    for context in reversed(fit):
        target.crop(context)
        times: dict[int, list[float]] = {k: [] for k in ks}
        for r in range(warmup + rounds):
            for k in ks:
                tokens = [(11 * r + 5 * j + 1) % vocab for j in range(k)]
                start = time.perf_counter()
                target.forward(tokens, list(range(k)))
                elapsed = time.perf_counter() - start
                target.commit([])
                if r >= warmup:
                    times[k].append(elapsed)
        out.append({k: min(v) for k, v in times.items()})
    return fit, out[::-1]


@dataclass(frozen=True)
class CostCurve:
    """c(k)/c(1) at measured row counts, read at any k by linear interpolation, at any context length.

    points:  ``((1, 1.0), (k2, r2), ...)``, ascending k, ratios non-decreasing (at ``context``)
    seconds: c(1) in seconds, when measured (None for a curve given by hand)
    context: the tokens in the cache when it was measured (0: given by hand, any context)
    longer:  the same measured at longer contexts, ascending (empty: one curve for every context)

    Example: ``CostCurve.of({1: 1.0, 4: 1.6})(2.5) == 1.3``; beyond the last point the last segment
    goes on (``(8)`` → 2.4). With ``longer`` curves, ``curve(k, context)`` interpolates between the two
    measured contexts around ``context`` (held beyond the first and the last).
    """

    points: tuple[tuple[int, float], ...]
    seconds: float | None = None
    context: int = 0
    longer: tuple["CostCurve", ...] = ()

    @classmethod
    def of(cls, ratios: dict, seconds: float | None = None, context: int = 0) -> "CostCurve":
        """From ``{k: c(k)/c(1)}`` (keys may be numeric strings, as in JSON). k = 1 is 1.0 whatever is
        given; a ratio below an earlier one is raised to it (more rows never cost less)."""
        try:
            items = sorted((int(k), float(v)) for k, v in dict(ratios).items())
        except (TypeError, ValueError):
            raise ValueError(f"a cost curve maps row counts to ratios, e.g. {{\"1\": 1, \"8\": 1.7}}; got {ratios!r}") from None
        points, top = [(1, 1.0)], 1.0
        for k, r in items:
            if not (1 <= k <= 4096) or not (0 < r < 1e6) or not math.isfinite(r):
                raise ValueError(f"cost curve: row counts must be in [1, 4096] and ratios positive, got {k}: {r}")
            if k > 1:
                top = max(top, r)
                points.append((k, top))
        return cls(tuple(points), seconds, context)

    @classmethod
    def of_rows(cls, costs) -> "CostCurve":
        """From ``(c(1), c(2), ...)``, any unit (a tree drafter's ``row_costs`` option)."""
        if not isinstance(costs, (list, tuple)) or not costs or any(
                not isinstance(c, (int, float)) or not (c > 0 and math.isfinite(c)) for c in costs):
            raise ValueError(f"row costs must be positive numbers, got {costs!r}")
        return cls.of({k: c / costs[0] for k, c in enumerate(costs, start=1)})

    @classmethod
    def from_seconds(cls, times: dict[int, float], context: int = 0) -> "CostCurve":
        base = times[min(times)]
        return cls.of({k: t / base for k, t in times.items()}, seconds=base, context=context)

    @classmethod
    def from_contexts(cls, contexts: list[int], times: list[dict[int, float]]) -> "CostCurve":
        """One curve per measured context (ascending): the shortest one, with the others as ``longer``."""
        curves = [cls.from_seconds(t, c) for c, t in zip(contexts, times)]
        return dataclasses.replace(curves[0], longer=tuple(curves[1:]))

    def __call__(self, rows: float, context: int | None = None) -> float:
        if context is None or not self.longer or context <= self.context:
            return self._read(rows)
        below = self
        for above in self.longer:
            if context <= above.context:
                w = (context - below.context) / (above.context - below.context)
                return (1 - w) * below._read(rows) + w * above._read(rows)
            below = above
        return below._read(rows)

    def _read(self, rows: float) -> float:
        pts = self.points
        if rows <= pts[0][0] or len(pts) == 1:
            return pts[0][1]
        for (k0, r0), (k1, r1) in zip(pts, pts[1:]):
            if rows <= k1:
                return r0 + (r1 - r0) * (rows - k0) / (k1 - k0)
        (k0, r0), (k1, r1) = pts[-2], pts[-1]
        return r1 + (r1 - r0) * (rows - k1) / (k1 - k0)

    def to_dict(self) -> dict[int, float]:
        return dict(self.points)


@dataclass(frozen=True)
class StepCost:
    """What one step of a tree drafter costs, and whether one more node pays (the cost-aware tree budget).

    A step that verifies ``n`` draft nodes costs one target forward over ``n + 1`` rows, ``c(n + 1)``
    (the curve read at ``context``), plus the drafter's own forwards, ``L × δ`` (``draft_cost`` = δ,
    one drafting forward relative to a one-row target forward). If the draft is calibrated, a node's
    *value* — the product of the draft probabilities along its path — is the chance it is accepted,
    so the step yields ``1 + Σ value`` tokens on average (EAGLE-2's observation). A node is worth
    adding exactly when it raises tokens per cost::

        value ≥ (1 + Σ value) × (cost after / cost before − 1)

    Nodes are offered best first, so the rule stops where one more row costs more than it brings.
    Only values known *before* a node is drawn may enter it, so sampled drafts stay exact.

    Worked example (curve 1, 1.4, 1.5, 1.6; δ = 0): with Σ value = 0 a first node needs value ≥ 0.4; a
    node of 0.9 makes Σ = 0.9; the second needs ≥ 1.9 × (1.5 / 1.4 − 1) = 0.136.
    """

    curve: CostCurve
    draft_cost: float = 0.0
    context: int | None = None

    def __post_init__(self) -> None:
        if not (self.draft_cost >= 0 and math.isfinite(self.draft_cost)):
            raise ValueError(f"draft_cost must be >= 0, got {self.draft_cost!r}")

    def at(self, context: int) -> "StepCost":
        """This cost with the cache holding ``context`` tokens."""
        return dataclasses.replace(self, context=context)

    def step(self, nodes: int, forwards: int) -> float:
        return self.curve(nodes + 1, self.context) + self.draft_cost * forwards

    def pays(self, value: float, nodes: int, total: float, forwards: int, new_forward: bool = False) -> bool:
        """Whether a node of ``value`` raises tokens per cost, given ``nodes`` nodes of summed value
        ``total`` so far and ``forwards`` drafting forwards (one more if ``new_forward``)."""
        before = (1 + total) / self.step(nodes, forwards)
        after = (1 + total + value) / self.step(nodes + 1, forwards + new_forward)
        return after >= before


def cache_dir() -> Path:
    from .model.builtins import cache_root

    return cache_root() / "costs"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fingerprint(model, layers: int | None = None) -> dict:
    """Everything the curve depends on: machine, model (``layers``: its first layers only), dtype,
    runtime (and its kernels), quantization, threads. Two models of the same shape, format and runtime
    share a curve (the weights' values do not change what a forward costs)."""
    import torch

    runtime = model.runtime
    kernels = ""
    if runtime.name == "native":
        from .runtime.kernels import build_key

        kernels = build_key()
    return {
        "protocol": PROTOCOL,
        "machine": [platform.machine(), _cpu_name(), os.cpu_count()],
        "model": [model.name, str(model.path), model.vocab_size, runtime.layers, model.max_length, layers],
        "dtype": str(model.dtype).removeprefix("torch."),
        "runtime": [runtime.name, runtime.description, kernels],
        "quant": model.quant,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


_MEMO: dict[str, CostCurve] = {}
_LOCK = threading.Lock()


def cost_curve(model, layers: int | None = None) -> CostCurve:
    """The model's cost curve on this machine now (``layers``: of its first layers only): from this
    process's memory, from the disk cache, or measured (a few seconds) and cached."""
    key = fingerprint(model, layers)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    with _LOCK:  # one measurement at a time (a server builds drafters on several threads)
        if name in _MEMO:
            return _MEMO[name]
        path = cache_dir() / f"{name}.json"
        curve = _read(path, key)
        if curve is None:
            log.warning("measuring what a forward over 1-64 rows costs on this machine at %s tokens of context "
                        "(once; cached in %s)", "/".join(map(str, CACHE_CONTEXTS)), path.parent)
            before = cpu_times()
            contexts, times = measure_contexts(model, CACHE_KS, CACHE_CONTEXTS, CACHE_ROUNDS, warmup=1, layers=layers)
            busy = others_busy(before, cpu_times())
            curve = CostCurve.from_contexts(contexts, times)
            if busy is not None and busy > BUSY:  # this process uses it; the next one measures again
                log.warning("other processes kept %.2f CPUs busy while the cost curve was measured: it is not cached", busy)
            else:
                _write(path, key, contexts, times)
        _MEMO[name] = curve
        return curve


def _read(path: Path, key: dict) -> CostCurve | None:
    """The cached curve if the file exists, parses and was measured for exactly ``key``."""
    try:
        data = json.loads(path.read_text())
        if data["key"] != key:
            return None
        contexts = [int(c) for c in data["contexts"]]
        times = [{int(k): float(v) for k, v in t.items()} for t in data["seconds"]]
        return CostCurve.from_contexts(contexts, times)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write(path: Path, key: dict, contexts: list[int], times: list[dict[int, float]]) -> None:
    """Write atomically (another process may read it meanwhile); a read-only cache only costs a re-measure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        seconds = [{str(k): v for k, v in t.items()} for t in times]
        tmp.write_text(json.dumps({"key": key, "contexts": contexts, "seconds": seconds}, indent=1))
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not cache the cost curve in %s: %s", path.parent, exc)
