"""Drafts as token trees: tokens plus parent indices.

Every step the target model reads one block of new tokens::

    row 0          the *root*: the last committed token, not yet in the KV cache
    rows 1..n      the draft tree's nodes (``Draft.tokens``), in order
    rows n+1..     optional auxiliary rows (``Draft.aux_*``) that are not verified,
                   e.g. Lookahead's Jacobi window; only their drafter reads their logits

Node ``i`` (0-based in ``Draft.tokens``) sits at block row ``i + 1``; its parent is ``-1`` (the root)
or an earlier node. A chain is a tree whose every parent is the previous node; no draft is a tree
with no nodes. Masks, positions and paths are pure functions of the parent array.

Worked example: root ``r`` with draft ``tokens=[a, b, c], parents=[-1, 0, -1]`` is the tree::

    r ─ a ─ b
      └ c

    depths      = [1, 2, 1]         (root depth 0)
    block mask  = r: r             positions = L + [0, 1, 2, 1]
                  a: r a
                  b: r a b
                  c: r     c
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Draft:
    """A token tree proposed by a drafter.

    ``q`` optionally holds, per node, the draft distribution the node's token was sampled from
    (a ``(vocab,)`` probability tensor); ``None`` means the token was chosen deterministically.
    Siblings with a ``q`` must have been drawn *without replacement* from it, in order: that is
    what makes multi-draft speculative sampling exact (see ``verify.py``).
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    q: list[torch.Tensor | None] | None = None
    # Auxiliary, unverified rows: tokens, position offsets from the root, and which of
    # [root, aux_0, aux_1, ...] each aux row attends to (bool, shape (n_aux, 1 + n_aux)).
    aux_tokens: list[int] = field(default_factory=list)
    aux_offsets: list[int] = field(default_factory=list)
    aux_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("Draft.tokens and Draft.parents must have the same length")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"Draft node {i} has parent {p}; parents must precede their children")
        if self.q is not None and len(self.q) != len(self.tokens):
            raise ValueError("Draft.q must have one entry per node")
        if len(self.aux_tokens) != len(self.aux_offsets):
            raise ValueError("Draft.aux_tokens and Draft.aux_offsets must have the same length")
        if self.aux_tokens and (self.aux_mask is None or tuple(self.aux_mask.shape) != (len(self.aux_tokens), 1 + len(self.aux_tokens))):
            raise ValueError("Draft.aux_mask must have shape (n_aux, 1 + n_aux)")

    @classmethod
    def chain(cls, tokens: list[int], q: list[torch.Tensor | None] | None = None) -> "Draft":
        """A linear draft: each token continues the previous one."""
        return cls(tokens=list(tokens), parents=list(range(-1, len(tokens) - 1)), q=q)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def block_size(self) -> int:
        """Rows of the target forward: root + nodes + auxiliary rows."""
        return 1 + len(self.tokens) + len(self.aux_tokens)

    def truncated(self, max_nodes: int) -> "Draft":
        """The first ``max_nodes`` nodes (parents precede children, so this stays a tree); no aux rows."""
        if max_nodes >= len(self.tokens) and not self.aux_tokens:
            return self
        n = max(0, min(max_nodes, len(self.tokens)))
        q = self.q[:n] if self.q is not None else None
        return Draft(tokens=self.tokens[:n], parents=self.parents[:n], q=q)


    def to_depth(self, max_depth: int) -> "Draft":
        """The nodes at most ``max_depth`` deep, aux rows kept. A node's ancestors are shallower and
        its siblings as deep, so this stays a tree and every kept node keeps all its siblings (which
        multi-draft sampling needs)."""
        d = depths(self.parents)
        keep = [i for i in range(len(self.tokens)) if d[i] <= max_depth]
        if len(keep) == len(self.tokens):
            return self
        new = {old: n for n, old in enumerate(keep)}  # kept node -> its index in the cut draft
        return dataclasses.replace(
            self,
            tokens=[self.tokens[i] for i in keep],
            parents=[new.get(self.parents[i], -1) for i in keep],
            q=[self.q[i] for i in keep] if self.q is not None else None,
        )


def depths(parents: list[int]) -> list[int]:
    """Depth of every node; children of the root have depth 1."""
    out: list[int] = []
    for p in parents:
        out.append(1 if p < 0 else out[p] + 1)
    return out


def children(parents: list[int]) -> dict[int, list[int]]:
    """Map node index (``-1`` = root) to its children, in draft order."""
    out: dict[int, list[int]] = {-1: []}
    for i, p in enumerate(parents):
        out.setdefault(p, []).append(i)
        out.setdefault(i, [])
    return out


def paths(parents: list[int]) -> list[list[int]]:
    """Root-to-leaf paths as lists of node indices (the root itself excluded)."""
    kids = children(parents)
    leaves = [i for i in range(len(parents)) if not kids[i]]
    out = []
    for leaf in leaves:
        path = [leaf]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        out.append(path[::-1])
    return out


def block_positions(draft: Draft) -> list[int]:
    """Position offset of every block row from the root (root = 0)."""
    return [0] + depths(draft.parents) + list(draft.aux_offsets)


def block_mask(draft: Draft) -> torch.Tensor:
    """Boolean attention mask among the block's rows, shape (block, block); True = may attend.

    Each node sees the root, its ancestors and itself (its row is its parent's row plus itself).
    Auxiliary rows see what ``aux_mask`` says and nothing of the tree; tree rows never see aux rows.
    """
    n, a = len(draft.tokens), len(draft.aux_tokens)
    mask = torch.zeros(1 + n + a, 1 + n + a, dtype=torch.bool)
    mask[0, 0] = True
    for i, p in enumerate(draft.parents):
        row = i + 1
        mask[row] = mask[p + 1]
        mask[row, row] = True
    if a:
        aux = draft.aux_mask.to(torch.bool)  # (a, 1 + a): [root, aux...]
        mask[1 + n :, 0] = aux[:, 0]
        mask[1 + n :, 1 + n :] = aux[:, 1:]
    return mask
