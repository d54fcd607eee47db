"""The drafters' defaults by the cost of rows (dtype and runtime): one table, read for every option a config leaves ``None``.

Why by dtype: the sweeps that chose these values (docs/sweeps/*.md: SmolLM2-135M on the project's
2-core CPU, run on the transformers runtime before the native one existed) measured a forward over
8-16 rows at about one row's cost in bfloat16, but 1.4x already at 2 rows and 1.7x at 8 in float32.
So the half-precision column has bigger trees and looser gates; float32 (and float64, and an unknown
dtype) small trees and the cost gate (``gate.py``) that stops drafts that keep failing.

That premise does not hold on the native runtime (the default): there rows cost in every dtype
(SmolLM2-135M, 2 threads: bfloat16 c(8) = 3.3, float32 c(8) = 2.5, 4-bit c(8) = 3.7; ``paradec
cost-curve``, docs/runtime.md). With the half-precision column a default benchmark run on it read
recycling 0.65x, jacobi 0.63x, lookahead 0.58x plain decoding (docs/benchmarks.md). So on the native
runtime every dtype takes the second column (small trees, the cost gate on); the first column stays
for half precision on the transformers runtime, where it was measured. ``auto``, the default method,
does not take its sizes from this table: it cuts every draft to the size the runtime's measured cost
curve pays for (``costs.py``), whatever the runtime, dtype and machine.
"""

from __future__ import annotations

import dataclasses

import torch

HALF = (torch.bfloat16, torch.float16)

# method -> option -> (cheap rows: half precision off the native runtime, every other case). Measured on SmolLM2-135M:
# ngram, recycling in docs/sweeps/ngram_recycling.md (bf16 gate 0.15: the break-even of ~1.15x row
# cost); jacobi, lookahead in docs/sweeps/jacobi_lookahead.md (gate off in half precision; in float32
# "after a step that accepts nothing, 8 (jacobi) / 10 (lookahead) plain steps" = probe_every 9 / 11).
BY_DTYPE: dict[str, dict[str, tuple]] = {
    "ngram": {"max_depth": (10, 4), "max_nodes": (16, 6),
              "min_accept": (0.15, 0.3), "probe_every": (4, 4), "accept_decay": (0.8, 0.8)},
    "recycling": {"tree_size": (12, 4), "max_depth": (5, 3), "lookup_depth": (8, 4),
                  "min_accept": (0.15, 0.3), "probe_every": (4, 4), "accept_decay": (0.8, 0.8)},
    "jacobi": {"min_accept": (0, 1), "probe_every": (9, 9), "accept_decay": (0, 0)},
    "lookahead": {"min_accept": (0, 1), "probe_every": (11, 11), "accept_decay": (0, 0)},
}


def cheap_rows(model) -> bool:
    """Whether the first column applies: a half-precision model on a runtime other than the native one."""
    runtime = getattr(getattr(model, "runtime", None), "name", None)
    return getattr(model, "dtype", None) in HALF and runtime != "native"


def default(method: str, option: str, model):
    """The table's value of ``option`` for ``method`` on ``model``."""
    return BY_DTYPE[method][option][0 if cheap_rows(model) else 1]


def with_defaults(method: str, config, model):
    """``config`` with every option it leaves ``None`` taken from the table (validated again)."""
    fill = {name: default(method, name, model) for name in BY_DTYPE.get(method, {})
            if getattr(config, name) is None}
    return dataclasses.replace(config, **fill) if fill else config
