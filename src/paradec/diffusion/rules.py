"""The commit rules of the diffusion papers, one pure function each: which masked positions of a block
become final after a forward pass.

Every rule reads the same two vectors for the block's n positions (``candidates``): the token each
position would take and its confidence (the probability the model gives that token), with
``-inf`` confidence at positions already decided. A rule returns the positions to commit, most
confident first; ties go to the leftmost position, so every rule is deterministic.

Worked example (n = 4, positions 1 and 3 masked, confidences [-inf, 0.95, -inf, 0.40]):
``low_confidence(c, 1)`` → [1]; ``threshold(c, 0.9)`` → [1]; ``threshold(c, 0.3)`` → [1, 3].
"""

from __future__ import annotations

import math

import torch

from ..sampling import SamplingParams, target_probs


def candidates(logits: torch.Tensor, masked: torch.Tensor, params: SamplingParams,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's candidate token and its confidence, as Fast-dLLM's ``get_transfer_index`` reads them.

    logits: (n, vocab); masked: (n,) bool
    returns tokens (n,) int64 — the argmax (greedy) or a draw from the sampling distribution — and
    confidence (n,) float64 — the softmax probability of that token, -inf where not masked.
    """
    if params.greedy:
        tokens = logits.argmax(-1)
    else:
        tokens = torch.multinomial(target_probs(logits, params), 1, generator=generator).squeeze(-1)
    p = torch.softmax(logits.to(torch.float64), -1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, torch.where(masked, p, -math.inf)


def ranked(confidence: torch.Tensor) -> list[int]:
    """Masked positions (finite confidence), most confident first, ties to the leftmost."""
    order = sorted(range(len(confidence)), key=lambda i: (-float(confidence[i]), i))
    return [i for i in order if confidence[i] > -math.inf]


def num_transfer_tokens(masked: int, steps: int) -> list[int]:
    """LLaDA's fixed schedule: how many of ``masked`` positions to commit at each of ``steps`` steps.

    The linear noise schedule unmasks the same expected number per step: ``masked // steps`` each,
    the remainder one more at the first steps. Example: (10, 4) → [3, 3, 2, 2].
    """
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def low_confidence(confidence: torch.Tensor, k: int) -> list[int]:
    """LLaDA's low-confidence remasking: commit the ``k`` most confident masked positions, remask the rest."""
    return ranked(confidence)[: max(k, 0)]


def threshold(confidence: torch.Tensor, tau: float) -> list[int]:
    """Fast-dLLM's confidence-threshold rule: every masked position with confidence >= ``tau``, and
    always at least the most confident one (so every step makes progress)."""
    order = ranked(confidence)
    return order[:1] + [i for i in order[1:] if confidence[i] >= tau]


def factor(confidence: torch.Tensor, f: float) -> list[int]:
    """Fast-dLLM's factor rule: the n most confident positions where the i-th most confident one
    (i = 1..n) has confidence >= 1 - f / (i + 1); the first always passes.

    (The reference code also commits the last candidate when it alone fails the test; this does not.)
    Example, f = 1: thresholds 0.67, 0.75, 0.8 for the 2nd, 3rd, 4th: confidences [0.9, 0.8, 0.7]
    → the first two.
    """
    order = ranked(confidence)
    n = 1
    while n < len(order) and confidence[order[n]] >= 1 - f / (n + 2):
        n += 1
    return order[:n]


def local_leap(confidence: torch.Tensor, anchor_tau: float, local_tau: float, radius: int) -> list[int]:
    """LocalLeap's anchor-local commit (after its two principles: determinism propagates from
    high-confidence *anchors* to their neighbours, and decays with distance).

    Anchors: positions with confidence >= ``anchor_tau`` (at least the most confident one). A masked
    position within ``radius`` of an anchor commits with the relaxed threshold
    ``local_tau + (anchor_tau - local_tau) * (d - 1) / radius`` at distance d: ``local_tau`` next to
    the anchor, rising toward ``anchor_tau`` further away. Positions are counted along the block,
    decided ones included.
    """
    order = ranked(confidence)
    if not order:
        return []
    anchors = order[:1] + [i for i in order[1:] if confidence[i] >= anchor_tau]
    chosen = set(anchors)
    for i in order:
        if i in chosen:
            continue
        d = min(abs(i - a) for a in anchors)
        if d <= radius and confidence[i] >= local_tau + (anchor_tau - local_tau) * (d - 1) / radius:
            chosen.add(i)
    return [i for i in order if i in chosen]


def credit_update(credit: torch.Tensor, logits: torch.Tensor, masked: torch.Tensor, beta: float,
                  gamma: float) -> torch.Tensor:
    """CreditDecoding's trace credit: each masked position's credit for every token decays by
    ``beta`` per step, and the token it currently ranks first gains ``p ** gamma``.

    credit: (n, vocab) float64; logits: (n, vocab); masked: (n,) bool. Returns the new credit.
    """
    p = torch.softmax(logits.to(torch.float64), -1)
    top_p, top = p.max(-1)
    gain = torch.zeros_like(credit).scatter_(-1, top[:, None], (top_p ** gamma)[:, None])
    return torch.where(masked[:, None], beta * credit + gain, credit)


def credit_fuse(logits: torch.Tensor, credit: torch.Tensor, alpha: float) -> torch.Tensor:
    """Logits fused with the trace credit: ``log_softmax(logits) + alpha * log(1 + credit)``, so a token
    the model kept predicting gains confidence. (n, vocab) float64."""
    return torch.log_softmax(logits.to(torch.float64), -1) + alpha * torch.log1p(credit)


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    """Logit of the best token minus that of the second best, per position: (n, vocab) → (n,)."""
    top = logits.to(torch.float64).topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def early_commit(gaps: torch.Tensor, masked: torch.Tensor, progress: float, taus: tuple[float, float, float]) -> bool:
    """"Diffusion LMs know the answer before decoding" (Prophet): commit everything left once the mean
    top-1/top-2 logit gap over the masked positions reaches a threshold that loosens with progress:
    ``taus[0]`` before a third of the positions are decided, ``taus[1]`` before two thirds, ``taus[2]`` after."""
    if not bool(masked.any()):
        return False
    tau = taus[0] if progress < 1 / 3 else taus[1] if progress < 2 / 3 else taus[2]
    return float(gaps[masked].mean()) >= tau
