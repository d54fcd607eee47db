"""Whether a batch drafts: verifying drafts pays at batch size 1 and can lose at batch size 16.

A forward's cost grows with its rows. At batch size B every sequence already brings one row (its
root), so the forward is no longer nearly free per extra row, and draft rows compete with other
sequences' roots (vLLM and TensorRT-LLM document the same crossover). The switch compares, at the
current batch, what a plain step and a drafting step yield per second of forward:

    plain:    B tokens (one per sequence)       for c(B)
    drafting: sum_i t_i tokens                  for c(sum_i r_i)

with c(k) the runtime's cost curve, a forward over k rows relative to one row (``paradec.costs``: the
one curve ``auto`` reads too, measured once per machine, model, format and thread count and cached;
only its ratios matter here), r_i the rows a sequence's drafting step takes (root + draft) and t_i the
tokens it yields (accepted + bonus), each a moving average over that sequence's drafting steps (1 and
1 until it has drafted). The batch drafts when
the second is at least the first; while it does not, every ``probe_every``-th step drafts anyway,
so the averages follow the text. Worked example, c(k) = 1 + 0.1 k ms, 8 sequences each drafting
4 rows for 2 tokens: plain 8 / 1.8 = 4.4 tokens/ms, drafting 16 / 4.2 = 3.8 → plain steps.

Off is a budget of 0 draft rows (``Sequence.next_block(max_rows=0)``): the drafters see no room
and propose nothing, the output stays exactly what it would be (every step is still verified). The
batch hands the switch its greedy sequences only (``paradec.parallel.batch.DraftPolicy``): a sampling
sequence drafts as it would alone, since a drafted step draws other random numbers than a plain one
and a seeded sample must not depend on what else runs. Server policy, so it lives in ``serve/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..costs import CostCurve
    from ..decode import Sequence


class DraftSwitch:
    """Decides per step whether the batch drafts; one per batch (it keeps per-sequence averages)."""

    def __init__(self, curve: "CostCurve", probe_every: int = 8, decay: float = 0.7):
        if not isinstance(probe_every, int) or probe_every < 1:
            raise ValueError(f"probe_every must be an integer >= 1, got {probe_every!r}")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.curve, self.probe_every, self.decay = curve, probe_every, decay
        self.averages: dict["Sequence", tuple[float, float]] = {}  # (rows, tokens) per drafting step
        self.drafting = True  # this step's decision
        self.skipped = 0  # plain steps since the last drafting one

    def max_rows(self, seqs: list["Sequence"]) -> int | None:
        """The draft budget of this step: None (draft freely) or 0 (plain steps for every sequence)."""
        self.averages = {s: self.averages[s] for s in seqs if s in self.averages}  # the batch's sequences only
        self.drafting = self.pays(seqs) or self.skipped >= self.probe_every - 1
        self.skipped = 0 if self.drafting else self.skipped + 1
        return None if self.drafting else 0

    def pays(self, seqs: list["Sequence"]) -> bool:
        """Whether drafting yields at least as many tokens per second of forward as plain steps now."""
        if not seqs:
            return True
        rows = tokens = 0.0
        for s in seqs:
            r, t = self.averages.get(s, (1.0, 1.0))
            rows, tokens = rows + r, tokens + t
        b = len(seqs)
        return tokens / self.curve(max(1, round(rows))) >= b / self.curve(b)

    def observe(self, seqs: list["Sequence"]) -> None:
        """After a step: the rows and tokens of each sequence's step, if the batch drafted in it."""
        if not self.drafting:
            return
        d = self.decay
        for s in seqs:
            rows, tokens = s.last_step
            if rows:
                r, t = self.averages.get(s, (1.0, 1.0))
                self.averages[s] = (d * r + (1 - d) * rows, d * t + (1 - d) * tokens)
