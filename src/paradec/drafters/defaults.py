"""The drafters' per-dtype defaults: one table, read for every option a config leaves ``None``.

Why by dtype: on CPU a forward over 8-16 rows costs about one row's in bfloat16/float16, but 1.4x
already at 2 rows and 1.7x at 8 in float32 (docs/sweeps/*.md). So in half precision trees are
bigger and gates looser; in float32 (and float64, and when the dtype is unknown) trees stay small
and the cost gate (``gate.py``) stops drafts that keep failing.
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
