"""What the trained-head methods (``eagle``, ``medusa``) share: their options, loading the head, and
handing the target's features to their runner. The tree itself is ``draft_tree.py``'s, cost-aware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import ParadecError
from ..options import PATH
from ..tree import Draft
from .base import StepContext
from .draft_tree import DraftTreeConfig, TreeDrafter
from . import head_file


@dataclass(frozen=True)
class HeadDrafterConfig(DraftTreeConfig):
    """head: a head file written by ``paradec train-drafter`` ("" = the one shipped for the model).

    The tree options keep their meaning (``draft_tree.py``); the defaults differ: a cost-aware
    dynamic tree of up to 32 nodes, 8 deep, up to 4 children per node, no adaptive depth (the cost
    rule already stops where drafting stops paying)."""

    head: str = field(default="", metadata=PATH)
    max_draft: int = 8
    adaptive: bool = False
    min_confidence: float = 0.0
    tree_nodes: int = 32
    branch: int = 4
    branch_below: float = 1.0
    cost_aware: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.head, str):
            raise ValueError(f"head must be a path (a string), got {self.head!r}")


class HeadDrafter(TreeDrafter):
    """Base of ``eagle`` and ``medusa``: ``make_runner`` loads the head; features go to the runner."""

    kind: ClassVar[str]
    reads_features = True
    config: HeadDrafterConfig

    def make_runner(self):
        head, self.manifest = head_file.load(self.config.head, self.model, self.kind)
        return self.runner_class(self.model, head)

    def propose(self, ctx: StepContext) -> Draft:
        """Draft on one torch thread: a head's operations (a few rows through one layer) are too small to
        share, and on a busy 2-core machine a second thread that is not scheduled stalls every one of
        them (a 4-row 576 x 576 product: 0.06 ms on one thread, 1-24 ms on two under load). The native
        runtime reads the thread count per forward, so the target's forwards keep theirs."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return super().propose(ctx)
        finally:
            torch.set_num_threads(threads)

    def observe_features(self, features: torch.Tensor) -> None:
        self.runner.add_features(features)

    def drafting_cost(self) -> float:
        """δ: the bytes of weights a head forward reads over a target forward's (a proxy, not timed: both
        forwards stream their weights). Bytes, not parameters: a float32 head beside a 4-bit target
        reads several times more per parameter (SmolLM2's EAGLE head: 0.25 of a target forward, not the 0.045 its
        parameter count said, which let ``merge`` and ``auto`` ask it when it did not pay)."""
        head = self.runner.head
        ours = sum(t.numel() * t.element_size() for t in [*head.parameters(), head.readout.weight])
        return ours / target_bytes(self.model)


def target_bytes(model) -> int:
    """Bytes of weights one target forward reads (decoder layers + LM head), counted, not timed."""
    rt = model.runtime
    if rt.name == "native":
        w = rt.weights
        lin = [w.lm_head] + [x for layer in w.layers for x in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        return sum(x.nbytes for x in lin)
    hf = rt.model
    embed = hf.get_input_embeddings().weight
    tied = hf.get_output_embeddings().weight is embed
    return sum(p.numel() * p.element_size() for p in hf.parameters()) - (0 if tied else embed.numel() * embed.element_size())


def require_features(have: int, need: int) -> None:
    if have < need:
        raise ParadecError(f"the trained head needs the target's hidden states of {need} committed tokens but "
                           f"got {have}: decode with paradec's loop, which passes them (Drafter.reads_features)")
