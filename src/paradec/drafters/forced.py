"""``forced``: no draft of its own, only what a constraint's grammar forces (``paradec.constraints``).

Every method but plain drafts the forced tokens ahead of its own draft; this one drafts nothing else, so
it measures what the forced tokens alone are worth (SGLang's jump-forward decoding, verified in the same
forward). Without a constraint it is plain decoding.
"""

from ..tree import Draft
from .base import Drafter, StepContext, register


@register
class ForcedDrafter(Drafter):
    name = "forced"
    needs_constraint = True  # without one it is plain: the unconstrained benchmark leaves it out

    def propose(self, ctx: StepContext) -> Draft:
        return Draft()
