"""Weights as flat data: linear layers in float or GGML-quantised formats, packed for the kernels.

Formats (``Part.fmt``), rows = output features N, K = input features:

- ``f32`` / ``f64``: the matrix itself, ``w`` of shape (N, K);
- ``bf16``: the matrix in tiles of 4 rows when K % 32 == 0 (``w`` (ceil(N / 4), 4K): per 32 columns the
  4 rows' values side by side, one memory stream per tile), else the matrix itself;
- ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``q4_k``, ``q5_k``, ``q6_k``: GGML's blocks, their values byte for byte,
  regrouped into the integer kernels' tiles (``w`` (ceil(N / 4), tile bytes); layout in tiles.py and
  kernels/quant.h).

A ``Linear`` is one or more ``Part``s stacked along the outputs: q | k | v become one layer (one
kernel call), also when a GGUF file stores them in different formats (Q4_K_M keeps some v in Q6_K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import tiles
from .tiles import QUANT_FORMATS

QK = 32  # block of the formats paradec quantises to itself
TILE = 4  # rows per tile
FLOAT_FORMATS = {"f32": torch.float32, "bf16": torch.bfloat16, "f64": torch.float64}
FORMATS = tuple(FLOAT_FORMATS) + QUANT_FORMATS


@dataclass(frozen=True)
class Part:
    """N outputs of one format; ``w`` as the module docstring says."""

    fmt: str
    w: torch.Tensor
    N: int

    @property
    def float_tiled(self) -> bool:
        return self.fmt == "bf16" and self.w.dim() == 2 and self.w.shape[0] != self.N and self.w.shape[0] == -(-self.N // TILE)

    def dequantize(self, K: int, dtype: torch.dtype) -> torch.Tensor:
        """(N, K) in ``dtype``."""
        if self.float_tiled:
            return self.w.view(-1, K // QK, TILE, QK).transpose(1, 2).reshape(-1, K)[: self.N].to(dtype)
        if self.fmt in FLOAT_FORMATS:
            return self.w.to(dtype)
        return torch.from_numpy(tiles.dequantize(tiles.untile(self.w, self.fmt, self.N, K))).to(dtype)


@dataclass(frozen=True)
class Linear:
    """One linear layer, y = x @ weight.T (+ bias): ``parts`` stacked along the outputs, K inputs."""

    parts: tuple[Part, ...]
    K: int
    bias: torch.Tensor | None = None  # (N,) float32 (float64 under f64)

    @property
    def shape(self) -> tuple[int, int]:
        return sum(p.N for p in self.parts), self.K

    @property
    def fmt(self) -> str:
        """The format, or the parts' formats joined by '+' when they differ."""
        names = list(dict.fromkeys(p.fmt for p in self.parts))
        return "+".join(names)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [p.w for p in self.parts] + [self.bias] if t is not None)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` of the weight matrix, float32 (an embedding lookup); (len(index), K)."""
        (part,) = self.parts
        if part.float_tiled:
            K = self.K
            t = part.w[index // TILE].view(len(index), K // QK, TILE, QK)
            return t[torch.arange(len(index)), :, index % TILE].reshape(len(index), K).to(torch.float32)
        if part.fmt in FLOAT_FORMATS:
            return part.w[index].to(torch.float32)
        picked = part.w[index // TILE]  # the tiles holding the rows, then the row within each
        lanes = tiles.untile(picked, part.fmt, TILE * len(index), self.K)
        values = tiles.dequantize(lanes).reshape(len(index), TILE, self.K)
        return torch.from_numpy(values[np.arange(len(index)), (index % TILE).numpy()])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight matrix (N, K) in ``dtype``."""
        return torch.cat([p.dequantize(self.K, dtype) for p in self.parts])


def float_part(weight: torch.Tensor, fmt: str) -> Part:
    """A float (N, K) matrix in ``fmt`` (f32, f64, bf16)."""
    N, K = weight.shape
    if fmt == "bf16" and K % QK == 0:  # tiles of 4 rows (module docstring)
        w = F.pad(weight.to(torch.bfloat16), (0, 0, 0, -N % TILE))
        return Part(fmt, w.view(-1, TILE, K // QK, QK).transpose(1, 2).reshape(-1, TILE * K).contiguous(), N)
    return Part(fmt, weight.to(FLOAT_FORMATS[fmt]).contiguous(), N)


def ggml_part(blocks: np.ndarray | torch.Tensor, fmt: str, K: int) -> Part:
    """A part from GGML blocks (N, row bytes) uint8, its values as they are."""
    raw = blocks.numpy() if isinstance(blocks, torch.Tensor) else np.asarray(blocks)
    return Part(fmt, tiles.tile(tiles.decode(raw, fmt, K)), raw.shape[0])


def quantize(weight: torch.Tensor, fmt: str, bias: torch.Tensor | None = None) -> Linear:
    """Pack a float (N, K) matrix into ``fmt``: a float format, or q8_0 / q4_1 (K divisible by 32)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; one of {FORMATS}")
    bias = None if bias is None else bias.to(torch.float64 if fmt == "f64" else torch.float32).contiguous()
    K = weight.shape[1]
    if fmt in FLOAT_FORMATS:
        return Linear((float_part(weight, fmt),), K, bias)
    return Linear((ggml_part(tiles.encode(weight, fmt), fmt, K),), K, bias)


def stack(parts: list[Part], K: int, bias: torch.Tensor | None = None) -> Linear:
    """Parts stacked along the outputs; neighbours of one format merge into one part (one kernel pass)."""
    merged: list[Part] = []
    for p in parts:
        if merged and merged[-1].fmt == p.fmt and (p.fmt in ("f32", "f64") or merged[-1].N % TILE == 0):
            merged[-1] = Part(p.fmt, torch.cat([merged[-1].w, p.w]), merged[-1].N + p.N)
        else:
            merged.append(p)
    return Linear(tuple(merged), K, bias)
