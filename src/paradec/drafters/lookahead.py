"""Lookahead decoding (Fu et al. 2024): a Jacobi window harvests n-grams, a pool feeds the draft.

One forward pass carries two branches (layout of the llama.cpp example, W = 4, N = 3)::

    lookahead branch (aux rows, never verified): N - 1 levels of W tokens
        level 0:  root  a1  a2  a3          offsets 0 1 2 3   (the root's row stands for a0)
        level 1:  b0    b1  b2  b3          offsets 1 2 3 4
        column i reads root, a1..ai, then the column's own tokens upwards (b_i at offset i + 1):
        one causal sequence per column, so the last level's row i predicts the token at offset i + N - 1.
    verification branch (draft tree, verified): up to G pooled n-grams whose first token is the root,
        merged into a trie.

After the pass, the last level's predictions become the new top level (the levels shift down one:
the window advances with the root), and every column yields an n-gram
``(level 0, level 1, ..., level N-2, new)`` for the pool. When the draft accepted ``m`` tokens the
root jumped ``m`` further, so the window's columns are rolled ``m`` to the left to stay aligned.

Cost: the block has 1 + W(N-1) - 1 + (up to G(N-1)) rows. The defaults (W=4, N=3, G=3: at most 14
rows) come from the sweep in docs/sweeps/jacobi_lookahead.md; in float32 the cost gate (``gate.py``)
pauses the window on text where it keeps failing (see ``LookaheadConfig``).

Lossless for free: the window only chooses *which* n-grams get drafted; verification alone decides
the output. Candidates are deterministic (point-mass ``q``), so sampling is exact too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..options import check_bool, check_int
from ..tree import AuxRows, Block, Draft
from .base import MAX_NODES, Drafter, StepContext, register
from .gate import CostGate, GatedConfig
from .ngram_store import NgramStore
from .trie import TokenTrie


@dataclass(frozen=True)
class LookaheadConfig(GatedConfig):
    """W, N, G and the context pool below; the block has at most (W + G)(N - 1) <= 128 rows.
    min_accept / probe_every / accept_decay: the cost gate (``gate.py``); a skipped step drafts
    nothing (no pooled n-grams, no window). ``None`` = by the cost of rows (``defaults.py``):
    off for bfloat16/float16 off the native runtime, measured where a forward over ~10 rows cost about
    as much as over one; otherwise (float32: ~1.8x; every dtype on the native runtime) a window step
    that accepts nothing is followed by 10 plain steps (min_accept 1, accept_decay 0, probe_every 11)."""

    window: int = 4  # W: Jacobi window width (columns of the lookahead branch)
    ngram: int = 3  # N: n-gram size; the window keeps N - 1 levels, drafts are N - 1 tokens deep
    guesses: int = 3  # G: most pooled n-grams verified per step (also the pool's capacity per key)
    pool_from_context: bool = True  # also pool the n-grams of the prompt and the committed text
    seed: int = 0  # initial window tokens are drawn from the prompt with this seed

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "window", 1, 64)
        check_int(self, "ngram", 2, 16)
        check_int(self, "guesses", 1, 64)
        check_bool(self, "pool_from_context")
        check_int(self, "seed", 0, 2**63 - 1)
        rows = (self.window + self.guesses) * (self.ngram - 1)  # the most block rows: root + window + draft
        if rows > MAX_NODES:
            raise ValueError(f"(window + guesses) x (ngram - 1) must be at most {MAX_NODES} (the block's rows), "
                             f"got ({self.window} + {self.guesses}) x {self.ngram - 1} = {rows}")


@lru_cache(maxsize=32)
def lookahead_layout(W: int, N: int) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...], torch.Tensor, tuple[int, ...]]:
    """The lookahead branch's aux rows: (cells, offsets, mask, top).

    cells:   (level, column) of each aux row: level 0 columns 1..W-1, then levels 1..N-2, all columns
    offsets: position of each aux row after the root, ``level + column``
    mask:    (n_aux, 1 + n_aux) bool over [root, aux rows]; a cell sees the root, level 0 up to its
             column, and its own column's cells of lower levels
    top:     per column, the aux row of its last level (N - 2), or -1 for the root (N = 2, column 0)
    """
    cells = tuple([(0, i) for i in range(1, W)] + [(j, i) for j in range(1, N - 1) for i in range(W)])
    row = {cell: r for r, cell in enumerate(cells)}
    mask = torch.zeros(len(cells), 1 + len(cells), dtype=torch.bool)
    for r, (j, i) in enumerate(cells):
        mask[r, 0] = True
        for c in range(1, i + 1):
            mask[r, 1 + row[(0, c)]] = True
        for level in range(1, j + 1):
            mask[r, 1 + row[(level, i)]] = True
    top = tuple(row.get((N - 2, i), -1) for i in range(W))
    return cells, tuple(j + i for j, i in cells), mask, top


@register
class LookaheadDrafter(Drafter):
    name = "lookahead"
    Config = LookaheadConfig
    config: LookaheadConfig

    def __init__(self, model, config: LookaheadConfig = LookaheadConfig()):
        super().__init__(model, config)
        self.begin([0], None)

    def begin(self, prompt_ids, params) -> None:
        c = self.config
        self.pool = NgramStore(capacity=c.guesses)  # (first token,) -> its newest (N - 1)-token continuations
        rng = random.Random(c.seed)
        source = list(prompt_ids) or [0]
        # levels[j][i]: the window's token at level j, column i
        self.levels = [[rng.choice(source) for _ in range(c.window)] for _ in range(c.ngram - 1)]
        self.pooled = 0 if c.pool_from_context else None  # how many context tokens were pooled
        self.gate = CostGate(c)
        self.window: AuxRows | None = None  # the lookahead branch sent with the last draft

    def propose(self, ctx: StepContext) -> Draft:
        c = self.config
        if self.pooled is not None:  # every n-gram of the context that ends in a new token
            N, context = c.ngram, ctx.tokens
            for end in range(max(self.pooled, N - 1), len(context)):
                self.pool.add((context[end - N + 1],), tuple(context[end - N + 2 : end + 1]))
            self.pooled = len(context)
        self.window = None
        if not self.gate.allow():
            return Draft()  # no pooled n-grams, no window
        trie = TokenTrie(c.guesses * (c.ngram - 1))
        for cont in self.pool.get((ctx.tokens[-1],), c.guesses):
            trie.add(cont)
        # the root takes the block row of level 0, column 0; levels[0][0] keeps the token that
        # column 0 was refined from, so that column 0's n-gram stays a chain of predictions
        cells, offsets, mask, _ = lookahead_layout(c.window, c.ngram)
        self.window = AuxRows(tokens=[self.levels[j][i] for j, i in cells], offsets=list(offsets), mask=mask)
        return trie.draft()

    def aux_rows(self) -> AuxRows | None:
        return self.window

    def observe(self, block: Block, logits: torch.Tensor, verdict) -> None:
        """logits: (block, vocab); the last level's rows refine the window."""
        c = self.config
        W, N = c.window, c.ngram
        _, _, _, top = lookahead_layout(W, N)
        if block.aux is None:
            return  # paused, or the loop dropped the window's rows (no room left in the context window)
        self.gate.record(len(verdict.accepted))
        first_aux = 1 + len(block.draft)  # block row of aux row 0
        rows = [first_aux + r if r >= 0 else 0 for r in top]
        new = logits[rows].argmax(-1).tolist()  # (W,): the next Jacobi iterate of the top level
        for i in range(W):  # harvest: each column, read upwards, plus its prediction
            self.pool.add((self.levels[0][i],), tuple(self.levels[j][i] for j in range(1, N - 1)) + (new[i],))
        self.levels = self.levels[1:] + [new]
        m = len(verdict.accepted)
        if m:
            self.levels = [level[m:] + level[:m] for level in self.levels] if m < W else self.levels
