"""How many draft nodes pay: the tree budget that follows the runtime's measured cost of k rows.

A step that verifies ``n`` draft nodes costs one target forward over ``n + 1`` rows, ``c(n + 1)``
(relative to a one-row forward, ``c(1) = 1``), plus the drafter's own forwards, ``L × δ``. If the
draft is calibrated, a node's *value* — the product of the draft probabilities along its path — is
the chance it is accepted, so the step yields ``1 + Σ value`` tokens on average (EAGLE-2's
observation). The speed of a step is then ``(1 + Σ value) / (c(n + 1) + L δ)``, and a node is worth
adding exactly when it raises that ratio:

    value ≥ (1 + Σ value) × (cost after / cost before − 1)

Nodes are offered best first (a tree builder offers each node's children in decreasing value), so
the rule stops at the size where one more row costs more than it brings: with bfloat16's flat curve
trees grow to the depth limit; in float32, where 2 rows cost 1.4 rows, a node needs a value of at
least 0.4 (with nothing accepted yet).

Only values known *before* a node is drawn enter the rule (the planned ``value × q_(j)``), never the
drawn token's own value, so sampled drafts stay exact (see ``draft_tree.py``).

Worked example (curve 1, 1.4, 1.5, 1.6; δ = 0): with Σ value = 0 a first node needs value ≥ 0.4; a
node of 0.9 makes Σ = 0.9; the second needs ≥ 1.9 × (1.5 / 1.4 − 1) = 0.136.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_ROWS = 129  # root + the largest tree (base.MAX_NODES)


@dataclass(frozen=True)
class StepCost:
    """curve[k - 1] = c(k) / c(1) for k = 1 .. len(curve) (made non-decreasing; past its end it grows
    linearly at its last slope); draft_cost = δ, one drafting forward relative to a one-row target forward."""

    curve: tuple[float, ...]
    draft_cost: float = 0.0

    def __post_init__(self) -> None:
        if not self.curve or any(not (isinstance(c, (int, float)) and c > 0 and math.isfinite(c)) for c in self.curve):
            raise ValueError(f"row costs must be positive numbers, got {self.curve!r}")
        if not (self.draft_cost >= 0 and math.isfinite(self.draft_cost)):
            raise ValueError(f"draft_cost must be >= 0, got {self.draft_cost!r}")
        base = self.curve[0]
        smooth, low = [], math.inf
        for c in reversed(self.curve):  # c*(k) = min over j >= k of c(j): a dip (e.g. a 4-row tile) counts from the start
            low = min(low, c / base)
            smooth.append(low)
        object.__setattr__(self, "curve", tuple(reversed(smooth)))

    def rows(self, k: int) -> float:
        """c(k) / c(1)."""
        n = len(self.curve)
        if k <= n:
            return self.curve[k - 1]
        slope = self.curve[-1] - self.curve[-2] if n > 1 else 1.0
        return self.curve[-1] + slope * (k - n)

    def step(self, nodes: int, forwards: int) -> float:
        return self.rows(nodes + 1) + self.draft_cost * forwards

    def pays(self, value: float, nodes: int, total: float, forwards: int, new_forward: bool = False) -> bool:
        """Whether a node of ``value`` raises tokens per cost, given ``nodes`` nodes of summed value
        ``total`` so far and ``forwards`` drafting forwards (one more if ``new_forward``)."""
        before = (1 + total) / self.step(nodes, forwards)
        after = (1 + total + value) / self.step(nodes + 1, forwards + new_forward)
        return after >= before


def measured_curve(model, rows: int = 17) -> tuple[float, ...]:
    """c(k)/c(1) for k = 1 .. ``rows`` on this model's runtime: ``paradec.costs``' curve (measured once
    per machine and configuration, cached on disk), read at every k."""
    from ..costs import cost_curve

    curve = cost_curve(model)
    return tuple(curve(k) for k in range(1, rows + 1))
