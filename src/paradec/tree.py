"""Drafts as token trees (tokens plus parent indices), and the block one target forward reads.

Every step the target model reads one ``Block`` of new tokens::

    row 0          the *root*: the last committed token, not yet in the KV cache
    rows 1..n      the draft tree's nodes (``Draft.tokens``), in order
    rows n+1..     optional auxiliary rows (``AuxRows``) that are not verified,
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
    """A token tree proposed by a drafter: only the tree that verification reads.

    ``q`` optionally holds, per node, the draft distribution the node's token was sampled from
    (a ``(vocab,)`` probability tensor); ``None`` means the token was chosen deterministically.
    Siblings with a ``q`` must have been drawn *without replacement* from it, in order: that is
    what makes multi-draft speculative sampling exact (see ``verify.py``).
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    q: list[torch.Tensor | None] | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("Draft.tokens and Draft.parents must have the same length")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"Draft node {i} has parent {p}; parents must precede their children")
        if self.q is not None and len(self.q) != len(self.tokens):
            raise ValueError("Draft.q must have one entry per node")

    @classmethod
    def chain(cls, tokens: list[int], q: list[torch.Tensor | None] | None = None) -> "Draft":
        """A linear draft: each token continues the previous one."""
        return cls(tokens=list(tokens), parents=list(range(-1, len(tokens) - 1)), q=q)

    def __len__(self) -> int:
        return len(self.tokens)

    def truncated(self, max_nodes: int) -> "Draft":
        """The first ``max_nodes`` nodes (parents precede children, so this stays a tree)."""
        if max_nodes >= len(self.tokens):
            return self
        n = max(0, max_nodes)
        q = self.q[:n] if self.q is not None else None
        return Draft(tokens=self.tokens[:n], parents=self.parents[:n], q=q)


    def to_depth(self, max_depth: int) -> "Draft":
        """The nodes at most ``max_depth`` deep. A node's ancestors are shallower and
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


@dataclass(frozen=True)
class AuxRows:
    """Block rows scored along with a draft but never verified (Lookahead's Jacobi window); only the
    drafter that asked for them reads their logits.

    tokens:  one per row
    offsets: each row's position after the root
    mask:    (n, 1 + n) bool: which of [root, aux row 0, aux row 1, ...] each row attends to
    """

    tokens: list[int]
    offsets: list[int]
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.offsets):
            raise ValueError("AuxRows.tokens and AuxRows.offsets must have the same length")
        if tuple(self.mask.shape) != (len(self.tokens), 1 + len(self.tokens)):
            raise ValueError("AuxRows.mask must have shape (n_aux, 1 + n_aux)")

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Block:
    """What one target forward reads: the root, the draft tree's nodes, then the aux rows if any."""

    root: int
    draft: Draft
    aux: AuxRows | None = None

    @property
    def tokens(self) -> list[int]:
        return [self.root] + self.draft.tokens + (self.aux.tokens if self.aux is not None else [])

    def __len__(self) -> int:
        """Rows of the forward: root + nodes + aux rows."""
        return 1 + len(self.draft) + (len(self.aux) if self.aux is not None else 0)

    def fitted(self, room: int) -> "Block":
        """This block with at most ``room`` rows after the root.

        The tree comes first (its nodes can become tokens this step): it keeps its first ``room``
        nodes. The aux rows are kept whole if they still fit, else dropped whole (``aux`` is then
        ``None``, which their drafter sees in ``observe``); a part of them is never sent.
        """
        if len(self) - 1 <= room:
            return self
        draft = self.draft.truncated(room)
        aux = self.aux if self.aux is not None and len(draft) + len(self.aux) <= room else None
        return Block(self.root, draft, aux)


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


def block_positions(block: Block) -> list[int]:
    """Position offset of every block row from the root (root = 0)."""
    return [0] + depths(block.draft.parents) + (list(block.aux.offsets) if block.aux is not None else [])


def block_mask(block: Block) -> torch.Tensor:
    """Boolean attention mask among the block's rows, shape (block, block); True = may attend.

    Each node sees the root, its ancestors and itself (its row is its parent's row plus itself).
    Auxiliary rows see what their ``mask`` says and nothing of the tree; tree rows never see aux rows.
    """
    n, a = len(block.draft), len(block.aux) if block.aux is not None else 0
    mask = torch.zeros(1 + n + a, 1 + n + a, dtype=torch.bool)
    mask[0, 0] = True
    for i, p in enumerate(block.draft.parents):
        row = i + 1
        mask[row] = mask[p + 1]
        mask[row, row] = True
    if a:
        aux = block.aux.mask.to(torch.bool)  # (a, 1 + a): [root, aux...]
        mask[1 + n :, 0] = aux[:, 0]
        mask[1 + n :, 1 + n :] = aux[:, 1:]
    return mask
