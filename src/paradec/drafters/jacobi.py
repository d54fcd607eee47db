"""Jacobi decoding (Santilli et al. 2023), with Speculative Jacobi Decoding's acceptance for sampling.

Decoding the next ``k`` tokens is a fixed-point problem: ``y_i = f(prefix, y_1..y_{i-1})``. Jacobi
iteration keeps a window of guesses ``y_1..y_k`` and refines all of them in one forward pass. Here
the window is drafted as a chain after the root, so the same pass both *verifies* the guesses (the
converged prefix is accepted, plus the bonus token) and *refines* the rest: row ``r`` of the block
predicts the token after ``y_r``, so the rows past the accepted prefix are the next iterate::

    block      root  y1  y2  y3  y4         accepted: y1 (= argmax of root row), bonus b = row-1 argmax
    predicts    y1   y2' y3' y4' y5'        next window: [y3', y4', y5', pad]  (rows after the bonus)

Greedy: guesses are argmaxes and verification is exact matching, so the output equals plain greedy.
Sampling (Speculative Jacobi Decoding, Teng et al. 2024): each refined guess is *drawn* from the
target distribution of its row, and the node carries that distribution as its ``q``; verification
then accepts it with probability min(1, p/q), which keeps the target distribution exactly. Padding
guesses are deterministic (a point mass), also exact.

Cost: a forward over 1 + k rows costs more than over one row on CPU (≈ flat up to 8 rows in
bfloat16, 1.4-1.7x already at 2 rows in float32). The cost gate (``gate.py``, on by default in
float32 only) takes plain steps when the window keeps failing: after a step that accepts nothing,
8 plain steps, so text where Jacobi rarely converges costs little more than plain decoding. Without training
(CLLMs) Jacobi seldom converges on real models: ~1.02-1.15 tokens per forward on SmolLM2-135M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import check_int
from ..sampling import sample, target_probs
from ..tree import Block, Draft
from .base import Drafter, StepContext, register
from .gate import CostGate, GatedConfig


@dataclass(frozen=True)
class JacobiConfig(GatedConfig):
    """window: guessed future tokens refined (and verified) per forward pass, at most 64;
    min_accept / probe_every / accept_decay: the cost gate (``gate.py``); when it skips a step the
    window restarts from fresh guesses. ``None`` = by the cost of rows (``defaults.py``): off for
    bfloat16/float16 off the native runtime (measured where a forward over 5 rows cost about one
    row's); otherwise, every dtype on the native runtime included, a step that accepts nothing is
    followed by 8 plain steps (min_accept 1, accept_decay 0, probe_every 9)."""

    window: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "window", 1, 64)


@register
class JacobiDrafter(Drafter):
    name = "jacobi"
    Config = JacobiConfig
    config: JacobiConfig

    def __init__(self, model, config: JacobiConfig = JacobiConfig()):
        super().__init__(model, config)
        self.begin([], None)

    def begin(self, prompt_ids, params) -> None:
        self.refined: torch.Tensor | None = None  # (m, vocab) logits rows refining the next window
        self.guesses: list[int] = []  # the window proposed last step (for padding)
        self.gate = CostGate(self.config)

    def propose(self, ctx: StepContext) -> Draft:
        if not self.gate.allow():
            return Draft()  # the window keeps failing: a plain step (the window restarts after it)
        tokens: list[int] = []
        q: list[torch.Tensor | None] = []
        if self.refined is not None:
            if ctx.params.greedy:
                tokens = self.refined.argmax(-1).tolist()
                q = [None] * len(tokens)
            else:
                for row in self.refined:  # SJD: draw each guess from its row, remember the distribution
                    dist = target_probs(row, ctx.params)  # (vocab,)
                    tokens.append(sample(dist, ctx.generator))
                    q.append(dist)
        tokens, q = tokens[: self.config.window], q[: self.config.window]
        pad = tokens[-1] if tokens else (self.guesses[-1] if self.guesses else ctx.tokens[-1])
        while len(tokens) < self.config.window:  # new tail positions: a deterministic guess
            tokens.append(pad)
            q.append(None)
        self.guesses = tokens
        return Draft.chain(tokens, q=None if all(x is None for x in q) else q)

    def observe(self, block: Block, logits: torch.Tensor, verdict) -> None:
        """logits: (block, vocab). Rows after the bonus token's row are the next Jacobi iterate."""
        n = len(block.draft)
        if n == 0:
            self.refined = None
            return
        m = len(verdict.accepted)
        self.refined = logits[m + 1 : n + 1]  # (n - m, vocab): row r predicts the token after node r - 1
        self.gate.record(m)
