"""The decoder as one plain function over flat weights: embed → layers → norm → LM head.

Every layer is the same six operations of ``ops`` (see ops.py; the kernels run the whole stack
in one call); a block of M rows goes through together, each row attending to what its ``Rows`` entry says, so the same function serves a
prompt (a causal chain), a draft tree, a bidirectional diffusion block, or rows of several
sequences at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arch import Arch
from .weights import Linear


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # (hidden,)
    qkv: Linear  # (heads + 2 kv_heads) * head_dim outputs: q | k | v
    o: Linear
    mlp_norm: torch.Tensor  # (hidden,)
    gate_up: Linear  # 2 * intermediate outputs: gate | up
    down: Linear


@dataclass
class Weights:
    arch: Arch
    embed: Linear  # (vocab, hidden), read by rows
    layers: list[LayerWeights]
    norm: torch.Tensor  # (hidden,)
    lm_head: Linear  # (vocab, hidden); the same object as embed when tied and stored alike
    act: torch.dtype  # activation dtype (float32, or float64 on the reference path)
    kv: torch.dtype  # KV-cache dtype

    @property
    def nbytes(self) -> int:
        linears = [self.embed] + ([] if self.lm_head is self.embed else [self.lm_head])
        linears += [lin for layer in self.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        return sum(lin.nbytes for lin in linears)


@dataclass
class Rows:
    """Per-row metadata of one forward.

    tokens / positions: (M,) int64
    store:  (M, 2) int64, (sequence, cache slot) the row's key and value are written to
    seq:    (M,) int64, the sequence whose cache the row reads
    start:  per distinct sliding window (None = full attention), (M,) first visible slot
    prefix: (M,) int64, slots start .. prefix-1 are visible
    extra:  (M, E) int64, further visible slots, ascending, -1 padded
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    store: torch.Tensor
    seq: torch.Tensor
    start: dict[int | None, torch.Tensor]
    prefix: torch.Tensor
    extra: torch.Tensor


@torch.inference_mode()
def forward(w: Weights, ops, rope, rows: Rows, caches: list[torch.Tensor], logits_rows: torch.Tensor | None = None,
            layers: int | None = None, exit_head=None, hidden: bool = False):
    """Run ``rows`` through the first ``layers`` layers (all by default) and return logits.

    logits_rows: which rows get logits (None: all); exit_head: maps the final-normed hidden states
    (n, hidden) to logits instead of the LM head (a trained early-exit head).
    returns: (n, vocab) float32 (float64 on the float64 path); with ``hidden``, also the final-normed
    hidden states of every row (M, hidden) — the features the LM head reads
    """
    h = ops.embed(w.embed, rows.tokens).contiguous()  # (M, hidden): the residual stream
    states = ops.decoder(w, rope, rows, caches, layers if layers is not None else w.arch.layers, h)
    x = states if logits_rows is None else states[logits_rows].contiguous()
    logits = exit_head(x) if exit_head is not None else ops.linear(x, w.lm_head)
    return (logits, states) if hidden else logits


def decoder_layers(w: Weights, ops, rope, rows: Rows, caches: list[torch.Tensor], layers: int, h: torch.Tensor) -> torch.Tensor:
    """The first ``layers`` layers, one operation at a time (``TorchOps``; the kernels do the same in one
    call): h (M, hidden) is the residual stream, updated in place; returns the states after the norm
    that follows the last layer (the final norm after the model's last layer)."""
    a = w.arch
    scale = a.head_dim ** -0.5
    todo = w.layers[:layers]
    if not todo:
        return h.clone()
    x = ops.rmsnorm(h, todo[0].attn_norm, a.eps)
    for i, layer in enumerate(todo):
        qkv = ops.linear(x, layer.qkv)  # (M, qkv_rows)
        q = ops.rope_store(qkv, a.heads, a.kv_heads, rope.cos, rope.sin, rows.positions, caches, rows.store, i)
        att = ops.attention(q, caches, rows.seq, rows.start[a.windows[i]], rows.prefix, rows.extra, i, scale)
        x = ops.add_rmsnorm(h, ops.linear(att.view(att.shape[0], -1), layer.o), layer.mlp_norm, a.eps)
        nxt = todo[i + 1].attn_norm if i + 1 < len(todo) else w.norm
        x = ops.add_rmsnorm(h, ops.linear(ops.silu_mul(ops.linear(x, layer.gate_up)), layer.down), nxt, a.eps)
    return x
