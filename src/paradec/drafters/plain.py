"""Plain autoregressive decoding: the empty drafter. The baseline shares the loop with every method."""

from ..tree import Draft
from .base import Drafter, StepContext, register


@register
class PlainDrafter(Drafter):
    name = "plain"

    def propose(self, ctx: StepContext) -> Draft:
        return Draft()
