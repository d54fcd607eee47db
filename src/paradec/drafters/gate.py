"""The cost gate: stop drafting while drafts keep failing, because a rejected draft still costs rows.

Extra block rows cost (in float32 1.4x a one-row forward already at 2 rows; on the native runtime in
every dtype, ``defaults.py``), so a drafter whose drafts are not being accepted makes decoding slower
than plain. Every gated method (``ngram``, ``recycling``, ``jacobi``, ``lookahead``) uses this one policy:

- after every drafted step, its accepted-token count joins a moving average,
  ``average = accept_decay * average + (1 - accept_decay) * accepted`` (it starts at 1.0: open);
- while ``average < min_accept`` the gate is closed: the drafter proposes nothing, except that every
  ``probe_every``-th step it asks still drafts (a *probe*), so the gate notices when drafts turn good.

``accept_decay = 0`` makes the average the last drafted step alone: with ``min_accept = 1`` one step
that accepts nothing closes the gate, and drafting resumes with one probe every ``probe_every``
steps (Jacobi's and Lookahead's measured gate: "after a miss, ``probe_every - 1`` plain steps").
``min_accept = 0`` never closes. The defaults, by method and the cost of rows (dtype, runtime), are in
``defaults.py``.

Worked example (min_accept 0.5, accept_decay 0.8, probe_every 4, every draft rejected)::

    step      1    2    3    4    5  6  7  8    9 ...
    drafts?   yes  yes  yes  yes  -  -  -  yes  - ...
    average   0.8  .64  .51  .41            .33
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import check_int, check_number
from .base import MAX_DEPTH, DrafterConfig

MAX_PROBE_EVERY = 1024


@dataclass(frozen=True, kw_only=True)
class GatedConfig(DrafterConfig):
    """The gate's options, shared by every gated method (``None`` = the default for the model's dtype and runtime).

    min_accept:   close the gate below this moving average of accepted tokens per drafted step (0 = never)
    probe_every:  while closed, still draft every this-many-th step (1 = never skip)
    accept_decay: weight of the past in the moving average, in [0, 1) (0 = the last drafted step alone)
    """

    min_accept: float | None = None
    probe_every: int | None = None
    accept_decay: float | None = None

    def __post_init__(self) -> None:
        check_number(self, "min_accept", 0, MAX_DEPTH, optional=True)
        check_int(self, "probe_every", 1, MAX_PROBE_EVERY, optional=True)
        check_number(self, "accept_decay", 0, 1, optional=True, below_high=True)


class CostGate:
    """One generation's gate state; build a fresh one in ``Drafter.begin``. The config must be resolved."""

    def __init__(self, config: GatedConfig):
        self.min_accept, self.probe_every, self.decay = config.min_accept, config.probe_every, config.accept_decay
        self.average = 1.0  # accepted tokens per drafted step, moving average
        self.skipped = 0  # steps skipped since the last drafted one

    def allow(self) -> bool:
        """Whether to draft this step (ask only on steps with something to draft)."""
        if self.average >= self.min_accept or self.skipped >= self.probe_every - 1:
            self.skipped = 0
            return True
        self.skipped += 1
        return False

    def record(self, accepted: int) -> None:
        """Learn from a drafted step: ``accepted`` of its tokens were accepted."""
        self.average = self.decay * self.average + (1 - self.decay) * accepted
