"""Verification: which part of a draft tree the target model keeps.

A pure function of (draft, logits, sampling params, rng): no model, no cache.

Words used throughout (as in vLLM's rejection sampler):
- *accepted* tokens: draft nodes on the kept root-to-node path;
- *recovered* token: drawn from the residual distribution where a draft token was rejected;
- *bonus* token: the target's own next token after the last accepted node (the recovered token
  when a rejection happened). Every step therefore yields ``len(accepted) + 1`` tokens.

``logits`` has one row per block row: row 0 (the root) predicts the token after the root, row
``i + 1`` predicts the token after draft node ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import SamplingParams, sample, target_probs
from .tree import Draft, children


@dataclass(frozen=True)
class Verdict:
    accepted: list[int]  # node indices of the accepted path, root excluded
    tokens: list[int]  # the accepted nodes' tokens followed by the bonus token


def verify(draft: Draft, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> Verdict:
    """Dispatch on the sampling mode. logits: (block, vocab)."""
    if params.greedy:
        return verify_greedy(draft, logits)
    return verify_sampling(draft, logits, params, generator)


def verify_greedy(draft: Draft, logits: torch.Tensor) -> Verdict:
    """Follow the tree while a child's token equals the target argmax; the last argmax is the bonus.

    Example: tree ``a─b`` and ``c`` under the root; argmax row0 = ``c``, row of c = ``d``
    → accepted ``[2]`` (node c), tokens ``[c, d]``: the right answer on a non-first branch is found.
    """
    n = len(draft.tokens)
    argmax = logits[: n + 1].argmax(-1).tolist()  # (n + 1,)
    kids = children(draft.parents)
    node, accepted = -1, []
    while True:
        want = argmax[node + 1]
        nxt = next((c for c in kids[node] if draft.tokens[c] == want), None)
        if nxt is None:
            return Verdict(accepted, [draft.tokens[i] for i in accepted] + [want])
        accepted.append(nxt)
        node = nxt


def verify_sampling(draft: Draft, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> Verdict:
    """Recursive rejection sampling over siblings (SpecTr / Recursive Speculative Decoding).

    At a node with target distribution p, children x_1, x_2, ... are tried in order:
        q_i = the draft distribution x_i was drawn from, with the tokens of x_1..x_{i-1} removed
              (siblings are drawn without replacement), or a point mass on x_i if deterministic
        accept x_i with probability min(1, p(x_i) / q_i(x_i))
        on rejection: p ← normalise(max(p - q_i, 0))      # the residual
    If every child is rejected, the bonus token is drawn from the final residual p.
    Each accept/reject keeps the marginal of the emitted token equal to p, so the output follows
    the target distribution exactly, whatever the draft proposes.
    """
    kids = children(draft.parents)
    node, accepted = -1, []
    while True:
        p = target_probs(logits[node + 1], params)  # (vocab,) float64
        tried: list[int] = []
        chosen = None
        for c in kids[node]:
            x = draft.tokens[c]
            q = _draft_dist(draft, c, tried, p.shape[-1])
            u = torch.rand((), generator=generator, dtype=torch.float64)
            if q[x] > 0 and u * q[x] < p[x]:  # u < p(x)/q(x), without dividing
                chosen = c
                break
            residual = torch.clamp(p - q, min=0)
            total = residual.sum()
            if total > 0:  # total == 0 only when p == q, where rejection cannot happen
                p = residual / total
            tried.append(x)
        if chosen is None:
            bonus = sample(p, generator)
            return Verdict(accepted, [draft.tokens[i] for i in accepted] + [bonus])
        accepted.append(chosen)
        node = chosen


def _draft_dist(draft: Draft, node: int, tried: list[int], vocab: int) -> torch.Tensor:
    """The distribution node's token was drawn from, given its earlier siblings were drawn first."""
    q = draft.q[node] if draft.q is not None else None
    if q is None:
        q = torch.zeros(vocab, dtype=torch.float64)
        q[draft.tokens[node]] = 1.0
        return q
    q = q.to(torch.float64).clone()
    if tried:
        q[tried] = 0.0
    total = q.sum()
    return q / total if total > 0 else q
