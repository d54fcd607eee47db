"""``medusa``: trained residual heads on the last feature draft several positions at once (Medusa,
Cai et al. 2024) — the simpler baseline of ``eagle``, trained by the same command.

Head k (k = 1 .. depth) reads f_{n-1}, the target's feature after the last token in its cache, and
guesses the token k places after the root x_n (the root itself is the target's own guess from
f_{n-1}). The heads never see the drafted tokens, so every node at depth d shares one distribution:
the tree is the best combinations of each depth's top tokens (Medusa's candidate tree), built by the
same cost-aware tree builder as the other LM drafters; ``feed`` costs nothing.
"""

from __future__ import annotations

import torch

from .base import register
from .feature_drafter import HeadDrafter, HeadDrafterConfig, require_features
from .head_net import MedusaHeads


class MedusaRunner:
    """The ``DraftRunner`` verbs over ``MedusaHeads``: all depths' logits once per step."""

    def __init__(self, model, head: MedusaHeads):
        self.model, self.head = model, head
        self.vocab = model.vocab_size
        self.max_length = model.max_length
        self.reset()

    def reset(self) -> None:
        self.received = 0  # features received
        self.last: torch.Tensor | None = None  # (d,) the latest one
        self.depth_logits = torch.empty(0)  # (depth, vocab) after the last sync

    def add_features(self, hidden: torch.Tensor) -> None:
        self.received += len(hidden)
        self.last = hidden[-1].detach().to(torch.float32)

    @torch.inference_mode()
    def sync(self, tokens: list[int]) -> torch.Tensor:
        """Logits of every depth from the newest feature; returns depth 1's, (vocab,)."""
        require_features(self.received, len(tokens) - 1)
        readout = self.head.readout
        self.depth_logits = readout.full(readout(self.head(self.last)), self.vocab)  # (depth, vocab)
        return self.depth_logits[0]

    def feed(self, nodes: list[int], tokens: list[int], depths: list[int], ancestors: list[list[int]]) -> torch.Tensor:
        """A node at depth d: its children are guessed by head d + 1, whatever the node's token."""
        return self.depth_logits[torch.tensor(depths)]

    def keep_path(self, path: list[int]) -> None:
        pass


@register
class MedusaDrafter(HeadDrafter):
    name = "medusa"
    kind = "medusa"
    Config = HeadDrafterConfig
    runner_class = MedusaRunner

    def runner_depth(self) -> int:
        return self.runner.head.config.depth

    def drafting_cost(self) -> float:
        return 0.0  # one small forward per step, none per level
