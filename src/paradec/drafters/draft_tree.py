"""Drafting with a small LM: chains or dynamic trees, with adaptive length. Shared by ``draft`` and ``layerskip``.

Each step, level by level (one drafting-LM forward per level, as in EAGLE-2):

1. ``score`` of a node = product of the draft probabilities along its path: the draft's own guess
   that the whole path is accepted (DySpec / SpecDec++ use the same quantity).
2. A node is expanded only while ``score × max q`` (the guess for its best child) reaches
   ``min_confidence``; children of the root are always drafted (their logits cost nothing extra).
3. Where the draft is unsure (top probability below ``branch_below``) a node gets up to ``branch``
   children instead of one, while the tree's node budget ``tree_nodes`` lasts; richer paths first.
4. Greedy: the children are the draft's top-k tokens. Sampling: they are drawn *without
   replacement* from q, and every child records q in ``Draft.q``; the core's recursive rejection
   sampling (``verify.py``) then keeps the target distribution exactly. How many children a node
   gets is decided before they are drawn, never from their own values (that would bias them).

Adaptive length (the schedule transformers uses for assisted generation): the depth limit grows by
2 after a step whose whole draft was accepted and shrinks by 1 otherwise, within [1, max_draft].

Cost-aware trees (``cost_aware``, the trained heads' default): on top of the rules above, a child is
drafted only while its planned value (path score × the draft's j-th best probability, known before
it is drawn) raises the expected tokens per cost of the step, with the cost of k rows taken from the
runtime's measured curve at the sequence's context length and each drafting forward's own cost
(``costs.StepCost``). So the tree grows where rows are cheap and stays a short chain where they are not.

Worked example (greedy, branch=2, branch_below=0.7): root q = {a: .5, c: .3, ...} is unsure
→ children a, c; then q(·|a) = {b: .9} is sure → one child b. Tree ``a─b, c``: parents [-1, 0, -1]
in creation order [a, c, b] → tokens [a, c, b], parents [-1, -1, 0].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..options import check_bool, check_int, check_number
from ..sampling import SamplingParams, target_probs
from ..tree import Block, Draft, depths
from .base import MAX_DEPTH, MAX_NODES, Drafter, DrafterConfig, StepContext
from ..costs import CostCurve, StepCost
from .draft_runner import DraftRunner

if TYPE_CHECKING:
    from ..model import Model

# Measured on SmolLM2-135M / Qwen2.5-Coder (see docs/draft_models.md).
DEFAULT_MAX_DRAFT = 8
DEFAULT_MIN_CONFIDENCE = 0.3
MAX_BRANCH = 16  # children of one unsure node
MAX_ROWS = MAX_NODES + 1  # row_costs: root + the largest tree


@dataclass(frozen=True)
class DraftTreeConfig(DrafterConfig):
    """Options shared by the LM drafters.

    max_draft:      deepest draft (the cap of the adaptive depth), at most 32
    adaptive:       grow the depth limit by 2 after full acceptance, shrink by 1 otherwise
    min_confidence: stop a path once the draft's probability for it drops below this (0 = never)
    tree_nodes:     node budget of a dynamic tree, at most 128; 0 drafts a chain
    branch:         children at a position where the draft is unsure (trees only), at most 16
    branch_below:   the draft is unsure where its top probability is below this
    cost_aware:     draft a node only while it is expected to pay at the runtime's cost of rows
    row_costs:      that cost, c(k)/c(1) for k = 1, 2, ... (None: ``paradec.costs``' measured, cached curve,
                    read at the sequence's context length)
    """

    max_draft: int = DEFAULT_MAX_DRAFT
    adaptive: bool = True
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    tree_nodes: int = 0
    branch: int = 3
    branch_below: float = 0.7
    cost_aware: bool = False
    row_costs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_int(self, "max_draft", 1, MAX_DEPTH)
        check_int(self, "tree_nodes", 0, MAX_NODES)
        check_int(self, "branch", 1, MAX_BRANCH)
        check_number(self, "min_confidence", 0, 1)
        check_number(self, "branch_below", 0, 1)
        check_bool(self, "adaptive")
        check_bool(self, "cost_aware")
        if self.row_costs is not None:
            costs = self.row_costs
            if not isinstance(costs, (list, tuple)) or not 1 <= len(costs) <= MAX_ROWS:
                raise ValueError(f"row_costs must be a list of 1 to {MAX_ROWS} numbers, got {costs!r}")
            object.__setattr__(self, "row_costs", tuple(costs))
            CostCurve.of_rows(self.row_costs)  # validates the numbers


class TreeDrafter(Drafter):
    """Base of the LM drafters: subclasses give ``make_runner()``; this class builds the drafts."""

    config: DraftTreeConfig

    def __init__(self, model, config: DraftTreeConfig):
        super().__init__(model, config)
        self.vocab = model.vocab_size  # width of the target's logits
        self.runner = self.make_runner()
        self.max_depth = min(config.max_draft, self.runner_depth())
        self.depth = self.max_depth
        self.cost: StepCost | None = None
        self.values: list[float] = []
        self._delta: float | None = None
        if config.cost_aware:
            from ..costs import cost_curve

            curve = CostCurve.of_rows(config.row_costs) if config.row_costs else cost_curve(model)
            self.cost = StepCost(curve, self.drafting_cost())

    def make_runner(self) -> DraftRunner:
        """The drafting side: ``sync``, ``feed``, ``keep_path``, ``reset``, ``max_length`` as in ``DraftRunner``."""
        raise NotImplementedError

    def runner_depth(self) -> int:
        """The deepest draft the runner can make (Medusa: its number of heads)."""
        return MAX_DEPTH

    def drafting_model(self) -> tuple[Model, int | None]:
        """The model the runner runs and how many of its layers (None: all), for its cost curve."""
        raise NotImplementedError

    def drafting_cost(self) -> float:
        """One drafting forward per level, so about one per node of a chain: the drafting LM's one-row
        forward over the target's, from both cost curves (measured once per machine, cached).
        The cost-aware budget's δ too."""
        if self._delta is None:  # once per drafter: auto asks every step, and a curve's look-up hashes the machine
            from ..costs import cost_curve

            self._delta = cost_curve(*self.drafting_model()).seconds / cost_curve(self.model).seconds
        return self._delta

    def begin(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self.runner.reset()
        self.depth = self.max_depth

    def propose(self, ctx: StepContext) -> Draft:
        cfg = self.config
        depth_limit = min(self.depth, ctx.max_nodes)
        budget = min(cfg.tree_nodes or depth_limit, ctx.max_nodes)
        if depth_limit < 1 or len(ctx.tokens) + budget > self.runner.max_length:
            return Draft()  # no room left in the target's or the drafting LM's context window
        branch = cfg.branch if cfg.tree_nodes else 1
        cost = self.cost.at(len(ctx.tokens)) if self.cost is not None else None
        root_logits = self.runner.sync(ctx.tokens)  # (vocab,)

        tokens: list[int] = []
        parents: list[int] = []
        qs: list[torch.Tensor | None] = []
        score: list[float] = []
        frontier = [(-1, 1.0, root_logits)]  # (node, path score, logits after it)
        forwards, total = 1, 0.0  # drafting forwards so far (the sync), summed node scores
        for level in range(1, depth_limit + 1):
            born: list[int] = []
            for node, s, logits in sorted(frontier, key=lambda f: -f[1]):
                q = self._dist(logits, ctx.params)  # (vocab,) float64
                top = float(q.max())
                if node >= 0 and s * top < cfg.min_confidence:
                    continue
                if len(tokens) >= budget:
                    break
                k = min(branch if top < cfg.branch_below else 1, budget - len(tokens))
                if cost is not None:
                    k = self._paying(cost, q, s, k, len(tokens), total, forwards)
                for x in self._pick(q, k, ctx):
                    tokens.append(x)
                    parents.append(node)
                    qs.append(None if ctx.params.greedy else q)
                    score.append(s * float(q[x]))
                    total += score[-1]
                    born.append(len(tokens) - 1)
            # feed the new nodes that may still be expanded, for their children's distributions
            grow = [i for i in born if score[i] >= cfg.min_confidence] if cfg.min_confidence else born
            if cost is not None:  # a child is worth at most its parent's score; the feed costs a forward
                grow = [i for i in grow if cost.pays(score[i], len(tokens), total, forwards, new_forward=True)]
            if level == depth_limit or len(tokens) >= budget or not grow:
                break
            forwards += 1
            d = depths(parents)
            logits = self.runner.feed(grow, [tokens[i] for i in grow], [d[i] for i in grow], [_ancestors(parents, i) for i in grow])
            frontier = [(i, score[i], logits[j]) for j, i in enumerate(grow)]
        self.values = score  # each node's path probability under the draft (``merge`` values nodes by it)
        return Draft(tokens=tokens, parents=parents, q=None if ctx.params.greedy else qs)

    def observe(self, block: Block, logits: torch.Tensor, verdict) -> None:
        draft = block.draft
        self.runner.keep_path(verdict.accepted)
        if self.config.adaptive and len(draft):
            full = len(verdict.accepted) == max(depths(draft.parents))
            self.depth = min(self.depth + 2, self.max_depth) if full else max(self.depth - 1, 1)

    @staticmethod
    def _paying(cost: StepCost, q: torch.Tensor, s: float, k: int, nodes: int, total: float, forwards: int) -> int:
        """How many of up to ``k`` children pay, judged by their planned values s × q_(1), s × q_(2), ...
        (the j-th best probability: known before any child is drawn, so sampling stays exact)."""
        n = 0
        for p in torch.topk(q, k).values.tolist():
            if not cost.pays(s * p, nodes + n, total, forwards):
                break
            total += s * p
            n += 1
        return n

    def _dist(self, logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        return draft_dist(logits, self.vocab, params)

    @staticmethod
    def _pick(q: torch.Tensor, k: int, ctx: StepContext) -> list[int]:
        """k distinct tokens: the top-k (greedy) or k draws without replacement from q (sampling)."""
        if ctx.params.greedy:
            return torch.topk(q, k).indices.tolist()
        q = q.clone()
        out: list[int] = []
        for _ in range(k):
            if q.sum() <= 0:  # q's support is smaller than k
                break
            x = int(torch.multinomial(q, 1, generator=ctx.generator))
            out.append(x)
            q[x] = 0.0
        return out


def draft_dist(logits: torch.Tensor, vocab: int, params: SamplingParams) -> torch.Tensor:
    """The draft distribution over a vocabulary of ``vocab`` tokens (the target's), (vocab,) float64: q
    for sampling (the target's own logits processing), softmax for greedy."""
    logits = logits.to(torch.float64)
    if logits.shape[-1] > vocab:  # padded LM head: rows past the vocabulary are no tokens
        logits = logits[:vocab]
    elif logits.shape[-1] < vocab:
        logits = torch.cat([logits, logits.new_full((vocab - logits.shape[-1],), float("-inf"))])
    if params.greedy:
        return torch.softmax(logits, -1)
    return target_probs(logits, params)


def _ancestors(parents: list[int], node: int) -> list[int]:
    out = []
    p = parents[node]
    while p >= 0:
        out.append(p)
        p = parents[p]
    return out
