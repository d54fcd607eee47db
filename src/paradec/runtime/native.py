"""paradec's own runtime: flat packed weights, a preallocated KV cache, row-invariant C++ kernels.

``NativeRuntime`` holds what every sequence shares (weights, kernels, rotary tables);
``NativeTarget`` is one sequence: its ``KVCache`` and the three verbs of ``Target``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import ParadecError
from .arch import RopeTables, arch_of
from .kernels import KernelsUnavailable, kernels
from .kv import KVCache
from .loading import Layout, SafetensorsSource, StateDictSource, load_weights, read_config
from .model import Rows, Weights, forward
from .ops import NativeOps, TorchOps
from .target import Target, visible_slots

log = logging.getLogger(__name__)


class NativeRuntime:
    name = "native"

    def __init__(self, weights: Weights, ops):
        self.weights = weights
        self.arch = weights.arch
        self.ops = ops
        self.rope = RopeTables(self.arch, weights.act)
        self.vocab_size = self.arch.vocab_size
        self.layers = self.arch.layers
        self.max_length = self.arch.max_positions

    @classmethod
    def load(cls, directory: Path, dtype: torch.dtype, quant: str = "none", gguf_file: Path | None = None,
             kernels_required: bool = False) -> "NativeRuntime":
        """Read the config and weights of ``directory`` (and ``gguf_file``'s blocks) for ``dtype``/``quant``."""
        arch = arch_of(read_config(directory))
        layout = Layout.of(dtype, quant)
        weights = load_weights(SafetensorsSource(directory), arch, layout, gguf_file)
        return cls(weights, choose_ops(layout.act, kernels_required))

    @classmethod
    def from_hf(cls, hf_model, dtype: torch.dtype, quant: str = "none") -> "NativeRuntime":
        """The same, from a transformers model in memory (tests build tiny ones in-process)."""
        arch = arch_of(hf_model.config)
        layout = Layout.of(dtype, quant)
        return cls(load_weights(StateDictSource(hf_model.state_dict()), arch, layout), choose_ops(layout.act))

    @property
    def description(self) -> str:
        kind = "C++ kernels" if isinstance(self.ops, NativeOps) else "torch fallback"
        w = self.weights
        return f"native ({kind}; linear {w.layers[0].o.fmt}, head {w.lm_head.fmt}, kv {str(w.kv).removeprefix('torch.')})"

    def target(self, layers: int | None = None, exit_head=None) -> "NativeTarget":
        """A fresh sequence; ``layers``/``exit_head`` make a truncated model (self-speculation)."""
        return NativeTarget(self, layers, exit_head)


def choose_ops(act: torch.dtype, required: bool = False):
    """The C++ kernels for float32 activations; plain torch for float64, or where they cannot be built."""
    if act != torch.float32:
        return TorchOps(act)
    try:
        return NativeOps(kernels())
    except KernelsUnavailable as exc:
        if required:
            raise
        log.warning("%s; the native runtime falls back to plain torch operations (slow)", exc)
        return TorchOps(act)


class NativeTarget(Target):
    def __init__(self, runtime: NativeRuntime, layers: int | None = None, exit_head=None):
        super().__init__()
        self.runtime = runtime
        a = runtime.arch
        if layers is not None and not 1 <= layers <= a.layers:
            raise ParadecError(f"layers must be in 1..{a.layers}, got {layers}")
        self.layers, self.exit_head = layers, exit_head
        self.vocab_size = a.vocab_size
        self.max_length = runtime.max_length
        self.kv = KVCache(layers or a.layers, a.kv_heads, a.head_dim, runtime.weights.kv)

    def reset(self) -> None:
        self.crop(0)

    def crop(self, length: int) -> None:
        self.kv.crop(length)
        self.length, self.pending = self.kv.length, 0

    def _forward(self, tokens, offsets, mask, last_only):
        n = len(tokens)
        kv, rt = self.kv, self.runtime
        if mask is None:  # a causal chain after every pending row: no mask arithmetic
            prefix, extra = torch.arange(n) + (kv.length + kv.pending + 1), torch.full((n, 1), -1, dtype=torch.int64)
        else:
            prefix, extra = visible_slots(mask.to(torch.bool), kv.length)
        kv.reserve(n)
        first = kv.append(n)
        positions = torch.tensor(offsets, dtype=torch.int64) + kv.length
        rt.rope.ensure(int(positions.max()) + 1)
        store = torch.stack([torch.zeros(n, dtype=torch.int64), torch.arange(first, first + n)], dim=1)
        start = {w: (positions - w + 1).clamp(min=0) if w else torch.zeros(n, dtype=torch.int64) for w in set(rt.arch.windows)}
        rows = Rows(torch.tensor(tokens, dtype=torch.int64), positions, store, torch.zeros(n, dtype=torch.int64),
                    start, prefix, extra)
        self.pending = kv.pending
        logits_rows = torch.tensor([n - 1]) if last_only else None
        return forward(rt.weights, rt.ops, rt.rope, rows, [kv.tensor], logits_rows, self.layers, self.exit_head)

    def commit(self, keep: list[int]) -> None:
        self.kv.keep(list(keep))
        self.length, self.pending = self.kv.length, 0
