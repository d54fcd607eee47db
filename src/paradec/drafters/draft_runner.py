"""The drafter-side language model: its own KV cache, kept in step with the committed tokens.

Shared by ``draft`` (a separate small model) and ``layerskip`` (a prefix of the target's layers).
The target's cache is never touched; this cache belongs to the drafter alone.

Cache layout during one step::

    rows 0 .. len(tokens)-1     the committed tokens it has read (``tokens``; the last is the root)
    rows len(tokens) ..         draft nodes fed while building this step's tree, in feed order

``sync`` makes the cache match the committed tokens (keeping the longest common prefix, so the
accepted part of the last draft is not recomputed) and returns the logits after the root;
``feed`` reads draft nodes under tree attention; ``keep_path`` turns the fed rows of an accepted
path into committed rows and drops the rest.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import DynamicCache

# (input_ids (1, n), position_ids (1, n), additive mask (1, 1, n, past + n), cache, last_only)
#   -> logits (n, vocab), or (1, vocab) for the last row only when last_only (a long prompt's rows are not needed)
ForwardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DynamicCache, bool], torch.Tensor]


class DraftRunner:
    """One sequence's view of a drafting LM (the drafter's counterpart of ``HFTarget``)."""

    def __init__(self, forward: ForwardFn, dtype: torch.dtype, max_length: int, new_cache: Callable[[], DynamicCache] = DynamicCache):
        self._forward = forward
        self._new_cache = new_cache
        self.dtype = dtype
        self.max_length = max_length
        self.reset()

    def reset(self) -> None:
        self.cache = self._new_cache()
        self.tokens: list[int] = []  # committed tokens held in rows 0..len-1
        self.rows: dict[int, int] = {}  # draft node index -> cache row, for this step's fed nodes
        self.fed_tokens: dict[int, int] = {}  # draft node index -> its token

    @property
    def length(self) -> int:
        """Rows in the cache: committed plus fed draft rows."""
        return len(self.tokens) + len(self.rows)

    @torch.inference_mode()
    def sync(self, tokens: list[int]) -> torch.Tensor:
        """Bring the cache to exactly ``tokens`` and return the logits after the last one, shape (vocab,).

        Example: cache holds ``[p0 p1 a b]`` (a, b accepted last step), committed is ``[p0 p1 a b c]``
        → only ``c`` (the bonus token) is read. The last token is always read, for its logits.
        """
        common = 0
        limit = min(len(self.tokens), len(tokens) - 1)
        while common < limit and self.tokens[common] == tokens[common]:
            common += 1
        self._keep(common, [])
        self.tokens = list(tokens[:common])
        new = tokens[common:]
        logits = self._run(new, list(range(common, len(tokens))), torch.ones(len(new), len(new)).tril().bool(), last_only=True)
        self.tokens = list(tokens)
        return logits[-1]

    @torch.inference_mode()
    def feed(self, nodes: list[int], tokens: list[int], depths: list[int], ancestors: list[list[int]]) -> torch.Tensor:
        """Read draft nodes in one pass; returns their logits, shape (n, vocab).

        nodes:     (n,) draft node indices (their rows are remembered for ``keep_path``)
        tokens:    (n,) their tokens
        depths:    (n,) tree depth of each (children of the root have depth 1)
        ancestors: per node, the node indices of its ancestors, all fed earlier
        Each row sees the committed rows, its ancestors' rows and itself.
        """
        base, n = self.length, len(nodes)
        see = torch.zeros(n, n, dtype=torch.bool)
        see.fill_diagonal_(True)
        extra = torch.zeros(n, len(self.rows), dtype=torch.bool)  # (n, fed rows so far)
        for i, anc in enumerate(ancestors):
            for a in anc:
                extra[i, self.rows[a] - len(self.tokens)] = True
        positions = [len(self.tokens) - 1 + d for d in depths]
        logits = self._run(tokens, positions, see, extra)
        for i, node in enumerate(nodes):
            self.rows[node] = base + i
            self.fed_tokens[node] = tokens[i]
        return logits

    def keep_path(self, path: list[int]) -> None:
        """After verification: keep the fed rows of the accepted path's longest fed prefix, drop the rest.

        path: accepted node indices, nearest the root first.
        """
        kept = []
        for node in path:
            if node not in self.rows:
                break
            kept.append(node)
        tokens = [self.fed_tokens[node] for node in kept]
        self._keep(len(self.tokens), [self.rows[node] for node in kept])
        self.tokens.extend(tokens)

    def _run(self, tokens: list[int], positions: list[int], see_new: torch.Tensor, see_fed: torch.Tensor | None = None,
             last_only: bool = False) -> torch.Tensor:
        """Forward ``tokens`` after every row now cached. see_new: (n, n) among the new rows;
        see_fed: (n, fed) towards this step's earlier fed rows (None: see them all)."""
        committed, n = len(self.tokens), len(tokens)
        attend = torch.ones(n, self.length + n, dtype=torch.bool)  # (n, past + n)
        if see_fed is not None:
            attend[:, committed : self.length] = see_fed
        attend[:, self.length :] = see_new
        mask = torch.zeros(1, 1, n, self.length + n, dtype=self.dtype)
        mask.masked_fill_(~attend, torch.finfo(self.dtype).min)  # additive float mask, as in HFTarget
        return self._forward(torch.tensor([tokens]), torch.tensor([positions]), mask, self.cache, last_only)

    def _keep(self, length: int, rows: list[int]) -> None:
        """Keep cache rows ``0..length-1`` then ``rows`` (ascending), in that order; forget fed rows."""
        total = self.length
        self.rows, self.fed_tokens = {}, {}
        if rows == list(range(length, length + len(rows))):
            if total > length + len(rows):
                for layer in self.cache.layers:
                    if getattr(layer, "is_initialized", False) and layer.keys.numel():
                        layer.keys = layer.keys[..., : length + len(rows), :]
                        layer.values = layer.values[..., : length + len(rows), :]
            return
        index = torch.tensor(list(range(length)) + rows)
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys.numel():
                layer.keys = layer.keys.index_select(-2, index)
                layer.values = layer.values.index_select(-2, index)
