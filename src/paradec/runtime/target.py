"""What the decoding loop and the drafters talk to: one sequence of one model, behind three verbs.

    prefill(ids)                      reset, read the prompt, logits after its last token
    forward(tokens, offsets, mask)    score a block of new rows (written as *pending* rows)
    commit(keep)                      keep some pending rows (e.g. root + accepted path), drop the rest
    crop(length)                      forget committed rows from ``length`` on (a drafter's rollback)

A block's rows see the committed prefix and what ``mask`` allows among the pending rows: several
forwards may precede one commit (a drafter grows its tree level by level), so ``mask`` has one
column per pending row, earlier blocks' rows first. Every runtime implements ``Target``; the
checks and the mask arithmetic live here once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import ContextOverflowError


class Block(NamedTuple):
    """One sequence's share of a forward (see ``Target.forward``)."""

    tokens: list[int]
    offsets: list[int]
    mask: torch.Tensor | None = None
    last_only: bool = False


class Target:
    """Base of every runtime's per-sequence target."""

    max_length: int
    vocab_size: int

    def __init__(self) -> None:
        self.length = 0  # committed tokens
        self.pending = 0  # rows written since the last commit

    def prefill(self, ids: list[int], hidden: bool = False):
        """Reset, read ``ids``; returns the logits after the last one, shape (vocab,); with ``hidden`` a
        pair (those logits, every row's final-normed hidden states (n, d)): the LM head runs on the last
        row only either way."""
        if not ids:
            raise ValueError("prefill needs at least one token")
        self.check_room(len(ids))
        self.reset()
        out = self._forward(list(ids), list(range(len(ids))), None, last_only=True, hidden=hidden)
        self.commit(list(range(len(ids))))
        return (out[0][-1], out[1]) if hidden else out[-1]

    def forward(self, tokens: list[int], offsets: list[int], mask: torch.Tensor | None = None,
                last_only: bool = False, hidden: bool = False):
        """Score new rows in one pass.

        tokens:  (n,) token ids
        offsets: (n,) position of each row minus the committed length (tree depth for a draft)
        mask:    (n, pending + n) bool: which pending rows (earlier blocks first, then this block)
                 each row sees; None = a causal chain after all pending rows
        returns: (n, vocab) logits, or (1, vocab) for the last row when ``last_only``; with ``hidden``
                 a pair (logits, final-normed hidden states of every row (n, d)) — the features the
                 LM head reads
        """
        self.check_block(Block(tokens, offsets, mask, last_only))
        return self._forward(list(tokens), list(offsets), mask, last_only, hidden)

    def check_block(self, block: Block) -> None:
        tokens, offsets, mask = block.tokens, block.offsets, block.mask
        if not tokens:
            raise ValueError("forward needs at least one row")
        if len(offsets) != len(tokens):
            raise ValueError("forward: one offset per token")
        if mask is not None and tuple(mask.shape) != (len(tokens), self.pending + len(tokens)):
            raise ValueError(f"forward: mask must have shape {(len(tokens), self.pending + len(tokens))}, got {tuple(mask.shape)}")
        self.check_room(max(offsets) + 1)

    def fork(self) -> "Target":
        """A new target holding a copy of this one's committed rows (branches of one prompt: the
        prompt is read once)."""
        raise NotImplementedError

    def commit(self, keep: list[int]) -> None:
        """Keep pending rows ``keep`` (ascending indices among all pending rows), drop the others."""
        raise NotImplementedError

    def crop(self, length: int) -> None:
        """Forget committed rows from ``length`` on, and every pending row."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def _forward(self, tokens: list[int], offsets: list[int], mask: torch.Tensor | None, last_only: bool,
                 hidden: bool = False):
        raise NotImplementedError

    def check_room(self, rows: int) -> None:
        if self.length + rows > self.max_length:
            raise ContextOverflowError(
                f"{self.length + rows} tokens do not fit the model's context window of {self.max_length} tokens"
            )

    def full_mask(self, mask: torch.Tensor | None, n: int) -> torch.Tensor:
        """(n, pending + n) bool; None expands to every pending row plus a causal chain among the new ones."""
        if mask is not None:
            return mask.to(torch.bool)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        return torch.cat([torch.ones(n, self.pending, dtype=torch.bool), causal], dim=1)


def visible_slots(mask: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a (n, P) visibility mask over pending rows (slot ``first + j``) into (prefix, extra).

    prefix (n,): every slot before ``first`` and the longest run of visible pending rows from the
    first one; extra (n, E): the remaining visible slots, ascending, -1 padded.
    Example: first=10, mask rows [1 1 0 1] and [1 0 0 0] → prefix [12, 11], extra [[13], [-1]].
    """
    n, P = mask.shape
    lead = mask.to(torch.int64).cumprod(1).sum(1)  # (n,)
    rest = mask & (torch.arange(P).unsqueeze(0) >= lead.unsqueeze(1))
    E = int(rest.sum(1).max()) if P else 0
    if E == 0:
        return first + lead, torch.full((n, 1), -1, dtype=torch.int64)
    cols = torch.where(rest, torch.arange(P).unsqueeze(0), P).sort(dim=1).values[:, :E]
    return first + lead, torch.where(cols < P, cols + first, -1)


def forward_many(targets: list[Target], blocks: list[Block], hidden: bool = False) -> list:
    """Score several sequences' blocks; one forward for all of them where the runtime can (the native
    runtime reads the weights once for every row), one per sequence otherwise. Same results as calling
    ``target.forward`` on each (bit for bit on the native runtime)."""
    if len(targets) != len(blocks):
        raise ValueError("forward_many: one block per target")
    for t, b in zip(targets, blocks):
        t.check_block(b)
    runtime = getattr(targets[0], "runtime", None) if targets else None
    if runtime is not None and hasattr(runtime, "forward_many") and all(getattr(t, "runtime", None) is runtime for t in targets):
        return runtime.forward_many(targets, [Block(list(b.tokens), list(b.offsets), b.mask, b.last_only) for b in blocks], hidden)
    return [t._forward(list(b.tokens), list(b.offsets), b.mask, b.last_only, hidden) for t, b in zip(targets, blocks)]
