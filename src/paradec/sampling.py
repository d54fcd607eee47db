"""Sampling parameters and the one logits-processing function shared by every method.

Plain and speculative decoding both turn target logits into the distribution to sample from with
``target_probs``; that shared function is what makes "same distribution" a fair comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ParadecError


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` means greedy decoding (argmax); ``top_k=0`` and ``top_p=1`` disable those filters.

    Any temperature > 0 samples, however small: as it goes to 0 the distribution goes to the argmax,
    and a temperature so small that the scaled logits leave float64's range (1e-320, say) gives that
    limit exactly: the most probable token (exact ties share its mass). No floor is applied.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ParadecError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ParadecError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ParadecError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ParadecError(f"seed must be an integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator:
        """A CPU random generator seeded from ``seed`` (or from torch's global RNG if unset)."""
        gen = torch.Generator()
        gen.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,))))
        return gen


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits (..., vocab) → float64 probabilities after temperature, top-k and top-p.

    Greedy params give a one-hot distribution on the argmax, so greedy verification is the
    special case of sampling verification with a deterministic target.
    """
    logits = logits.to(torch.float64)
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float64)
    # Shift by the row's maximum first (softmax does not change): the scaled logits are then <= 0,
    # so a tiny temperature sends the others to -inf and keeps the maximum at 0 instead of making
    # +inf - inf = NaN (which would end the sequence with "probability tensor contains ... nan").
    logits = (logits - logits.amax(-1, keepdim=True)) / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one token id from a (vocab,) distribution."""
    return int(torch.multinomial(probs, 1, generator=generator))
