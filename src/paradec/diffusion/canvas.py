"""The sequence being denoised and the forwards that read it: which rows each forward reads, what
they see and what stays cached, on top of ``Target``'s verbs (a full-True mask is a bidirectional block).

The canvas is ``prompt + G`` positions, the generated ones [MASK] until decided, in blocks of ``B``.
A forward answers for one or more *states* (the canvas, or the canvas with a draft's tokens filled
in): for each, the logits predicting the current block's B positions. States share one forward as
row groups that do not see each other (the lossless decoder's draft-and-verify); on the native
runtime a row's logits never depend on the other rows of its forward.

Which row predicts position p: row p, or row p - 1 for shifted models (Dream). Row layouts, with
``lo`` = the first predicting row of the block (``start`` or ``start - 1``):

    bidirectional, cache none     every state reads all positions; nothing is cached
    bidirectional, prefix / dual  the block's first forward reads all positions and caches [0, lo)
                                  (dual: and [end, P + G)); later forwards read [lo, P + G) (dual: [lo, end))
    block diffusion               a block's first forward reads the segment before it (the prompt,
                                  causally, or the finished previous block with its final tokens) and
                                  the block, and caches that segment; later forwards read the block
                                  (shifted models: and row start - 1 again, as a query nothing sees)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import ContextOverflowError
from .formats import DiffusionSpec


class Segment(NamedTuple):
    """Rows of one forward: tokens at positions; ``sees``: the segments (by index) they attend to,
    their own included or not; ``causal``: they see their own segment causally."""

    tokens: list[int]
    positions: list[int]
    sees: list[int]
    causal: bool = False


class Canvas:
    def __init__(self, target, spec: DiffusionSpec, prompt: list[int], gen_length: int, block: int, cache: str):
        self.target, self.spec, self.cache = target, spec, cache
        self.P, self.G, self.B = len(prompt), gen_length, block
        self.shift = 1 if spec.shifted else 0
        self.tokens = list(prompt) + [spec.mask_token_id] * gen_length
        if self.P + gen_length > target.max_length:
            raise ContextOverflowError(f"the prompt ({self.P} tokens) and the generation length ({gen_length}) do not "
                                       f"fit the model's context window of {target.max_length} tokens")
        self.cached = -1  # the block whose first forward has run
        self.forwards = 0  # forward passes so far
        self.rows = 0  # rows they read (a proxy for their cost)

    def block_range(self, b: int) -> tuple[int, int]:
        start = self.P + b * self.B
        return start, start + self.B

    def masked(self, b: int) -> torch.Tensor:
        """(B,) bool: the undecided positions of block b."""
        start, end = self.block_range(b)
        return torch.tensor([t == self.spec.mask_token_id for t in self.tokens[start:end]])

    def commit(self, b: int, positions: list[int], tokens: list[int]) -> None:
        """Fill positions of block b (relative to its start) with their final tokens."""
        start, _ = self.block_range(b)
        for p, t in zip(positions, tokens):
            self.tokens[start + p] = t

    def forward(self, b: int, drafts: list[list[tuple[int, int]]] | None = None) -> list[torch.Tensor]:
        """One forward for block b over the states ``drafts`` (each a list of (block position, token)
        filled in on top of the canvas; None: the canvas alone). Returns (B, vocab) logits per state."""
        states = drafts or [[]]
        first = self.cached != b
        if first and len(states) != 1:
            raise ValueError("a block's first forward reads the canvas alone")
        self.cached = b
        if first and not self.spec.block_size:
            self.target.crop(0)  # a bidirectional block's first forward reads everything afresh
        layout = self._block_diffusion if self.spec.block_size else self._bidirectional
        segments, keep, predict = layout(b, states, first)
        logits = self._run(segments, keep)
        return [logits[rows] for rows in predict]

    # -- the row layouts: (segments, rows to cache, predicting rows per state) ----------------------

    def _state(self, draft: list[tuple[int, int]], b: int) -> list[int]:
        tokens = list(self.tokens)
        start, _ = self.block_range(b)
        for p, t in draft:
            tokens[start + p] = t
        return tokens

    def _bidirectional(self, b: int, states, first: bool):
        start, end = self.block_range(b)
        n, lo = self.P + self.G, start - self.shift
        if first or self.cache == "none":
            window = range(n)
        else:
            window = range(lo, n if self.cache == "prefix" else end)
        segments = [Segment(self._state(d, b)[window.start : window.stop], list(window), [i]) for i, d in enumerate(states)]
        keep = []
        if first and self.cache != "none":  # cache what later forwards will not read
            keep = list(range(lo)) + (list(range(end, n)) if self.cache == "dual" else [])
        at = lo - window.start
        predict = [torch.arange(i * len(window) + at, i * len(window) + at + self.B) for i in range(len(states))]
        return segments, keep, predict

    def _block_diffusion(self, b: int, states, first: bool):
        start, end = self.block_range(b)
        segments, keep = [], []
        if first:  # the segment before the block: the prompt (causal) or the finished block, cached now
            before = range(self.P) if b == 0 else range(start - self.B, start)
            segments.append(Segment([self.tokens[p] for p in before], list(before), [0], causal=b == 0))
            keep = list(range(len(before)))
        elif self.shift:  # row start - 1 again: it sees the cache, nothing new; nothing sees it
            segments.append(Segment([self.tokens[start - 1]], [start - 1], []))
        past = [0] if first else []
        lead = sum(len(s.tokens) for s in segments)
        for i, d in enumerate(states):
            state = self._state(d, b)
            segments.append(Segment(state[start:end], list(range(start, end)), past + [len(segments)]))
        predict = []
        for i in range(len(states)):
            rows = torch.arange(lead + i * self.B, lead + (i + 1) * self.B)
            predict.append(torch.cat([torch.tensor([lead - 1]), rows[:-1]]) if self.shift else rows)
        return segments, keep, predict

    def _run(self, segments: list[Segment], keep: list[int]) -> torch.Tensor:
        """One target forward over the segments; keep rows ``keep`` cached, drop the rest. (rows, vocab)."""
        tokens = [t for s in segments for t in s.tokens]
        offsets = [p - self.target.length for s in segments for p in s.positions]
        bounds = [0]
        for s in segments:
            bounds.append(bounds[-1] + len(s.tokens))
        mask = torch.zeros(len(tokens), len(tokens), dtype=torch.bool)
        for i, s in enumerate(segments):
            for j in s.sees:
                block = mask[bounds[i] : bounds[i + 1], bounds[j] : bounds[j + 1]]
                block[:] = torch.ones_like(block).tril() if (i == j and s.causal) else True
        logits = self.target.forward(tokens, offsets, mask)
        self.target.commit(keep)
        self.forwards += 1
        self.rows += len(tokens)
        return logits
