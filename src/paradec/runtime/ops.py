"""The handful of operations a decoder layer needs, behind one interface with two implementations.

- ``NativeOps``: the C++ kernels (float32 activations; every weights.py format), row-invariant: a
  row's result never depends on the other rows of the call (see kernels/common.h). A whole stack of
  layers is one call (``decoder``): per token the Python side only builds the rows' metadata.
- ``TorchOps``: the same operations in plain torch, in any float dtype. The reference for the
  kernels' tests, the float64 path of the exactness tests, and the fallback where no compiler exists.
  NOT row-invariant (``F.linear`` may round a row differently with other rows beside it): where it
  runs, the bit-identical guarantee holds only up to rounding (``--require-kernels`` refuses the fallback).

Shared conventions: ``caches`` is a list of per-sequence KV tensors (layers, 2, Hkv, capacity, D);
``rows`` (M, 2) says which (sequence, slot) each row's key/value is written to; a row attends to the
slots ``start .. prefix - 1`` of its sequence and then to ``extra`` (M, E) slots (ascending, -1 = none).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from ..errors import ParadecError
from .kernels import FMT_CODES, MAX_PARTS, LayerC, LinearC, ModelC, RowsC
from .tiles import QUANT_FORMATS
from .weights import Linear


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NativeOps:
    def __init__(self, kernels):
        self.k = kernels
        self.dtype = torch.float32  # activations
        self._linears: dict[int, tuple[Linear, LinearC]] = {}  # id(Linear) -> (the layer, its C structure)
        self._models: dict[int, tuple[object, ModelC, object]] = {}  # id(Weights) -> (weights, C model, its layers)

    def _c(self, lin: Linear) -> LinearC:
        """The C structure of ``lin`` (built once; the entry keeps ``lin``'s tensors alive)."""
        hit = self._linears.get(id(lin))
        if hit is not None and hit[0] is lin:
            return hit[1]
        for p in lin.parts:  # the tiles Python packed must be the ones the kernels read (tiles.py = quant.h)
            if p.fmt in QUANT_FORMATS and p.w.shape[1] != self.k.tile_bytes(p.fmt, lin.K):
                raise ValueError(f"{p.fmt} tiles of {p.w.shape[1]} bytes for K = {lin.K}; the kernels read "
                                 f"{self.k.tile_bytes(p.fmt, lin.K)}")
        c = linear_c(lin)
        self._linears[id(lin)] = (lin, c)
        return c

    def linear(self, x: torch.Tensor, lin: Linear) -> torch.Tensor:  # (M, K) -> (M, N)
        if x.dim() != 2 or x.shape[1] != lin.K or x.dtype != torch.float32:
            raise ValueError(f"linear: x must be float32 (M, {lin.K}), got {tuple(x.shape)} {x.dtype}")
        x = x.contiguous()
        y = torch.empty(x.shape[0], lin.shape[0], dtype=torch.float32)
        self.k.set_threads(torch.get_num_threads())
        self.k.matmul(self._c(lin), x.shape[0], x.data_ptr(), y.data_ptr())
        return y

    def embed(self, table: Linear, tokens: torch.Tensor) -> torch.Tensor:  # (M,) -> (M, K) float32
        tokens = tokens.to(torch.int64).contiguous()
        vocab = table.shape[0]
        bad = tokens[(tokens < 0) | (tokens >= vocab)]
        if len(bad):
            raise ParadecError(f"token id {int(bad[0])} is outside the vocabulary (size {vocab})")
        out = torch.empty(len(tokens), table.K, dtype=torch.float32)
        self.k.embed(self._c(table), tokens.data_ptr(), len(tokens), out.data_ptr())
        return out

    def decoder(self, w, rope, rows, caches: list[torch.Tensor], layers: int, h: torch.Tensor) -> torch.Tensor:
        """The first ``layers`` layers over the rows in one call: final-normed states (M, hidden)."""
        model = self._model(w)
        a = w.arch
        M = len(rows.tokens)
        keep = [rows.positions, rows.store, rows.seq, rows.prefix, rows.extra, *rows.start.values()]
        keep = [t.contiguous() for t in keep]
        positions, store, seq, prefix, extra, *starts = keep
        start_of = dict(zip(rows.start.keys(), starts))
        start = (ctypes.c_void_p * max(1, layers))(*[start_of[a.windows[i]].data_ptr() for i in range(layers)])
        cache_ptrs = (ctypes.c_void_p * len(caches))(*[c.data_ptr() for c in caches])
        caps = torch.tensor([c.shape[3] for c in caches], dtype=torch.int64)
        c = RowsC(M, positions.data_ptr(), store.data_ptr(), seq.data_ptr(), start, prefix.data_ptr(), extra.data_ptr(),
                  extra.shape[1], cache_ptrs, caps.data_ptr(), len(caches), rope.cos.data_ptr(), rope.sin.data_ptr(),
                  rope.cos.shape[0])
        out = torch.empty_like(h)
        self.k.set_threads(torch.get_num_threads())
        self.k.layers(model, layers, c, h.data_ptr(), out.data_ptr())
        return out

    def _model(self, w) -> ModelC:
        hit = self._models.get(id(w))
        if hit is not None and hit[0] is w:
            return hit[1]
        a = w.arch
        arr = (LayerC * a.layers)()
        for i, l in enumerate(w.layers):
            arr[i] = LayerC(self._c(l.qkv), self._c(l.o), self._c(l.gate_up), self._c(l.down), l.attn_norm.data_ptr(),
                            l.mlp_norm.data_ptr())
        model = ModelC(a.layers, a.hidden, a.heads, a.kv_heads, a.head_dim, a.intermediate, a.eps, int(w.kv == torch.bfloat16),
                       arr, w.norm.data_ptr())
        self._models[id(w)] = (w, model, arr)
        return model


def linear_c(lin: Linear) -> LinearC:
    """``lin`` as the kernels' ``pd_linear`` (pointers into its tensors)."""
    if len(lin.parts) > MAX_PARTS:
        raise ValueError(f"a linear layer has at most {MAX_PARTS} parts for the kernels, got {len(lin.parts)}")
    c = LinearC(lin.shape[0], lin.K, len(lin.parts), 0, _ptr(lin.bias))
    for i, p in enumerate(lin.parts):
        fmt = "bf16-tiled" if p.float_tiled else p.fmt
        if fmt not in FMT_CODES:
            raise ValueError(f"the kernels do not read {p.fmt} weights")
        if not p.w.is_contiguous():
            raise ValueError("weights must be contiguous")
        c.parts[i].fmt, c.parts[i].N, c.parts[i].w = FMT_CODES[fmt], p.N, p.w.data_ptr()
    return c


class TorchOps:
    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self._dense: dict[int, torch.Tensor] = {}  # id(Linear) -> its weight in self.dtype

    def embed(self, table: Linear, tokens: torch.Tensor) -> torch.Tensor:
        vocab = table.shape[0]
        bad = tokens[(tokens < 0) | (tokens >= vocab)]
        if len(bad):
            raise ParadecError(f"token id {int(bad[0])} is outside the vocabulary (size {vocab})")
        return table.rows(tokens).to(self.dtype)

    def linear(self, x, lin: Linear):
        w = self._dense.get(id(lin))
        if w is None:
            w = self._dense[id(lin)] = lin.dequantize(self.dtype)
        return F.linear(x, w, None if lin.bias is None else lin.bias.to(self.dtype))

    def decoder(self, w, rope, rows, caches, layers: int, h: torch.Tensor) -> torch.Tensor:
        from .model import decoder_layers

        return decoder_layers(w, self, rope, rows, caches, layers, h)

    def rmsnorm(self, x, w, eps):
        # in float32 and back, as transformers' Llama/Qwen2 RMSNorm does, so float64 runs match it closely
        x32 = x.to(torch.float32)
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def add_rmsnorm(self, h, delta, w, eps):
        h += delta
        return self.rmsnorm(h, w, eps)

    def silu_mul(self, gu):
        gate, up = gu.chunk(2, dim=-1)
        return F.silu(gate) * up

    def rope_store(self, qkv, heads, kv_heads, cos, sin, positions, caches, rows, layer):
        M = qkv.shape[0]
        D = cos.shape[1] * 2
        q, k, v = qkv.view(M, heads + 2 * kv_heads, D).split([heads, kv_heads, kv_heads], dim=1)
        c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)  # (M, 1, D/2)

        def rotate(x):
            x1, x2 = x[..., : D // 2], x[..., D // 2 :]
            return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

        k = rotate(k)
        for r in range(M):
            cache = caches[int(rows[r, 0])]
            slot = int(rows[r, 1])
            cache[layer, 0, :, slot] = k[r].to(cache.dtype)
            cache[layer, 1, :, slot] = v[r].to(cache.dtype)
        return rotate(q).contiguous()

    def attention(self, q, caches, seq, start, prefix, extra, layer, scale):
        M, H, D = q.shape
        out = torch.empty_like(q)
        for r in range(M):
            cache = caches[int(seq[r])]
            slots = list(range(int(start[r]), int(prefix[r]))) + [int(e) for e in extra[r] if e >= 0]
            kv = cache[layer][:, :, slots].to(q.dtype)  # (2, Hkv, n, D)
            k, v = kv[0].repeat_interleave(H // kv.shape[1], 0), kv[1].repeat_interleave(H // kv.shape[1], 0)
            p = torch.softmax((k @ q[r].unsqueeze(-1)).squeeze(-1) * scale, dim=-1)  # (H, n)
            out[r] = (p.unsqueeze(1) @ v).squeeze(1)
        return out
