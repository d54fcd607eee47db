"""Plain autoregressive decoding: the empty drafter. The baseline shares the loop with every method."""

from ..tree import Draft
from .base import Drafter, StepContext, register


@register
class PlainDrafter(Drafter):
    name = "plain"
    summary = "plain autoregressive decoding (no draft): the baseline, one token per forward pass"

    def propose(self, ctx: StepContext) -> Draft:
        return Draft()
