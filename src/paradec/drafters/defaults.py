"""The drafters' per-dtype defaults: one table, read for every option a config leaves ``None``.

Why by dtype: the sweeps that chose these values (docs/sweeps/*.md: SmolLM2-135M on the project's
2-core CPU, run on the transformers runtime before the native one existed) measured a forward over
8-16 rows at about one row's cost in bfloat16, but 1.4x already at 2 rows and 1.7x at 8 in float32.
So the half-precision column has bigger trees and looser gates; float32 (and float64, and an unknown
dtype) small trees and the cost gate (``gate.py``) that stops drafts that keep failing.

That premise does not hold on the native runtime (the default): there rows cost in every dtype
(SmolLM2-135M, 2 threads: bfloat16 c(4) = 1.34, c(8) = 1.86; float32 c(8) = 1.7; 4-bit c(8) = 2.9;
``paradec cost-curve``; the transformers runtime's bfloat16 now reads c(8) = 3.5 as well). By the
sweeps' own counts the bfloat16 column then overshoots: Token Recycling's 12-node template with its
n-gram branch gave ~2.2 tokens per forward on summaries and ~1.4 on open questions, for a forward of
13-21 rows that costs ~2.5-3.5 one-row forwards there. The values stay as measured until they are
swept on the native runtime. ``auto``, the default method, does not take its sizes from this table:
it gives its candidates room for ``max_nodes`` and cuts every draft to the size the runtime's measured
cost curve pays for (``costs.py``), whatever the runtime, dtype and machine. With a fixed method on the
native runtime, the float32 column's sizes are the better guess in every dtype (e.g. ``recycling
{"tree_size": 4, "max_depth": 3, "lookup_depth": 4}``).
"""

from __future__ import annotations

import dataclasses

import torch

HALF = (torch.bfloat16, torch.float16)

# method -> option -> (bfloat16/float16, every other dtype). Measured on SmolLM2-135M:
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


def dtype_default(method: str, option: str, dtype: torch.dtype | None):
    """The table's value of ``option`` for ``method`` on a model of ``dtype``."""
    return BY_DTYPE[method][option][0 if dtype in HALF else 1]


def with_defaults(method: str, config, dtype: torch.dtype | None):
    """``config`` with every option it leaves ``None`` taken from the table (validated again)."""
    fill = {name: dtype_default(method, name, dtype) for name in BY_DTYPE.get(method, {})
            if getattr(config, name) is None}
    return dataclasses.replace(config, **fill) if fill else config
