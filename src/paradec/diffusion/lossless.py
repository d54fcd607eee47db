"""A lossless diffusion decoder (FreeDave-style draft-and-verify): the output of the one-token-per-step
greedy decode, in fewer forward passes.

One-token-per-step commits, at each step, the most confident masked position (``rules.low_confidence``
with k = 1). From one forward's confidences the next steps can be *guessed*: the positions ranked
2nd, 3rd, ... with their current tokens. The guess is checked the way speculative decoding checks
a draft: one forward reads the states after 0, 1, ..., k guessed commits side by side (row groups
that do not see each other), and guess j is accepted while the state before it, read exactly,
picks it. Worked example, confidences at state s0 ranking positions (5, 2, 7):

    commit 5 (s0's choice, exact)            → s1
    draft  2, 7; forward reads s1, s1+2, s1+2+7
    s1 picks 2?   yes → commit 2             → s2
    s2 picks 7?   no (it picks 3)            → stop; s2's logits are exact: next step commits 3 free

Each verifying forward thus yields the accepted guesses plus the next exact commit, and every
commit is one the baseline makes, in its order. Greedy only (sampling has no single baseline to equal).
On CPU a forward over k + 1 states costs about k + 1 times one state's: fewer forwards, not less work.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import check_int
from . import rules
from .decoders import MAX_BLOCK, Decoder, DecoderConfig, Selection, StepView, register


@dataclass(frozen=True)
class LosslessConfig(DecoderConfig):
    draft: int = 4  # guessed commits verified per forward (it reads draft + 1 states)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "draft", 1, MAX_BLOCK)


@register
class Lossless(Decoder):
    name = "lossless"
    Config = LosslessConfig
    lossless = True
    greedy_only = True

    def select(self, view: StepView) -> Selection:
        tokens, confidence = view.candidates()
        order = rules.ranked(confidence)
        k = max(0, min(self.config.draft, len(order) - 2))  # the last verified state keeps a masked position
        positions = order[: 1 + k]
        return Selection(positions, [int(tokens[p]) for p in positions], draft=k)

    def verify(self, views: list[StepView], draft: list[tuple[int, int]]) -> int:
        """How many draft commits the exact states confirm: ``views[j]`` is the state before guess j."""
        accepted = 0
        while accepted < len(draft) and self.choose(views[accepted]) == draft[accepted]:
            accepted += 1
        return accepted

    @staticmethod
    def choose(view: StepView) -> tuple[int, int]:
        """The one-token-per-step choice at a state: its most confident masked position and token."""
        tokens, confidence = view.candidates()
        position = rules.low_confidence(confidence, 1)[0]
        return position, int(tokens[position])
