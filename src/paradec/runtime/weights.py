"""Weights as flat data: packed linear layers in one of five formats, and quantisation into them.

Formats (``Linear.fmt``), rows = output features N, K = input features:

- ``f32`` / ``f64``: the matrix itself, ``w`` of shape (N, K);
- ``bf16``: the matrix in tiles of 4 rows when K % 32 == 0 (``w`` (ceil(N / 4), 4K): per 32 columns the
  4 rows' values side by side, one memory stream per tile), else the matrix itself;
- ``q8``: GGML Q8_0 blocks: per 32 weights an fp16 scale d and 32 int8 q, weight = d * q;
- ``q4``: GGML Q4_1 blocks: per 32 weights fp16 d and m and 32 4-bit q (byte j holds element j in its
  low nibble and element j + 16 in its high one), weight = d * q + m.

Quantised layers are regrouped for the kernels into *tiles* of 4 rows (``w`` has one row per tile):
per group of 8 blocks, the 4 rows' scales ``d`` (4 x 8 fp16), minima ``m`` (q4 only, 4 x 8 fp16),
then the q bytes block by block, the 4 rows' blocks side by side; the last group may hold fewer
blocks (its d/m slots are zero-padded). A tile is then one contiguous stream for the memory
prefetcher and a group's scales load as one vector. The values are exactly the GGML blocks' (a
GGUF file's tensors are regrouped, never re-rounded).

Worked example (q4, one block): values -1.0 .. 0.55 in steps of 0.05 → m = -1.0, d = 1.55 / 15,
q = round((w - m) / d); byte 0 packs q[0] | q[16] << 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

QK = 32  # quantisation block
TILE = 4  # rows per tile
GROUP = 8  # blocks per group
FORMATS = ("f32", "bf16", "f64", "q8", "q4")
FLOAT_FORMATS = {"f32": torch.float32, "bf16": torch.bfloat16, "f64": torch.float64}
QBYTES = {"q8": QK, "q4": QK // 2}  # q bytes per block
SCALES = {"q8": 1, "q4": 2}  # fp16 values per block before q: d (and m)


@dataclass(frozen=True)
class Linear:
    """One linear layer, y = x @ weight.T (+ bias); ``w`` as the format says, ``shape`` = (N, K)."""

    fmt: str
    w: torch.Tensor
    shape: tuple[int, int]
    bias: torch.Tensor | None = None  # (N,) float32 (float64 under f64)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w, self.bias) if t is not None)

    @property
    def float_tiled(self) -> bool:
        return self.fmt == "bf16" and self.w.shape[1] == TILE * self.shape[1] != self.shape[1]

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` of the weight matrix, float32 (an embedding lookup); (len(index), K)."""
        if self.float_tiled:
            K = self.shape[1]
            tiles = self.w[index // TILE].view(len(index), K // QK, TILE, QK)
            return tiles[torch.arange(len(index)), :, index % TILE].reshape(len(index), K)
        if self.fmt in FLOAT_FORMATS:
            return self.w[index]
        tiles = self.w[index // TILE]  # (n, tile bytes)
        blocks = untile(tiles, self.fmt, self.shape[1])  # (4n, nb, bytes)
        picked = blocks.view(len(index), TILE, *blocks.shape[1:])[torch.arange(len(index)), index % TILE]
        return dequantize_blocks(picked, self.fmt, torch.float32)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight matrix (N, K) in ``dtype``."""
        if self.float_tiled:
            N, K = self.shape
            return self.w.view(-1, K // QK, TILE, QK).transpose(1, 2).reshape(-1, K)[:N].to(dtype)
        if self.fmt in FLOAT_FORMATS:
            return self.w.to(dtype)
        return dequantize_blocks(untile(self.w, self.fmt, self.shape[1])[: self.shape[0]], self.fmt, dtype)


def dequantize_blocks(blocks: torch.Tensor, fmt: str, dtype: torch.dtype) -> torch.Tensor:
    """GGML blocks (N, nb, bytes) uint8 → values (N, nb * 32)."""
    N = blocks.shape[0]
    d = blocks[..., 0:2].contiguous().view(torch.float16).to(dtype)  # (N, nb, 1)
    if fmt == "q8":
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
    N, K = weight.shape
    if fmt == "bf16" and K % QK == 0:  # tiles of 4 rows (module docstring)
        w = F.pad(weight.to(torch.bfloat16), (0, 0, 0, -N % TILE))
        return Linear(fmt, w.view(-1, TILE, K // QK, QK).transpose(1, 2).reshape(-1, TILE * K).contiguous(), (N, K), bias)
    if fmt in FLOAT_FORMATS:
        return Linear(fmt, weight.to(FLOAT_FORMATS[fmt]).contiguous(), (N, K), bias)
    return from_blocks(to_blocks(weight, fmt), fmt, bias)


def to_blocks(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """Quantise a float (N, K) matrix into GGML blocks (N, K/32, bytes), as llama.cpp rounds them."""
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
    return packed


def from_blocks(blocks: torch.Tensor, fmt: str, bias: torch.Tensor | None = None) -> Linear:
    """A layer from GGML blocks, (N, nb, bytes) or (N, nb * bytes) uint8."""
    N = blocks.shape[0]
    blocks = blocks.reshape(N, -1, 2 * SCALES[fmt] + QBYTES[fmt])
    return Linear(fmt, tile(blocks, fmt), (N, blocks.shape[1] * QK), bias)


def tile(blocks: torch.Tensor, fmt: str) -> torch.Tensor:
    """GGML blocks (N, nb, bytes) → tiles (ceil(N / 4), tile bytes); layout in the module docstring."""
    N, nb, _ = blocks.shape
    S, QB = SCALES[fmt], QBYTES[fmt]
    blocks = F.pad(blocks, (0, 0, 0, 0, 0, -N % TILE))  # zero rows up to whole tiles
    T = blocks.shape[0] // TILE
    b = blocks.view(T, TILE, nb, -1)
    full, cg = nb // GROUP * GROUP, nb % GROUP
    parts = []
    if full:
        g = b[:, :, :full].reshape(T, TILE, full // GROUP, GROUP, -1).permute(0, 2, 1, 3, 4)  # (T, ng, 4, 8, bytes)
        scales = [g[..., 2 * s : 2 * s + 2].reshape(T, full // GROUP, -1) for s in range(S)]
        q = g[..., 2 * S :].transpose(2, 3).reshape(T, full // GROUP, -1)  # block-major, 4 rows side by side
        parts.append(torch.cat(scales + [q], dim=-1).reshape(T, -1))
    if cg:
        t = b[:, :, full:]  # (T, 4, cg, bytes)
        scales = [F.pad(t[..., 2 * s : 2 * s + 2], (0, 0, 0, GROUP - cg)).reshape(T, -1) for s in range(S)]
        parts += scales + [t[..., 2 * S :].transpose(1, 2).reshape(T, -1)]
    return torch.cat(parts, dim=-1).contiguous()


def untile(tiles: torch.Tensor, fmt: str, K: int) -> torch.Tensor:
    """Tiles (T, tile bytes) → GGML blocks (4T, nb, bytes), the inverse of ``tile``."""
    T = tiles.shape[0]
    S, QB, nb = SCALES[fmt], QBYTES[fmt], K // QK
    full, cg = nb // GROUP * GROUP, nb % GROUP
    group = 2 * S * TILE * GROUP + GROUP * TILE * QB
    out = []
    if full:
        g = tiles[:, : full // GROUP * group].reshape(T, full // GROUP, group)
        scales = [g[..., i * 2 * TILE * GROUP : (i + 1) * 2 * TILE * GROUP].reshape(T, -1, TILE, GROUP, 2) for i in range(S)]
        q = g[..., 2 * S * TILE * GROUP :].reshape(T, -1, GROUP, TILE, QB).transpose(2, 3)  # (T, ng, 4, 8, QB)
        blocks = torch.cat(scales + [q], dim=-1)  # (T, ng, 4, 8, bytes)
        out.append(blocks.permute(0, 2, 1, 3, 4).reshape(T, TILE, full, -1))
    if cg:
        tail = tiles[:, full // GROUP * group :]
        scales = [tail[:, i * 2 * TILE * GROUP : (i + 1) * 2 * TILE * GROUP].reshape(T, TILE, GROUP, 2)[:, :, :cg] for i in range(S)]
        q = tail[:, 2 * S * TILE * GROUP :].reshape(T, cg, TILE, QB).transpose(1, 2)  # (T, 4, cg, QB)
        out.append(torch.cat(scales + [q], dim=-1))
    return torch.cat(out, dim=2).reshape(T * TILE, nb, -1)
