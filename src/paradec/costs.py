"""What a forward over k new rows costs relative to one row, c(k)/c(1): measured, cached, read.

Draft trees are verified in one forward, but on a CPU that forward is not free: on the 2-core AVX2
machine of this project 4-bit SmolLM2-135M reads c(4) = 1.55 and c(16) = 5.8. So whether a draft of
k - 1 nodes pays depends on the machine as much as on the text: a step that yields tau tokens on k
rows speeds decoding up by about tau / c(k). ``auto`` reads the curve to size its drafts, and a
batch's draft switch (``parallel/switch.py``) to decide whether drafting pays at the batch's size.

The curve is measured once per machine, model, dtype, runtime, quantization and thread count (a few
seconds: k in 1..64, a few rounds) and cached as JSON under ``$PARADEC_CACHE/costs/``, one file per
fingerprint of all of those, so a change of any of them measures anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# rows measured for the cache: auto's drafts stay within 16 rows; a batch's forwards reach further
CACHE_KS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
CACHE_CONTEXT = 64  # tokens in the cache before the rows
CACHE_ROUNDS = 3
PROTOCOL = 2  # bump when the cached measurement changes, so old files are not read


def measure(model, ks=CACHE_KS, context: int = 256, rounds: int = 15, warmup: int = 2,
            layers: int | None = None) -> dict[int, float]:
    """Median seconds of one forward over k rows, for every k in ``ks`` (``layers``: of the model's
    first layers only, as ``layerskip`` drafts).

    After a prompt of ``context`` tokens, a chain of k rows is read and dropped (the cache returns to
    the prompt); the k values are interleaved round by round, so a load spike hits all of them alike.
    """
    target = model.target(layers)
    vocab = model.vocab_size
    ks = [k for k in ks if k < model.max_length] or [1]  # a tiny context window: the row counts that fit
    context = max(1, min(context, model.max_length - max(ks)))
    prompt = [(7 * i + 3) % vocab for i in range(context)]
    target.prefill(prompt)
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
    return {k: statistics.median(v) for k, v in times.items()}


@dataclass(frozen=True)
class CostCurve:
    """c(k)/c(1) at measured row counts, read at any k by linear interpolation.

    points:  ``((1, 1.0), (k2, r2), ...)``, ascending k, ratios non-decreasing
    seconds: c(1) in seconds, when measured (None for a curve given by hand)

    Example: ``CostCurve.of({1: 1.0, 4: 1.6})(2.5) == 1.3``; beyond the last point the last segment
    goes on (``(8)`` → 2.4).
    """

    points: tuple[tuple[int, float], ...]
    seconds: float | None = None

    @classmethod
    def of(cls, ratios: dict, seconds: float | None = None) -> "CostCurve":
        """From ``{k: c(k)/c(1)}`` (keys may be numeric strings, as in JSON). k = 1 is 1.0 whatever is
        given; a ratio below an earlier one is raised to it (more rows never cost less)."""
        try:
            items = sorted((int(k), float(v)) for k, v in dict(ratios).items())
        except (TypeError, ValueError):
            raise ValueError(f"a cost curve maps row counts to ratios, e.g. {{\"1\": 1, \"8\": 1.7}}; got {ratios!r}") from None
        points, top = [(1, 1.0)], 1.0
        for k, r in items:
            if not (1 <= k <= 4096) or not (0 < r < 1e6):
                raise ValueError(f"cost curve: row counts must be in [1, 4096] and ratios positive, got {k}: {r}")
            if k > 1:
                top = max(top, r)
                points.append((k, top))
        return cls(tuple(points), seconds)

    @classmethod
    def from_seconds(cls, times: dict[int, float]) -> "CostCurve":
        base = times[min(times)]
        return cls.of({k: t / base for k, t in times.items()}, seconds=base)

    def __call__(self, rows: float) -> float:
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
            log.warning("measuring what a forward over 1-64 rows costs on this machine (once; cached in %s)",
                        path.parent)
            times = measure(model, CACHE_KS, CACHE_CONTEXT, CACHE_ROUNDS, warmup=1, layers=layers)
            curve = CostCurve.from_seconds(times)
            _write(path, key, times)
        _MEMO[name] = curve
        return curve


def _read(path: Path, key: dict) -> CostCurve | None:
    """The cached curve if the file exists, parses and was measured for exactly ``key``."""
    try:
        data = json.loads(path.read_text())
        if data["key"] != key:
            return None
        return CostCurve.from_seconds({int(k): float(v) for k, v in data["seconds"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write(path: Path, key: dict, times: dict[int, float]) -> None:
    """Write atomically (another process may read it meanwhile); a read-only cache only costs a re-measure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "seconds": {str(k): v for k, v in times.items()}}, indent=1))
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not cache the cost curve in %s: %s", path.parent, exc)
