"""Weights as flat data: packed linear layers in one of five formats, and quantisation into them.

Formats (``Linear.fmt``), rows = output features, K = input features:

- ``f32`` / ``bf16`` / ``f64``: the matrix itself, ``w`` of shape (N, K);
- ``q8``: GGML Q8_0 blocks, ``w`` uint8 (N, K/32 * 34): per 32 weights an fp16 scale d, then 32 int8 q;
  weight = d * q;
- ``q4``: GGML Q4_1 blocks, ``w`` uint8 (N, K/32 * 20): fp16 scale d, fp16 minimum m, then 16 bytes
  of 4-bit q (byte j holds element j in its low nibble and element j + 16 in its high one);
  weight = d * q + m.

The quantised layouts are the GGUF file's own, so GGUF tensors in these formats are used byte for byte.
Worked example (q4, one block): values -1.0 .. 0.55 in steps of 0.05 → m = -1.0, d = 1.55 / 15,
q = round((w - m) / d); byte 0 packs q[0] | q[16] << 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QK = 32  # quantisation block
FORMATS = ("f32", "bf16", "f64", "q8", "q4")
FLOAT_FORMATS = {"f32": torch.float32, "bf16": torch.bfloat16, "f64": torch.float64}
BLOCK_BYTES = {"q8": 2 + QK, "q4": 4 + QK // 2}


@dataclass(frozen=True)
class Linear:
    """One linear layer, y = x @ weight.T (+ bias); ``w`` as the format says."""

    fmt: str
    w: torch.Tensor
    bias: torch.Tensor | None = None  # (N,) float32 (float64 under f64)

    @property
    def out_features(self) -> int:
        return self.w.shape[0]

    @property
    def in_features(self) -> int:
        return self.w.shape[1] // BLOCK_BYTES[self.fmt] * QK if self.fmt in BLOCK_BYTES else self.w.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w, self.bias) if t is not None)

    def rows(self, index: torch.Tensor) -> "Linear":
        """The layer restricted to output rows ``index`` (an embedding lookup)."""
        return Linear(self.fmt, self.w[index])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight matrix (N, K) in ``dtype``."""
        if self.fmt in FLOAT_FORMATS:
            return self.w.to(dtype)
        N = self.w.shape[0]
        blocks = self.w.view(N, -1, BLOCK_BYTES[self.fmt])
        d = blocks[..., 0:2].contiguous().view(torch.float16).to(dtype)  # (N, nb, 1)
        if self.fmt == "q8":
            q = blocks[..., 2:].contiguous().view(torch.int8).to(dtype)
            return (q * d).reshape(N, -1)
        m = blocks[..., 2:4].contiguous().view(torch.float16).to(dtype)
        packed = blocks[..., 4:]
        q = torch.cat([packed & 0x0F, packed >> 4], dim=-1).to(dtype)  # low nibbles (0..15), then high (16..31)
        return (q * d + m).reshape(N, -1)


def quantize(weight: torch.Tensor, fmt: str, bias: torch.Tensor | None = None) -> Linear:
    """Pack a float (N, K) matrix into ``fmt``; q8/q4 need K divisible by 32."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; one of {FORMATS}")
    bias = None if bias is None else bias.to(torch.float64 if fmt == "f64" else torch.float32).contiguous()
    if fmt in FLOAT_FORMATS:
        return Linear(fmt, weight.to(FLOAT_FORMATS[fmt]).contiguous(), bias)
    N, K = weight.shape
    if K % QK:
        raise ValueError(f"{fmt} needs in_features divisible by {QK}, got {K}")
    blocks = weight.to(torch.float32).view(N, K // QK, QK)
    if fmt == "q8":
        d = (blocks.abs().amax(-1, keepdim=True) / 127).to(torch.float16)  # the scale as stored
        q = torch.round(blocks / torch.where(d > 0, d, 1).float()).clamp(-127, 127).to(torch.int8)
        packed = torch.cat([d.view(torch.uint8), q.view(torch.uint8)], dim=-1)
    else:
        lo = blocks.amin(-1, keepdim=True).to(torch.float16)
        d = ((blocks.amax(-1, keepdim=True) - lo.float()) / 15).to(torch.float16)
        q = torch.round((blocks - lo.float()) / torch.where(d > 0, d, 1).float()).clamp(0, 15).to(torch.uint8)
        nibbles = q[..., : QK // 2] | (q[..., QK // 2 :] << 4)
        packed = torch.cat([d.view(torch.uint8), lo.view(torch.uint8), nibbles], dim=-1)
    return Linear(fmt, packed.reshape(N, -1).contiguous(), bias)
