"""paradec's own runtime: flat packed weights, a preallocated KV cache, row-invariant C++ kernels.

``NativeRuntime`` holds what every sequence shares (weights, kernels, rotary tables);
``NativeTarget`` is one sequence: its ``KVCache`` behind the verbs of ``Target``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..errors import ParadecError
from .arch import JsonConfig, RopeTables, arch_of
from . import packed
from .kernels import KernelsUnavailable, kernels
from .kv import KVCache
from .loading import Layout, SafetensorsSource, StateDictSource, load_weights, resolve_quant
from .model import Rows, Weights, forward
from .ops import NativeOps, TorchOps
from .target import Block, Target, visible_slots

log = logging.getLogger(__name__)


class NativeRuntime:
    name = "native"

    def __init__(self, weights: Weights, ops, quant: str = "none"):
        self.weights = weights
        self.arch = weights.arch
        self.ops = ops
        self.rope = RopeTables(self.arch, weights.act)
        self.vocab_size = self.arch.vocab_size
        self.layers = self.arch.layers
        self.quant = quant  # the resolved --quant
        self.max_length = self.arch.max_positions

    @classmethod
    def load(cls, directory: Path, dtype: torch.dtype, quant: str = "none", gguf_file: Path | None = None,
             kernels_required: bool = False) -> "NativeRuntime":
        """Read the config and weights of ``directory`` (and ``gguf_file``'s blocks) for ``dtype``/``quant``."""
        arch = arch_of(JsonConfig.read(directory))
        sources = sorted(directory.glob("*.safetensors")) + [directory / "config.json"] + ([gguf_file] if gguf_file else [])
        cache = packed.path_for(packed.key(sources, dtype, quant))
        hit = packed.load(cache, arch)
        if hit is None:
            quant = resolve_quant(quant, dtype, gguf_file)
            weights = load_weights(SafetensorsSource(directory), arch, Layout.of(dtype, quant), gguf_file)
            packed.save(cache, weights, quant)
        else:
            weights, quant = hit
        return cls(weights, choose_ops(weights.act, kernels_required), quant)

    @classmethod
    def from_hf(cls, hf_model, dtype: torch.dtype, quant: str = "none") -> "NativeRuntime":
        """The same, from a transformers model in memory (tests build tiny ones in-process)."""
        arch = arch_of(hf_model.config)
        quant = resolve_quant(quant, dtype, None)
        layout = Layout.of(dtype, quant)
        return cls(load_weights(StateDictSource(hf_model.state_dict()), arch, layout), choose_ops(layout.act), quant)

    @property
    def description(self) -> str:
        kind = "C++ kernels" if isinstance(self.ops, NativeOps) else "torch fallback"
        w = self.weights
        return f"native ({kind}; linear {w.layers[0].o.fmt}, head {w.lm_head.fmt}, kv {str(w.kv).removeprefix('torch.')})"

    def target(self, layers: int | None = None, exit_head=None) -> "NativeTarget":
        """A fresh sequence; ``layers``/``exit_head`` make a truncated model (self-speculation)."""
        return NativeTarget(self, layers, exit_head)

    def forward_many(self, targets: list["NativeTarget"], blocks: list[Block], hidden: bool = False) -> list:
        """One forward over the rows of several sequences: the weights are read once for all of them,
        and each row attends to its own sequence's cache only. Rows are invariant, so every sequence gets
        the bits it would get alone. Returns per block its logits (and every row's hidden states with ``hidden``)."""
        first = targets[0]
        if any(t.runtime is not self or (t.layers, t.exit_head) != (first.layers, first.exit_head) for t in targets):
            raise ValueError("forward_many needs targets of this runtime with the same layers and exit head")
        parts = [t._rows(b.tokens, b.offsets, b.mask, i) for i, (t, b) in enumerate(zip(targets, blocks))]
        width = max(p["extra"].shape[1] for p in parts)
        cat = lambda key: torch.cat([p[key] for p in parts])  # noqa: E731
        extra = torch.cat([torch.nn.functional.pad(p["extra"], (0, width - p["extra"].shape[1]), value=-1) for p in parts])
        positions = cat("positions")
        self.rope.ensure(int(positions.max()) + 1)
        start = {w: (positions - w + 1).clamp(min=0) if w else torch.zeros_like(positions) for w in set(self.arch.windows)}
        rows = Rows(cat("tokens"), positions, cat("store"), cat("seq"), start, cat("prefix"), extra)
        bounds, at = [], 0
        for b in blocks:
            bounds.append((at + len(b.tokens) - 1, at + len(b.tokens)) if b.last_only else (at, at + len(b.tokens)))
            at += len(b.tokens)
        keep = torch.cat([torch.arange(lo, hi) for lo, hi in bounds])
        out = forward(self.weights, self.ops, self.rope, rows, [t.kv.tensor for t in targets], keep, first.layers,
                      first.exit_head, hidden)
        logits, states = out if hidden else (out, None)
        sizes = [hi - lo for lo, hi in bounds]
        if hidden:  # every row's hidden states, also for a last_only block
            return list(zip(logits.split(sizes), states.split([len(b.tokens) for b in blocks])))
        return list(logits.split(sizes))


REQUIRE_KERNELS = "PARADEC_REQUIRE_KERNELS"  # set (not "0"): no fallback (``--require-kernels`` sets it)


def choose_ops(act: torch.dtype, required: bool = False):
    """The C++ kernels for float32 activations; plain torch for float64, or where they cannot be built.
    Plain torch (``F.linear``) is not row-invariant, so the fallback loses the bit-identical guarantee:
    ``required`` (or ``$PARADEC_REQUIRE_KERNELS``) makes it an error instead."""
    if act != torch.float32:
        return TorchOps(act)
    try:
        return NativeOps(kernels())
    except KernelsUnavailable as exc:
        if required or os.environ.get(REQUIRE_KERNELS, "") not in ("", "0"):
            raise KernelsUnavailable(f"{exc}; the kernels are required (--require-kernels, {REQUIRE_KERNELS}): "
                                     "paradec does not fall back to plain torch, whose rows are not "
                                     "bit-identical") from exc
        log.warning("%s; the native runtime falls back to plain torch operations (slow, and rows are not "
                    "bit-identical: README, What is guaranteed; --require-kernels makes this an error)", exc)
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

    def _forward(self, tokens, offsets, mask, last_only, hidden=False):
        return self.runtime.forward_many([self], [Block(tokens, offsets, mask, last_only)], hidden)[0]

    def _rows(self, tokens: list[int], offsets: list[int], mask: torch.Tensor | None, seq: int) -> dict:
        """This target's share of a forward's ``Rows``, its rows appended to the cache as pending."""
        n, kv = len(tokens), self.kv
        if mask is None:  # a causal chain after every pending row: no mask arithmetic
            prefix, extra = torch.arange(n) + (kv.length + kv.pending + 1), torch.full((n, 1), -1, dtype=torch.int64)
        else:
            prefix, extra = visible_slots(mask.to(torch.bool), kv.length)
        kv.reserve(n)
        first = kv.append(n)
        self.pending = kv.pending
        positions = torch.tensor(offsets, dtype=torch.int64) + kv.length
        store = torch.stack([torch.full((n,), seq, dtype=torch.int64), torch.arange(first, first + n)], dim=1)
        return dict(tokens=torch.tensor(tokens, dtype=torch.int64), positions=positions, store=store,
                    seq=store[:, 0], prefix=prefix, extra=extra)

    def fork(self) -> "NativeTarget":
        twin = NativeTarget(self.runtime, self.layers, self.exit_head)
        twin.kv = self.kv.copy()
        twin.length = twin.kv.length
        return twin

    def commit(self, keep: list[int]) -> None:
        self.kv.keep(list(keep))
        self.length, self.pending = self.kv.length, 0
