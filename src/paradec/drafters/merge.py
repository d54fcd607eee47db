"""Merged trees: one verification block holds the branches of several drafters, the rows going where
acceptance is expected (``merge``; ``auto`` merges with the same function).

Each member drafts as usual; every node gets a *value*, its expected chance of acceptance: the
member's own estimate (a path frequency for ``suffix``, a path probability for the heads; ``0.5 ** depth``
for a member that gives none) times the member's *calibration*, the ratio of its nodes accepted to the
values it claimed, learnt online and fading toward 1 (so a member whose nodes stopped paying, and is
therefore sent nothing to learn from, is tried again later). ``merge`` joins the drafts on shared prefixes and then grows the
tree best first (a node only after its parent), while a node's value pays for its row at the
machine's cost of rows (``costs.StepCost``, read at the context length)::

    suffix:    a ─ b ─ c          (values .8 .7 .6)
    recycling: a ─ d,  e          (.5 .2,  .3)          → a ─ b ─ c     (a: max(.8, .5))
                                                            └ d         cut where d stops paying
                                                          e

Sampling stays exact (``verify.py``'s recursive rejection sampling over siblings): a draft that
carries its distribution (``q``, a head's sampled tree) is taken whole and first, so its siblings keep
their draw order; every other node is a deterministic proposal, placed after the sampled siblings at
its parent and chosen from the text and the drafts so far, never from a later draw. At most one member
drafts with ``q`` per step (a second one's draft is dropped).

A member whose drafting costs forwards of its own (``drafting_cost`` > 0: the heads) is asked only while
it paid lately: while the tokens its nodes alone brought per unit of its cost (drafting forwards and
rows) beat the step's tokens per unit of cost; otherwise every ``PROBE_EVERY``-th step.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import torch

from ..costs import StepCost, cost_curve
from ..options import check_int
from ..tree import Block, Draft, depths
from ..verify import Verdict
from .base import MAX_NODES, CompositeDrafter, Drafter, DrafterConfig, StepContext, make_drafter, register

MEMBERS = ("suffix", "ngram", "recycling", "eagle", "medusa")
DECAY = 0.95  # per step: calibration and payback counts fade with a half-life of ~14 steps
PRIOR = 1.0  # the calibration's counts fade toward this (accepted = claimed: the member's values as they are)
PROBE_EVERY = 8  # a costly member that stopped paying is still asked this often
# The members' options inside a merge (over their defaults): no cost gate of their own (the merge's
# cost rule is the gate), recycling without its n-gram branches (suffix drafts those), deeper trees.
MEMBER_OPTIONS = {
    "suffix": {"max_nodes": 32},
    "ngram": {"min_accept": 0, "max_depth": 8, "max_nodes": 16},
    "recycling": {"min_accept": 0, "tree_size": 12, "max_depth": 4, "lookup_branches": 0},
}


@dataclass
class Proposal:
    """A member's draft and per node its value (expected chance of acceptance)."""

    draft: Draft
    values: list[float]
    member: int


def merge(proposals: list[Proposal], cost: StepCost, max_nodes: int) -> tuple[Draft, list[list[tuple[int, int]]]]:
    """One tree from the proposals; returns it and, per node, the (member, node) pairs it stands for.

    The first proposal with ``q`` goes in whole, first; the deterministic nodes then grow the tree best
    first while ``cost.pays``. Example: chains [a, b] (.9, .8) and [a, c] (.6, .3), rows costing
    nothing → tree a ─ b, a ─ c: tokens [a, b, c], parents [-1, 0, 0].
    """
    tokens: list[int] = []
    parents: list[int] = []
    qs: list[torch.Tensor | None] = []
    sources: list[list[tuple[int, int]]] = []
    child: dict[tuple[int, int], int] = {}  # (parent node, token) → node
    total = 0.0
    sampled = next((p for p in proposals if p.draft.q is not None), None)
    if sampled is not None:
        d = sampled.draft.truncated(max_nodes)
        for i, (t, par) in enumerate(zip(d.tokens, d.parents)):
            child[(par, t)] = len(tokens)
            tokens.append(t)
            parents.append(par)
            qs.append(d.q[i])
            sources.append([(sampled.member, i)])
            total += sampled.values[i] if i < len(sampled.values) else 0.0
    # the deterministic candidates as a trie of token paths: path → [value, [(member, node)], children paths]
    cand: dict[tuple[int, ...], list] = {(): [1.0, [], []]}
    for p in proposals:
        if p is sampled or p.draft.q is not None:
            continue
        paths: list[tuple[int, ...]] = []
        for i, (t, par) in enumerate(zip(p.draft.tokens, p.draft.parents)):
            path = (paths[par] if par >= 0 else ()) + (t,)
            paths.append(path)
            if path not in cand:
                cand[path] = [0.0, [], []]
                cand[path[:-1]][2].append(path)
            cand[path][0] = max(cand[path][0], p.values[i])
            cand[path][1].append((p.member, i))
    node_of: dict[tuple[int, ...], int] = {(): -1}
    heap: list[tuple[float, int, tuple[int, ...]]] = []
    order = 0

    def offer(path: tuple[int, ...]) -> None:
        nonlocal order
        for kid in cand[path][2]:
            heapq.heappush(heap, (-cand[kid][0], order, kid))
            order += 1

    offer(())
    while heap and len(tokens) < max_nodes:
        neg, _, path = heapq.heappop(heap)
        parent = node_of[path[:-1]]
        node = child.get((parent, path[-1]))
        if node is None:  # a new row: only while it pays
            if not cost.pays(-neg, len(tokens), total, 0):
                continue
            node = len(tokens)
            child[(parent, path[-1])] = node
            tokens.append(path[-1])
            parents.append(parent)
            qs.append(None)
            sources.append([])
            total += -neg
        sources[node] += cand[path][1]
        node_of[path] = node
        offer(path)
    return Draft(tokens, parents, qs if sampled is not None else None), sources


@dataclass(frozen=True)
class MergeConfig(DrafterConfig):
    """members: the drafters merged, among suffix, ngram, recycling, eagle, medusa (None: suffix and
    recycling, plus eagle where a head ships for the model); max_nodes: the largest merged tree;
    costs: the cost curve by hand, ``{k: c(k)/c(1)}`` (None: measured and cached, ``costs.py``);
    options: the members' options by method."""

    members: tuple[str, ...] | None = None
    max_nodes: int = 32
    costs: dict | None = None
    options: dict | None = None

    def __post_init__(self) -> None:
        from ..costs import CostCurve

        check_int(self, "max_nodes", 1, MAX_NODES)
        if self.members is not None:
            if not isinstance(self.members, (list, tuple)) or not self.members or any(m not in MEMBERS for m in self.members):
                raise ValueError(f"members must be a non-empty list among {', '.join(MEMBERS)}, got {self.members!r}")
            object.__setattr__(self, "members", tuple(dict.fromkeys(self.members)))
        if self.costs is not None:
            CostCurve.of(self.costs)
        if self.options is not None and (not isinstance(self.options, dict) or not all(
                m in MEMBERS and isinstance(v, dict) for m, v in self.options.items())):
            raise ValueError(f"options must map members to their options, got {self.options!r}")


def default_members(model) -> tuple[str, ...]:
    from .head_file import SHIPPED

    return ("suffix", "recycling") + (("eagle",) if (SHIPPED / f"{model.name}.eagle.safetensors").is_file() else ())


class Member:
    """A drafter inside a merge: its calibration and, if it costs forwards, whether it pays lately."""

    def __init__(self, drafter: Drafter):
        self.drafter = drafter
        self.claimed, self.accepted = PRIOR, PRIOR  # faded sums: own values of its sent nodes, of those accepted
        self.node_cost = 0.0  # one drafting forward, in one-row target forwards
        self.gain, self.spent = 1.0, 0.0  # faded sums over asked steps: tokens only its nodes brought, their cost
        self.skipped = 0
        self.asked = False
        self.levels = 0  # drafting forwards of its last draft (its depth)
        self.own: list[float] = []  # its own values of its last draft's nodes

    @property
    def calibration(self) -> float:
        return min(4.0, max(0.05, self.accepted / self.claimed))

    def propose(self, ctx: StepContext, index: int) -> Proposal | None:
        draft = self.drafter.propose(ctx).truncated(ctx.max_nodes)
        if not len(draft):
            self.own, self.levels = [], 0
            return None
        own = getattr(self.drafter, "values", None)
        d = depths(draft.parents)
        self.own = list(own[: len(draft)]) if isinstance(own, list) and len(own) >= len(draft) else [0.5 ** x for x in d]
        self.levels = max(d)
        return Proposal(draft, [min(1.0, v * self.calibration) for v in self.own], index)


@register
class MergeDrafter(CompositeDrafter):
    name = "merge"
    Config = MergeConfig
    config: MergeConfig
    sizes_itself = True

    def __init__(self, model, config: MergeConfig | None = None, members: list[Drafter] | None = None):
        super().__init__(model, config or MergeConfig())
        c = self.config
        if members is None:
            members = [make_drafter(m, model, **{**MEMBER_OPTIONS.get(m, {}), **(c.options or {}).get(m, {})})
                       for m in (c.members or default_members(model))]
        self.members = [Member(d) for d in members]
        self.reads_features = any(m.drafter.reads_features for m in self.members)
        self.curve = None
        self.sources: list[list[tuple[int, int]]] = []
        self.tau, self.step_cost = 1.0, 1.0  # faded tokens per step and cost per step, for the payback rule
        self.context: int | None = None  # the last proposal's context length

    def begin(self, prompt_ids, params) -> None:
        from ..costs import CostCurve

        if self.curve is None:
            self.curve = CostCurve.of(self.config.costs) if self.config.costs is not None else cost_curve(self.model)
        for m in self.members:
            m.drafter.begin(prompt_ids, params)
            m.node_cost = m.drafter.drafting_cost()

    def inner(self) -> list[Drafter]:
        return [m.drafter for m in self.members]

    def drafting_cost(self) -> float:
        """Per node, as ``auto`` counts it: the asked costly members' forwards."""
        return sum(m.node_cost for m in self.members if m.asked)

    def _ask(self, m: Member) -> bool:
        """A free member always; a costly one while its own tokens per unit of its cost beat the step's."""
        if m.node_cost == 0 or m.gain / max(m.spent, 1e-9) >= self.tau / self.step_cost or m.skipped >= PROBE_EVERY - 1:
            m.skipped = 0
            return True
        m.skipped += 1
        return False

    def propose(self, ctx: StepContext) -> Draft:
        cap = min(self.config.max_nodes, ctx.max_nodes)
        proposals = []
        for i, m in enumerate(self.members):
            m.asked = cap > 0 and self._ask(m)
            if m.asked and (p := m.propose(replace(ctx, max_nodes=cap), i)) is not None:
                proposals.append(p)
        self.context = len(ctx.tokens)  # observe prices this block's rows at the same context
        draft, self.sources = merge(proposals, StepCost(self.curve, context=len(ctx.tokens)), cap)
        return draft

    def observe(self, block: Block, logits: torch.Tensor, verdict: Verdict) -> None:
        accepted, sent = set(verdict.accepted), len(block.draft)
        empty = (Block(block.root, Draft()), logits[:1], Verdict([], verdict.tokens[:1]))
        for m in self.members:
            if m.drafter.learns_from_any_block:
                m.drafter.observe(block, logits, verdict)
            elif m.asked:
                m.drafter.observe(*empty)  # its own draft went only in part, merged: as if unsent
            # calibration fades toward its prior (1: the member's own values): a member whose nodes
            # stopped paying is sent nothing and learns nothing, so a pure fade would keep it silent
            m.claimed, m.accepted = (DECAY * x + (1 - DECAY) * PRIOR for x in (m.claimed, m.accepted))
            m.gain, m.spent = m.gain * DECAY, m.spent * DECAY
        row = (self.curve(1 + sent, self.context) - 1) / max(1, sent)  # what a row of this block cost
        for node, src in enumerate(self.sources[:sent]):
            owners = {mi for mi, _ in src}
            for mi, ni in src:
                m = self.members[mi]
                m.claimed += m.own[ni]
                m.accepted += node in accepted
            if len(owners) == 1:  # a row only one member asked for: its cost, and its token if accepted
                m = self.members[next(iter(owners))]
                m.spent += row
                m.gain += node in accepted
        for m in self.members:
            if m.asked:
                m.spent += m.node_cost * m.levels
        self.tau = DECAY * self.tau + (1 - DECAY) * len(verdict.tokens)
        self.step_cost = DECAY * self.step_cost + (1 - DECAY) * (1 + row * sent + sum(
            m.node_cost * m.levels for m in self.members if m.asked))
