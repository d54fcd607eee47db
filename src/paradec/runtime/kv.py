"""One sequence's KV cache, preallocated: committed rows, then pending rows that a commit keeps or drops.

Layout: one tensor (layers, 2, kv_heads, capacity, head_dim) — keys at [:, 0], values at [:, 1]::

    slots 0 .. length-1                   committed tokens (slot == position)
    slots length .. length+pending-1      rows written by forwards since the last commit
                                          (a draft tree, or several levels of a drafter's tree)

``keep(rows)`` turns the chosen pending rows into committed ones by moving just those rows into
place (cost O(kept rows), never O(context)); cropping is moving ``length``. The capacity doubles
when it runs out (amortised O(1) per token).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, capacity: int = 256):
        self.shape = (layers, 2, kv_heads, head_dim)
        self.tensor = torch.empty(layers, 2, kv_heads, capacity, head_dim, dtype=dtype)
        self.length = 0  # committed rows
        self.pending = 0  # rows written since the last commit

    @property
    def capacity(self) -> int:
        return self.tensor.shape[3]

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` more pending rows."""
        need = self.length + self.pending + rows
        if need <= self.capacity:
            return
        cap = self.capacity
        while cap < need:
            cap *= 2
        grown = self.tensor.new_empty(*self.tensor.shape[:3], cap, self.tensor.shape[4])
        used = self.length + self.pending
        grown[:, :, :, :used] = self.tensor[:, :, :, :used]
        self.tensor = grown

    def append(self, rows: int) -> int:
        """Account for ``rows`` new pending rows (after ``reserve``); returns the slot of the first."""
        first = self.length + self.pending
        self.pending += rows
        return first

    def keep(self, rows: list[int]) -> None:
        """Commit pending rows ``rows`` (ascending indices among the pending ones), drop the others."""
        if any(not 0 <= r < self.pending for r in rows) or rows != sorted(set(rows)):
            raise ValueError(f"keep needs ascending pending row indices in [0, {self.pending}), got {rows}")
        moved = [(j, r) for j, r in enumerate(rows) if r != j]
        if moved:
            dst = torch.tensor([self.length + j for j, _ in moved])
            src = torch.tensor([self.length + r for _, r in moved])
            self.tensor[:, :, :, dst] = self.tensor[:, :, :, src]  # gathers a copy first: overlap is safe
        self.length += len(rows)
        self.pending = 0

    def copy(self) -> "KVCache":
        """A cache holding a copy of the committed rows (pending rows dropped)."""
        twin = KVCache(self.shape[0], self.shape[2], self.shape[3], self.tensor.dtype, self.capacity)
        twin.tensor[:, :, :, : self.length] = self.tensor[:, :, :, : self.length]
        twin.length = self.length
        return twin

    def crop(self, length: int) -> None:
        """Forget everything from ``length`` on (pending rows included)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"crop to {length} outside 0..{self.length}")
        self.length, self.pending = length, 0
