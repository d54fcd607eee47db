"""``layerskip``: self-speculative decoding with the target's first L layers as the draft model.

The draft runs the target's embedding, its first ``layers`` decoder layers, the final norm and then an
*exit head* (by default the target's own LM head), all sharing the target's weights in memory; only
its small KV cache (L layers) is its own. Drafts are chains or dynamic trees as in ``draft``.

Honest note: the target's LM head reads the *last* layer's hidden states; on an early layer, with no
training, it guesses poorly (measured on SmolLM2-135M: ~1.0–1.2 tokens per target forward, see
docs/draft_models.md), so this method only pays off with a trained exit head (LayerSkip, Elhoushi et
al. 2024, trains the model for it; Kangaroo / Draft & Verify train an adapter). The seam for that is
``exit_head``: any module mapping the final-normed hidden states of layer L, (n, d), to logits (n, vocab).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ParadecError
from ..options import check_int
from .base import register
from .draft_runner import DraftRunner
from .draft_tree import DraftTreeConfig, TreeDrafter

MAX_LAYERS = 256  # more than any released decoder LM; a model with fewer is refused when the runner is built
DEFAULT_FRACTION = 0.25  # layers = this share of the target's layers when not given (measured, docs/draft_models.md)


@dataclass(frozen=True)
class LayerSkipConfig(DraftTreeConfig):
    """layers: decoder layers the draft runs (0 = a quarter of the target's, at least 1)."""

    layers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "layers", 0, MAX_LAYERS)  # the model's own layer count is checked in make_runner


@register
class LayerSkipDrafter(TreeDrafter):
    name = "layerskip"
    Config = LayerSkipConfig
    config: LayerSkipConfig

    def __init__(self, model, config: LayerSkipConfig, exit_head: nn.Module | None = None):
        self.exit_head = exit_head  # None: the target's own LM head
        super().__init__(model, config)

    def make_runner(self) -> DraftRunner:
        total = self.model.runtime.layers
        n = self.config.layers or max(1, round(total * DEFAULT_FRACTION))
        if n > total:
            raise ParadecError(f"layerskip: layers={n} but '{self.model.name}' has only {total} decoder layers")
        self.n_layers = n
        return DraftRunner(self.model.target(layers=n, exit_head=self.exit_head))

    def drafting_model(self):
        return self.model, self.n_layers

