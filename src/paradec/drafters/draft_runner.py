"""The drafter-side language model: a ``Target`` of its own, kept in step with the committed tokens.

Shared by ``draft`` (a separate small model) and ``layerskip`` (a prefix of the target's layers).
The verifier's cache is never touched; this target belongs to the drafter alone, and all cache
work (masks, rollback) is the target's, as for the verifier.

Rows of the drafting target during one step::

    committed   the committed tokens it has read (``tokens``; the last is the root)
    pending     draft nodes fed while building this step's tree, level by level

``sync`` makes the committed rows match the committed tokens (keeping the longest common prefix, so
the accepted part of the last draft is not recomputed) and returns the logits after the root;
``feed`` reads draft nodes under tree attention; ``keep_path`` commits the fed rows of an accepted
path and drops the rest.
"""

from __future__ import annotations

import torch

from ..runtime.target import Target


class DraftRunner:
    def __init__(self, target: Target):
        self.target = target
        self.max_length = target.max_length
        self.reset()

    def reset(self) -> None:
        self.target.reset()
        self.tokens: list[int] = []  # committed tokens, in the target's committed rows
        self.rows: dict[int, int] = {}  # draft node index -> its pending row, for this step's fed nodes
        self.fed_tokens: dict[int, int] = {}  # draft node index -> its token

    @torch.inference_mode()
    def sync(self, tokens: list[int]) -> torch.Tensor:
        """Bring the committed rows to exactly ``tokens`` and return the logits after the last one, (vocab,).

        Example: rows hold ``[p0 p1 a b]`` (a, b accepted last step), committed is ``[p0 p1 a b c]``
        → only ``c`` (the bonus token) is read. The last token is always read, for its logits.
        """
        common = 0
        limit = min(len(self.tokens), len(tokens) - 1)
        while common < limit and self.tokens[common] == tokens[common]:
            common += 1
        self.target.crop(common)
        self.rows, self.fed_tokens = {}, {}
        new = tokens[common:]
        logits = self.target.forward(new, list(range(len(new))), last_only=True)
        self.target.commit(list(range(len(new))))
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
        fed, n = len(self.rows), len(nodes)
        see = torch.zeros(n, fed + n, dtype=torch.bool)
        for i, anc in enumerate(ancestors):
            see[i, [self.rows[a] for a in anc]] = True
            see[i, fed + i] = True
        logits = self.target.forward(tokens, [d - 1 for d in depths], see)  # the root sits at offset -1
        for i, node in enumerate(nodes):
            self.rows[node] = fed + i
            self.fed_tokens[node] = tokens[i]
        return logits

    def keep_path(self, path: list[int]) -> None:
        """After verification: commit the fed rows of the accepted path's longest fed prefix, drop the rest.

        path: accepted node indices, nearest the root first.
        """
        kept = []
        for node in path:
            if node not in self.rows:
                break
            kept.append(node)
        self.target.commit([self.rows[node] for node in kept])
        self.tokens.extend(self.fed_tokens[node] for node in kept)
        self.rows, self.fed_tokens = {}, {}
