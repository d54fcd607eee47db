"""GGML's quantised blocks ⇄ the integer kernels' tiles (layout: kernels/quant.h).

A quantised matrix is read as *lanes*: runs of S weights of one output (S = 32; 16 for Q6_K) with one
float scale ``ws`` and minimum ``wm`` each, weight = ws * (stored - offset) + wm. ``Lanes`` holds that
decoded form (stored values as small integers, the per-lane header bytes), ``decode(blocks)`` reads
it from GGML blocks and ``tile(lanes)`` regroups it for the kernels: tiles of 4 outputs, groups of 16
lanes, slice-major data. Nothing is re-rounded: the stored integers and the scale bytes are the
file's. ``untile`` inverts ``tile``; ``dequantize`` gives the float values exactly as gguf-py's
``dequantize`` computes them (ws * q, then + wm, in float32).

Worked example (q4_0, one block of 32): d = 0.5 (fp16), nibbles q → weights 0.5 * (q - 8); in the
tile the block is one lane: its 16 bytes go to 4 slice vectors, 4 bytes each (low nibbles: weights
4t..4t+3, high nibbles: 16+4t..16+4t+3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

QUANT_FORMATS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k")
GGML_TYPES = {f.upper(): f for f in QUANT_FORMATS}  # GGUF tensor type name -> format
BLOCK = {"q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),  # (weights, bytes)
         "q4_k": (256, 144), "q5_k": (256, 176), "q6_k": (256, 210)}
LANE = {f: 16 if f == "q6_k" else 32 for f in QUANT_FORMATS}  # weights per lane
HDR = {"q8_0": 32, "q4_0": 32, "q4_1": 64, "q5_0": 32, "q5_1": 64, "q4_k": 40, "q5_k": 40, "q6_k": 18}  # header bytes per output and group
OFFSET = {"q8_0": 0, "q4_0": 8, "q4_1": 0, "q5_0": 16, "q5_1": 0, "q4_k": 0, "q5_k": 0, "q6_k": 32}
BITS = {"q8_0": 8, "q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5, "q4_k": 4, "q5_k": 5, "q6_k": 6}
WITH_MIN = ("q4_1", "q5_1", "q4_k", "q5_k")  # weight = ws * stored + wm
TILE, GROUP = 4, 16  # outputs per tile, lanes per group


@dataclass
class Lanes:
    """A quantised matrix (N, K) decoded: stored (N, K) uint8 (int8 bit patterns for q8_0), and the
    header bytes of every group (N, groups, HDR) uint8 (lanes past the row's end zero)."""

    fmt: str
    stored: np.ndarray
    header: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.stored.shape


def pack_of(L: int) -> int:
    """Outputs whose lanes share one vector in a group of L lanes (a short last group: quant.h)."""
    return 1 if L > 8 else (2 if L > 4 else 4)


def _data_bytes(fmt: str, L: int) -> int:
    return {8: 32 * L, 4: 16 * L, 5: 16 * L + 64, 6: 192}[BITS[fmt]]


def groups(K: int, fmt: str) -> tuple[int, int]:
    """(full groups, lanes of the last partial group) of a row of K weights."""
    lanes = K // LANE[fmt]
    return lanes // GROUP, lanes % GROUP


def check_shape(fmt: str, K: int) -> None:
    if K % BLOCK[fmt][0]:
        raise ValueError(f"{fmt} needs rows of a multiple of {BLOCK[fmt][0]} weights, got {K}")


def _f16(b: np.ndarray) -> np.ndarray:
    return b.view(np.float16).astype(np.float32)


def scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: the 12 packed bytes of a super-block → 8 six-bit scales and 8 six-bit minima."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.reshape(*scales.shape[:-1], 8), mn.reshape(*scales.shape[:-1], 8)


def _pad_lanes(per_lane: np.ndarray, fmt: str) -> np.ndarray:
    """(N, lanes, b) → (N, groups, 16, b), zero past the last lane."""
    N, lanes, b = per_lane.shape
    ng = -(-lanes // GROUP)
    out = np.zeros((N, ng * GROUP, b), np.uint8)
    out[:, :lanes] = per_lane
    return out.reshape(N, ng, GROUP, b)


def decode(blocks: np.ndarray, fmt: str, K: int) -> Lanes:
    """GGML blocks (N, row bytes) uint8 → ``Lanes``."""
    check_shape(fmt, K)
    N = blocks.shape[0]
    size = BLOCK[fmt][1]
    if blocks.shape[1] != K // BLOCK[fmt][0] * size:
        raise ValueError(f"{fmt}: {blocks.shape[1]} bytes per row, expected {K // BLOCK[fmt][0] * size} for {K} weights")
    b = blocks.reshape(N, -1, size)
    if fmt in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1"):
        nscale = 4 if fmt in ("q4_1", "q5_1") else 2
        qs = b[..., nscale + (4 if fmt in ("q5_0", "q5_1") else 0):]
        if fmt == "q8_0":
            stored = qs
        else:  # byte j: weight j (low nibble), weight j + 16 (high)
            stored = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        if fmt in ("q5_0", "q5_1"):  # 32 fifth bits, bit j: weight j
            qh = np.ascontiguousarray(b[..., nscale : nscale + 4]).view(np.uint32)
            stored = stored | (((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4)
        padded = _pad_lanes(b[..., :nscale], fmt)  # (N, ng, 16, nscale)
        if nscale == 4:  # 16 d, then 16 m
            header = np.concatenate([padded[..., :2].reshape(N, -1, 32), padded[..., 2:].reshape(N, -1, 32)], axis=-1)
        else:
            header = padded.reshape(N, -1, 32)
        return Lanes(fmt, np.ascontiguousarray(stored.reshape(N, K)), header)
    if fmt in ("q4_k", "q5_k"):
        d, scales = b[..., 0:4], b[..., 4:16]
        qs = b[..., -128:].reshape(N, -1, 4, 32)  # chunk c of 64 weights: low nibbles, then high
        stored = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(N, -1, 256)
        if fmt == "q5_k":
            qh = b[..., 16:48]  # bit i of byte l: weight 32 i + l
            fifth = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # (N, nsb, 8, 32)
            stored = stored | (fifth.reshape(N, -1, 256) << 4)
        sc, mn = scale_min(scales)
        per_sb = np.concatenate([d, sc, mn], axis=-1)  # (N, nsb, 20): d, dmin, sc[8], m[8]
        nsb = per_sb.shape[1]
        ng = -(-nsb // 2)
        header = np.zeros((N, ng * 2, 20), np.uint8)
        header[:, :nsb] = per_sb
        return Lanes(fmt, np.ascontiguousarray(stored.reshape(N, K)), header.reshape(N, ng, 40))
    # q6_k: ql[128], qh[64], scales[16] (int8), d; weight 128 n + 32 k + l
    ql, qh, scales, d = b[..., :128], b[..., 128:192], b[..., 192:208], b[..., 208:210]
    ql = ql.reshape(N, -1, 2, 64)
    qh = qh.reshape(N, -1, 2, 32)
    low = np.stack([ql[..., :32] & 0x0F, ql[..., 32:] & 0x0F, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=3)
    high = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=3)
    stored = (low | (high << 4)).reshape(N, K)
    header = np.concatenate([d, scales], axis=-1)  # one super-block per group
    return Lanes(fmt, np.ascontiguousarray(stored), header)


def _lane_data(stored: np.ndarray, fmt: str) -> np.ndarray:
    """Stored values of one group's lanes (N, L, S) → the group's data bytes per output (N, data)."""
    N, L, S = stored.shape
    bits = BITS[fmt]
    slices = stored.reshape(N, L, S // 4, 4).transpose(0, 2, 1, 3)  # (N, slice, lane, 4)
    if bits == 8:
        return slices.reshape(N, -1)
    if bits == 6:  # vectors t = 0, 1: slices t (low) and t + 2 (high); then the top 2 bits of slices 0..3
        nib = slices & 0x0F
        vec = nib[:, :2] | (nib[:, 2:] << 4)
        top = sum(((slices[:, s] >> 4) & 3) << (2 * s) for s in range(4)).astype(np.uint8)[:, None]
        return np.concatenate([vec, top], axis=1).reshape(N, -1)
    nib = slices & 0x0F
    vec = (nib[:, :4] | (nib[:, 4:] << 4)).reshape(N, -1)
    if bits == 4:
        return vec
    fifth = ((slices >> 4) & 1).reshape(N, 8, 4 * L)
    packed = np.zeros((N, 8, 64), np.uint8)
    packed[..., : 4 * L] = fifth
    return np.concatenate([vec, np.packbits(packed, axis=-1, bitorder="little").reshape(N, -1)], axis=1)


def tile(lanes: Lanes) -> torch.Tensor:
    """``Lanes`` → the kernels' tiles (ceil(N / 4), tile bytes) uint8."""
    fmt = lanes.fmt
    N, K = lanes.shape
    S = LANE[fmt]
    full, last = groups(K, fmt)
    Np = -(-N // TILE) * TILE
    stored = np.zeros((Np, K), np.uint8)
    stored[:N] = lanes.stored
    header = np.zeros((Np, *lanes.header.shape[1:]), np.uint8)
    header[:N] = lanes.header
    T = Np // TILE
    parts = []
    for g, L in [(g, GROUP) for g in range(full)] + ([(full, last)] if last else []):
        lo = g * GROUP * S
        P = pack_of(L)  # packs of P outputs, their lanes side by side
        lanes = stored[:, lo : lo + L * S].reshape(T * TILE // P, P * L, S)
        parts.append(header[:, g].reshape(T, -1))
        parts.append(_lane_data(lanes, fmt).reshape(T, -1))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1)))


def untile(tiles: torch.Tensor, fmt: str, N: int, K: int) -> Lanes:
    """The inverse of ``tile``."""
    t = tiles.numpy() if isinstance(tiles, torch.Tensor) else tiles
    T = t.shape[0]
    S, bits = LANE[fmt], BITS[fmt]
    full, last = groups(K, fmt)
    stored = np.zeros((T * TILE, K), np.uint8)
    headers = []
    at = 0
    for g, L in [(g, GROUP) for g in range(full)] + ([(full, last)] if last else []):
        headers.append(t[:, at : at + TILE * HDR[fmt]].reshape(T * TILE, HDR[fmt]))
        at += TILE * HDR[fmt]
        P = pack_of(L)
        size = _data_bytes(fmt, P * L)
        data = t[:, at : at + TILE // P * size].reshape(T * TILE // P, size)
        at += TILE // P * size
        L = P * L  # a pack reads as a group of P L lanes
        if bits == 8:
            slices = data.reshape(-1, 8, L, 4)
        elif bits == 6:
            vec = data[:, :128].reshape(-1, 2, L, 4)
            top = data[:, 128:].reshape(-1, 1, L, 4)
            low = np.concatenate([vec & 0x0F, vec >> 4], axis=1)
            slices = low | (np.concatenate([(top >> (2 * s)) & 3 for s in range(4)], axis=1) << 4)
        else:
            vec = data[:, : 16 * L].reshape(-1, 4, L, 4)
            slices = np.concatenate([vec & 0x0F, vec >> 4], axis=1)
            if bits == 5:
                fifth = np.unpackbits(data[:, 16 * L :].reshape(-1, 8, 8), axis=-1, bitorder="little")[..., : 4 * L]
                slices = slices | (fifth.reshape(-1, 8, L, 4) << 4)
        lo = g * GROUP * S
        stored[:, lo : lo + L // P * S] = slices.transpose(0, 2, 1, 3).reshape(T * TILE, L // P * S)
    return Lanes(fmt, stored[:N], np.stack(headers, axis=1)[:N])


def lane_scales(lanes: Lanes) -> tuple[np.ndarray, np.ndarray]:
    """Per lane (N, lanes) float32: the scale ws and the minimum wm (as the kernels compute them)."""
    fmt, h = lanes.fmt, lanes.header
    N, K = lanes.shape
    nl = K // LANE[fmt]
    if fmt in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1"):
        ws = _f16(np.ascontiguousarray(h[..., :32])).reshape(N, -1)[:, :nl]
        wm = _f16(np.ascontiguousarray(h[..., 32:64])).reshape(N, -1)[:, :nl] if fmt in WITH_MIN else np.zeros_like(ws)
        return ws, wm
    if fmt == "q6_k":
        d = _f16(np.ascontiguousarray(h[..., :2]))  # (N, ng, 1)
        return (d * h[..., 2:].view(np.int8).astype(np.float32)).reshape(N, -1), np.zeros((N, nl), np.float32)
    sb = h.reshape(N, -1, 20)  # q4_k, q5_k: per super-block d, dmin, sc[8], m[8]
    d, dmin = _f16(np.ascontiguousarray(sb[..., 0:2])), _f16(np.ascontiguousarray(sb[..., 2:4]))
    ws = (d * sb[..., 4:12].astype(np.float32)).reshape(N, -1)[:, :nl]
    wm = -(dmin * sb[..., 12:20].astype(np.float32)).reshape(N, -1)[:, :nl]
    return ws, wm


def dequantize(lanes: Lanes) -> np.ndarray:
    """The float32 weights (N, K): ws * (stored - offset) + wm, as gguf-py computes them."""
    fmt = lanes.fmt
    N, K = lanes.shape
    S = LANE[fmt]
    q = lanes.stored.view(np.int8) if fmt == "q8_0" else lanes.stored
    q = (q.astype(np.float32) - OFFSET[fmt]).reshape(N, -1, S)
    ws, wm = lane_scales(lanes)
    if fmt in WITH_MIN:
        return (ws[..., None] * q + wm[..., None]).reshape(N, K)
    return (ws[..., None] * q).reshape(N, K)


def encode(weight: torch.Tensor, fmt: str) -> np.ndarray:
    """Quantise a float (N, K) matrix into GGML blocks (N, row bytes), as llama.cpp rounds them (q8_0, q4_1)."""
    N, K = weight.shape
    check_shape(fmt, K)
    blocks = weight.to(torch.float32).view(N, K // 32, 32)
    if fmt == "q8_0":
        d = (blocks.abs().amax(-1, keepdim=True) / 127).to(torch.float16)  # the scale as stored
        q = torch.round(blocks / torch.where(d > 0, d, 1).float()).clamp(-127, 127).to(torch.int8)
        packed = torch.cat([d.view(torch.uint8), q.view(torch.uint8)], dim=-1)
    elif fmt == "q4_1":
        lo = blocks.amin(-1, keepdim=True).to(torch.float16)
        d = ((blocks.amax(-1, keepdim=True) - lo.float()) / 15).to(torch.float16)
        q = torch.round((blocks - lo.float()) / torch.where(d > 0, d, 1).float()).clamp(0, 15).to(torch.uint8)
        nibbles = q[..., :16] | (q[..., 16:] << 4)
        packed = torch.cat([d.view(torch.uint8), lo.view(torch.uint8), nibbles], dim=-1)
    else:
        raise ValueError(f"paradec quantises to q8_0 or q4_1 (other formats are read from GGUF files), not {fmt}")
    return packed.reshape(N, -1).numpy()
