"""The handful of operations a decoder layer needs, behind one interface with two implementations.

- ``NativeOps``: the C++ kernels (float32 activations; f32/bf16/q8/q4 weights), row-invariant: a
  row's result never depends on the other rows of the call (see kernels/kernels.cpp).
- ``TorchOps``: the same operations in plain torch, in any float dtype. The reference for the
  kernels' tests, the float64 path of the exactness tests, and the fallback where no compiler exists.
  NOT row-invariant (``F.linear`` may round a row differently with other rows beside it): where it
  runs, the bit-identical guarantee holds only up to rounding (``--require-kernels`` refuses the fallback).

Shared conventions: ``caches`` is a list of per-sequence KV tensors (layers, 2, Hkv, capacity, D);
``rows`` (M, 2) says which (sequence, slot) each row's key/value is written to; a row attends to the
slots ``start .. prefix - 1`` of its sequence and then to ``extra`` (M, E) slots (ascending, -1 = none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .weights import Linear


class NativeOps:
    def __init__(self, kernels):
        self.k = kernels
        self.dtype = torch.float32  # activations

    def linear(self, x: torch.Tensor, lin: Linear) -> torch.Tensor:  # (M, K) -> (M, N)
        return self.k.linear(x, lin.fmt, lin.w, lin.shape[0], lin.bias)

    def embed(self, table: Linear, tokens: torch.Tensor) -> torch.Tensor:  # (M,) -> (M, K) float32
        if table.fmt in ("q8", "q4"):
            return self.k.dequant_rows(table.w, table.fmt, table.shape[1], tokens)
        return table.rows(tokens).to(torch.float32)

    def rmsnorm(self, x, w, eps):
        return self.k.rmsnorm(x, w, eps)

    def add_rmsnorm(self, h, delta, w, eps):  # h += delta in place; returns rmsnorm(h) * w
        return self.k.add_rmsnorm(h, delta, w, eps)

    def silu_mul(self, gu):  # (M, 2I) -> (M, I)
        return self.k.silu_mul(gu)

    def rope_store(self, qkv, heads, kv_heads, cos, sin, positions, caches, rows, layer):  # -> q (M, H, D)
        return self.k.rope_store(qkv, heads, kv_heads, cos, sin, positions, caches, rows, layer)

    def attention(self, q, caches, seq, start, prefix, extra, layer, scale):  # (M, H, D) -> (M, H, D)
        return self.k.attention(q, caches, seq, start, prefix, extra, layer, scale)


class TorchOps:
    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self._dense: dict[int, torch.Tensor] = {}  # id(Linear) -> its weight in self.dtype

    def embed(self, table: Linear, tokens: torch.Tensor) -> torch.Tensor:
        return table.rows(tokens).to(self.dtype)

    def linear(self, x, lin: Linear):
        w = self._dense.get(id(lin))
        if w is None:
            w = self._dense[id(lin)] = lin.dequantize(self.dtype)
        return F.linear(x, w, None if lin.bias is None else lin.bias.to(self.dtype))

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
