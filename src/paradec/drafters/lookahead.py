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
rows) come from the sweep in docs/sweeps/jacobi_lookahead.md; in float32 a gate pauses the window
on text where it keeps failing (see ``LookaheadConfig``).

Lossless for free: the window only chooses *which* n-grams get drafted; verification alone decides
the output. Candidates are deterministic (point-mass ``q``), so sampling is exact too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..tree import Draft
from .base import Drafter, DrafterConfig, StepContext, register
from .jacobi import cost_gate
from .ngram_pool import NGramPool, trie


@dataclass(frozen=True)
class LookaheadConfig(DrafterConfig):
    window: int = 4  # W: Jacobi window width (columns of the lookahead branch)
    ngram: int = 3  # N: n-gram size; the window keeps N - 1 levels, drafts are N - 1 tokens deep
    guesses: int = 3  # G: most pooled n-grams verified per step (also the pool's capacity per key)
    pool_from_context: bool = True  # also pool the n-grams of the prompt and the committed text
    # Cost gate: after `patience` window steps in a row that accept nothing, take `pause` plain steps
    # (no draft, no window). None = by the model's dtype: off in bfloat16/float16, where a forward
    # over ~10 rows costs about as much as over one; (1, 10) in float32/float64, where it costs ~1.8x.
    patience: int | None = None
    pause: int | None = None
    seed: int = 0  # initial window tokens are drawn from the prompt with this seed

    def __post_init__(self) -> None:
        if not (isinstance(self.window, int) and 1 <= self.window <= 64):
            raise ValueError(f"window (W) must be an integer in [1, 64], got {self.window!r}")
        if not (isinstance(self.ngram, int) and 2 <= self.ngram <= 16):
            raise ValueError(f"ngram (N) must be an integer in [2, 16], got {self.ngram!r}")
        if not (isinstance(self.guesses, int) and 1 <= self.guesses <= 64):
            raise ValueError(f"guesses (G) must be an integer in [1, 64], got {self.guesses!r}")
        if not isinstance(self.pool_from_context, bool):
            raise ValueError(f"pool_from_context must be true or false, got {self.pool_from_context!r}")
        for name in ("patience", "pause"):
            value = getattr(self, name)
            if not (value is None or (isinstance(value, int) and value >= 0)):
                raise ValueError(f"{name} must be an integer >= 0 (or null for the dtype's default), got {value!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


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

    def __init__(self, model, config: LookaheadConfig = LookaheadConfig()):
        super().__init__(model, config)
        self.patience, self.pause = cost_gate(model, config.patience, config.pause, (1, 10))
        self.begin([0], None)

    def begin(self, prompt_ids, params) -> None:
        c = self.config
        self.pool = NGramPool(c.ngram, c.guesses)
        rng = random.Random(c.seed)
        source = list(prompt_ids) or [0]
        # levels[j][i]: the window's token at level j, column i
        self.levels = [[rng.choice(source) for _ in range(c.window)] for _ in range(c.ngram - 1)]
        self.pooled = 0 if c.pool_from_context else None  # how many context tokens were pooled
        self.misses = 0  # steps in a row that accepted nothing
        self.paused = 0  # steps left in the current pause
        self.window_sent = False  # whether the last draft carried the lookahead branch

    def propose(self, ctx: StepContext) -> Draft:
        c = self.config
        if self.pooled is not None:
            self.pool.add_sequence(ctx.tokens, self.pooled)
            self.pooled = len(ctx.tokens)
        # the root takes the block row of level 0, column 0; levels[0][0] keeps the token that
        # column 0 was refined from, so that column 0's n-gram stays a chain of predictions
        self.window_sent = not self.paused
        if self.paused:
            self.paused -= 1
            return Draft()
        tokens, parents = trie(self.pool.lookup(ctx.tokens[-1], c.guesses))
        cells, offsets, mask, _ = lookahead_layout(c.window, c.ngram)
        return Draft(tokens=tokens, parents=parents, aux_tokens=[self.levels[j][i] for j, i in cells],
                     aux_offsets=list(offsets), aux_mask=mask)

    def observe(self, draft: Draft, logits: torch.Tensor, verdict) -> None:
        """logits: (block, vocab); the last level's rows refine the window."""
        c = self.config
        W, N = c.window, c.ngram
        cells, _, _, top = lookahead_layout(W, N)
        if not self.window_sent or len(draft.aux_tokens) != len(cells):
            return  # paused, or the loop cut the aux rows (no room left in the context window)
        self.misses = 0 if verdict.accepted else self.misses + 1
        if self.patience and self.pause and self.misses >= self.patience:
            self.misses, self.paused = 0, self.pause
        first_aux = 1 + len(draft.tokens)  # block row of aux row 0
        rows = [first_aux + r if r >= 0 else 0 for r in top]
        new = logits[rows].argmax(-1).tolist()  # (W,): the next Jacobi iterate of the top level
        for i in range(W):  # harvest: each column, read upwards, plus its prediction
            self.pool.add([self.levels[j][i] for j in range(N - 1)] + [new[i]])
        self.levels = self.levels[1:] + [new]
        m = len(verdict.accepted)
        if m:
            self.levels = [level[m:] + level[:m] for level in self.levels] if m < W else self.levels
