"""``layerskip``: self-speculative decoding with the target's first L layers as the draft model.

The draft runs the target's embedding, its first ``layers`` decoder layers and then an *exit head*
(by default the target's own final norm + LM head), all sharing the target's weights in memory;
only its small KV cache (L layers) is its own. Drafts are chains or dynamic trees as in ``draft``.

Honest note: the target's LM head reads the *last* layer's hidden states; on an early layer, with no
training, it guesses poorly (measured on SmolLM2-135M: ~1.0–1.2 tokens per target forward, see
docs/draft_models.md), so this method only pays off with a trained exit head (LayerSkip, Elhoushi et
al. 2024, trains the model for it; Kangaroo / Draft & Verify train an adapter). The seam for that is
``exit_head``: any module mapping layer-L hidden states (n, d) to logits (n, vocab).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ParadecError
from .base import register
from .draft_runner import DraftRunner
from .draft_tree import DraftTreeConfig, TreeDrafter

DEFAULT_FRACTION = 0.25  # layers = this share of the target's layers when not given (measured, docs/draft_models.md)


class TargetExitHead(nn.Module):
    """The untrained exit: the target's final norm and LM head applied to an early layer's output."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, vocab)
        return self.lm_head(self.norm(hidden))


@dataclass(frozen=True)
class LayerSkipConfig(DraftTreeConfig):
    """layers: decoder layers the draft runs (0 = a quarter of the target's, at least 1)."""

    layers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.layers, int) or isinstance(self.layers, bool) or self.layers < 0:
            raise ValueError(f"layers must be an integer >= 0 (0 = automatic), got {self.layers!r}")


@register
class LayerSkipDrafter(TreeDrafter):
    name = "layerskip"
    Config = LayerSkipConfig
    config: LayerSkipConfig

    def __init__(self, model, config: LayerSkipConfig, exit_head: nn.Module | None = None):
        self.exit_head = exit_head  # None: the target's own norm + LM head
        super().__init__(model, config)

    def make_runner(self) -> DraftRunner:
        hf = self.model.hf_model
        base = getattr(hf, "model", None)
        parts = ("embed_tokens", "layers", "norm", "rotary_emb")
        if base is None or not all(hasattr(base, p) for p in parts) or hf.get_output_embeddings() is None:
            raise ParadecError(
                f"layerskip needs a Llama-style model (model.embed_tokens/layers/norm/rotary_emb and an LM head); "
                f"'{self.model.name}' is a {type(hf).__name__}"
            )
        total = len(base.layers)
        n = self.config.layers or max(1, round(total * DEFAULT_FRACTION))
        if n > total:
            raise ParadecError(f"layerskip: layers={n} but '{self.model.name}' has only {total} decoder layers")
        self.n_layers = n
        layers = base.layers[:n]
        head = self.exit_head if self.exit_head is not None else TargetExitHead(base.norm, hf.get_output_embeddings())

        def forward(ids, positions, mask, cache, last_only):  # (1, n), (1, n), (1, 1, n, past + n) -> (n | 1, vocab)
            hidden = base.embed_tokens(ids)  # (1, n, d)
            rope = base.rotary_emb(hidden, position_ids=positions)
            for layer in layers:
                hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=positions,
                               past_key_values=cache, use_cache=True)
            return head(hidden[0, -1:] if last_only else hidden[0])

        max_length = int(getattr(hf.config.get_text_config(), "max_position_embeddings", 0) or 2**31)
        return DraftRunner(forward, hf.dtype, max_length)
