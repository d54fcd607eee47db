"""N-gram drafting: prompt lookup generalised (PLD, ANPD, ADED-style adaptivity), drafted as a tree.

The model's own context (prompt AND generated text) predicts its continuation: if the last ``n``
tokens occurred before, what followed them then is a good guess for what follows now. This costs no
model and no training, and wins big where outputs copy their input (summaries, quotes, code edits)
or repeat themselves.

- Multi-level n: the longest suffix (``max_n``) is tried first, shorter ones (down to ``min_n``)
  fill in when it has too few earlier occurrences.
- Tree: when earlier occurrences continue differently, each continuation becomes a branch of one
  token trie (shared prefixes merged), so one forward pass verifies them all.
- Adaptive length: the draft depth follows recent acceptance (grows on full acceptance, shrinks to
  just past the accepted length otherwise), so wrong guesses cost few rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..tree import Draft, depths
from .base import Drafter, DrafterConfig, StepContext, register


class NgramIndex:
    """Where every n-gram (``min_n <= n <= max_n``) of a growing token list occurred.

    ``starts(gram)`` lists the positions ``e`` with ``tokens[e - n : e] == gram``, i.e. where a
    continuation of that earlier occurrence begins, oldest first. Only positions with at least one
    following token are indexed, so the context's own suffix never matches itself.

    Example: tokens ``[7, 8, 9, 7, 8]``: ``starts((7, 8)) == [2]`` (continuation ``9, 7, 8``),
    ``starts((8,)) == [2]``, ``starts((9,)) == [3]``.
    """

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self._table: dict[tuple[int, ...], list[int]] = {}
        self._done = 0  # continuation starts indexed so far: e < _done

    def update(self, tokens: list[int]) -> None:
        """Index the new continuation starts ``e`` of ``tokens`` (one list that only ever grows)."""
        for e in range(max(self._done, 1), len(tokens)):
            for n in range(self.min_n, min(self.max_n, e) + 1):
                self._table.setdefault(tuple(tokens[e - n : e]), []).append(e)
        self._done = max(self._done, len(tokens))

    def starts(self, gram: tuple[int, ...]) -> list[int]:
        return self._table.get(gram, [])


def continuation(tokens: list[int], start: int, length: int) -> list[int]:
    """``length`` tokens from ``start``, read on past the end of ``tokens`` as a repetition.

    A match at ``start`` says the text from there repeats from the end of ``tokens``; once the copy
    reaches the end it keeps copying its own output (period ``len(tokens) - start``).
    Example: ``continuation([1, 2, 1, 2], 2, 5) == [1, 2, 1, 2, 1]``.
    """
    out: list[int] = []
    end = len(tokens)
    for i in range(length):
        j = start + i
        out.append(tokens[j] if j < end else out[j - end])
    return out


class TokenTrie:
    """Token paths merged on shared prefixes into a draft tree (nodes in insertion order)."""

    def __init__(self, max_nodes: int):
        self.max_nodes = max_nodes
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self._child: dict[tuple[int, int], int] = {}  # (parent node, token) -> node

    def add(self, path: list[int]) -> int:
        """Insert a root-to-node path; return how many new nodes it took (stops at the budget)."""
        node, added = -1, 0
        for token in path:
            nxt = self._child.get((node, token))
            if nxt is None:
                if len(self.tokens) >= self.max_nodes:
                    break
                nxt = len(self.tokens)
                self._child[(node, token)] = nxt
                self.tokens.append(token)
                self.parents.append(node)
                added += 1
            node = nxt
        return added

    def __len__(self) -> int:
        return len(self.tokens)

    def draft(self) -> Draft:
        return Draft(tokens=list(self.tokens), parents=list(self.parents))


def lookup(index: NgramIndex, tokens: list[int], depth: int, max_branches: int, max_nodes: int) -> TokenTrie:
    """Merge the continuations of the context's suffix matches into a trie.

    Longest suffix first, most recent occurrence first; shorter suffixes only add branches while
    fewer than ``max_branches`` distinct continuations were found.
    Example: tokens ``[5, 6, 7, 5, 6, 8, 5, 6]``, ``max_n=2``: suffix ``(5, 6)`` occurred at 0 and 3,
    so the trie holds branches ``8 5 6 ...`` (recent) and ``7 5 6 ...``.
    """
    trie = TokenTrie(max_nodes)
    branches = 0
    for n in range(min(index.max_n, len(tokens)), index.min_n - 1, -1):
        for start in reversed(index.starts(tuple(tokens[-n:]))):
            if branches >= max_branches or len(trie) >= max_nodes:
                return trie
            if trie.add(continuation(tokens, start, depth)):
                branches += 1
    return trie


@dataclass(frozen=True)
class NgramConfig(DrafterConfig):
    """max_n / min_n: longest and shortest suffix matched; max_depth: deepest draft (tokens per
    branch); min_depth: the depth the adaptive length never goes below; max_branches: distinct
    continuations in the tree; max_nodes: tree size cap (the forward's extra rows); adaptive: follow
    recent acceptance (else always draft max_depth); min_accept: below this many accepted tokens per
    drafted step (moving average) draft only every ``PROBE_EVERY``-th step, since a rejected draft
    still costs extra rows. ``None`` = the measured default for the model's dtype (``BY_DTYPE``):
    extra rows are nearly free in bfloat16 but not in float32."""

    max_n: int = 4
    min_n: int = 2
    max_depth: int | None = None
    min_depth: int = 2
    max_branches: int = 2
    max_nodes: int | None = None
    adaptive: bool = True
    min_accept: float | None = None

    # dtype -> (max_depth, max_nodes, min_accept), from docs/sweeps/ngram_recycling.md; others: float32's
    BY_DTYPE = {torch.bfloat16: (10, 16, 0.15), torch.float16: (10, 16, 0.15), torch.float32: (4, 6, 0.3)}
    PROBE_EVERY = 4

    def __post_init__(self) -> None:
        for name in ("max_n", "min_n", "max_depth", "min_depth", "max_branches", "max_nodes"):
            value = getattr(self, name)
            if value is None and name in ("max_depth", "max_nodes"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.min_n > self.max_n:
            raise ValueError(f"min_n ({self.min_n}) must not exceed max_n ({self.max_n})")
        if self.max_depth is not None and self.min_depth > self.max_depth:
            raise ValueError(f"min_depth ({self.min_depth}) must not exceed max_depth ({self.max_depth})")
        if self.min_accept is not None and not (isinstance(self.min_accept, (int, float)) and self.min_accept >= 0):
            raise ValueError(f"min_accept must be a number >= 0, got {self.min_accept!r}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be true or false, got {self.adaptive!r}")


@register
class NgramDrafter(Drafter):
    name = "ngram"
    Config = NgramConfig

    def __init__(self, model, config: NgramConfig | None = None):
        config = config or NgramConfig()
        depth, nodes, gate = NgramConfig.BY_DTYPE.get(getattr(model, "dtype", None), NgramConfig.BY_DTYPE[torch.float32])
        config = dataclasses.replace(config, max_depth=config.max_depth or max(depth, config.min_depth),
                                     max_nodes=config.max_nodes or nodes,
                                     min_accept=gate if config.min_accept is None else config.min_accept)
        super().__init__(model, config)

    def begin(self, prompt_ids: list[int], params) -> None:
        c = self.config
        self.index = NgramIndex(c.min_n, c.max_n)
        self.depth = c.max_depth  # adaptive draft depth, ANPD-style
        self.accept_ema, self.skipped = 1.0, 0  # cost gate: recent accepted tokens per drafted step

    def propose(self, ctx: StepContext) -> Draft:
        c = self.config
        self.index.update(ctx.tokens)
        depth = self.depth if c.adaptive else c.max_depth
        trie = lookup(self.index, ctx.tokens, depth, c.max_branches, min(c.max_nodes, ctx.max_nodes))
        if len(trie) and self.accept_ema < c.min_accept and self.skipped < c.PROBE_EVERY - 1:
            self.skipped += 1  # matches have been failing: skip, probe again in a few steps
            return Draft()
        self.skipped = 0
        return trie.draft()

    def observe(self, draft: Draft, logits, verdict) -> None:
        if not draft.tokens:
            return
        c = self.config
        self.accept_ema = 0.8 * self.accept_ema + 0.2 * len(verdict.accepted)
        if not c.adaptive:
            return
        drafted = max(depths(draft.parents))
        accepted = len(verdict.accepted)
        if accepted >= drafted:  # all the way down a branch: look further next time
            self.depth = min(c.max_depth, self.depth + 2)
        else:  # stopped early: the next draft need not go much past where this one failed
            self.depth = max(c.min_depth, min(self.depth, accepted + 2))

