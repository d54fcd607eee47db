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
- Cost gate (``gate.py``): while matches keep failing, draft only now and then.

The context index and its lookup live in ``ngram_store.py`` (``recycling`` grafts the same matches).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..options import check_bool, check_int
from ..tree import Block, Draft, depths
from .base import MAX_DEPTH, MAX_NODES, Drafter, StepContext, register
from .defaults import default
from .gate import CostGate, GatedConfig
from .ngram_store import NgramIndex, lookup
from .trie import TokenTrie

MAX_N = 16  # longest suffix matched: indexing costs O(max_n^2) per context token


@dataclass(frozen=True)
class NgramConfig(GatedConfig):
    """max_n / min_n: longest and shortest suffix matched; max_depth: deepest draft (tokens per
    branch); min_depth: the depth the adaptive length never goes below; max_branches: distinct
    continuations in the tree; max_nodes: tree size cap (the forward's extra rows); adaptive: follow
    recent acceptance (else always draft max_depth); min_accept / probe_every / accept_decay: the
    cost gate (``gate.py``), consulted on steps with a match. ``None`` = the measured default for
    the cost of rows (``defaults.py``: small trees, except half precision off the native runtime)."""

    max_n: int = 4
    min_n: int = 2
    max_depth: int | None = None
    min_depth: int = 2
    max_branches: int = 2
    max_nodes: int | None = None
    adaptive: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "max_n", 1, MAX_N)
        check_int(self, "min_n", 1, self.max_n)
        check_int(self, "max_depth", 1, MAX_DEPTH, optional=True)
        check_int(self, "min_depth", 1, self.max_depth or MAX_DEPTH)
        check_int(self, "max_branches", 1, MAX_NODES)
        check_int(self, "max_nodes", 1, MAX_NODES, optional=True)
        check_bool(self, "adaptive")


@register
class NgramDrafter(Drafter):
    name = "ngram"
    Config = NgramConfig
    config: NgramConfig

    def __init__(self, model, config: NgramConfig | None = None):
        config = config or NgramConfig()
        if config.max_depth is None:  # the table's depth, but never below an explicit min_depth
            depth = default(self.name, "max_depth", model)
            config = dataclasses.replace(config, max_depth=max(depth, config.min_depth))
        super().__init__(model, config)

    def begin(self, prompt_ids: list[int], params) -> None:
        c = self.config
        self.index = NgramIndex(c.min_n, c.max_n)
        self.depth = c.max_depth  # adaptive draft depth, ANPD-style
        self.gate = CostGate(c)

    def propose(self, ctx: StepContext) -> Draft:
        c = self.config
        self.index.update(ctx.tokens)
        depth = self.depth if c.adaptive else c.max_depth
        trie = lookup(self.index, ctx.tokens, depth, c.max_branches, TokenTrie(min(c.max_nodes, ctx.max_nodes)))
        if len(trie) and not self.gate.allow():
            return Draft()  # matches have been failing: skip, probe again in a few steps
        return trie.draft()

    def observe(self, block: Block, logits, verdict) -> None:
        draft = block.draft
        if not draft.tokens:
            return
        c = self.config
        self.gate.record(len(verdict.accepted))
        if not c.adaptive:
            return
        drafted = max(depths(draft.parents))
        accepted = len(verdict.accepted)
        if accepted >= drafted:  # all the way down a branch: look further next time
            self.depth = min(c.max_depth, self.depth + 2)
        else:  # stopped early: the next draft need not go much past where this one failed
            self.depth = max(c.min_depth, min(self.depth, accepted + 2))

