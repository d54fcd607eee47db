"""``auto``: the fastest lossless method for this text on this machine, chosen step by step.

Which drafter pays depends on the text (n-gram lookup where the output copies its input, Token
Recycling on open-ended text, nothing where no drafter guesses well) and on the machine: a forward
over k rows costs c(k) one-row forwards, 1.16 at 2 rows but 5.8 at 16 for 4-bit SmolLM2 on an AVX2
CPU (``costs.py``), and more with a longer cache (the curve is read at the sequence's context length). ``auto`` holds one drafter of each candidate method, learns online how often each
node of their drafts is accepted, and every step sends the draft of best expected speedup::

    speedup(method, s) = tau(s) / (c(1 + rows(s) + aux) + d * rows(s))
    tau(s) = 1 + sum_{i<s} P_i      expected tokens of a step whose draft is cut to its first s nodes

P_i: how often node i of the method's drafts was on the accepted path. A draft cut to its first s
nodes accepts exactly its accepted nodes below s (parents come before children), so one observed
step informs every cut up to the one sent. rows(s): the nodes expected to be there (a short n-gram
match has fewer than s); aux: the method's unverified rows (Lookahead's window); d: what drafting
costs per node (``Drafter.drafting_cost``: 0 without a drafting model). Plain decoding scores 1: when
no method is expected to beat it, the step drafts nothing. Nothing here is timed while decoding, so
the same text on the same cached curve makes the same choices (and a seeded sample repeats).

Tokens a grammar forces (``StepContext.forced``: f of them, drafted ahead of any draft) are certain:
they count in every option's tau and rows, so a draft must beat sending the forced chain alone,
``(1 + f) / c(1 + f)``, rather than plain decoding.

Exploration is optimism (a discounted upper confidence bound): each P_i is scored one standard
error above its mean, so a method with few observations gets tried; counts fade by ``DECAY`` a step,
so a method that lost is tried again later, once its failures weigh little (sooner where rows are
cheap). A node never observed is guessed accepted ``GROWTH`` times as often as the node before it
(the first one ``PRIOR_ACCEPT`` of the time), and a draft grows to at most twice its observed length
plus one per step, so a probe stays cheap: drafts grow while growing pays and stop where it stops.

Lossless: auto only chooses which draft the target verifies. With sampling, whether a draft that
carries its own distribution (``q``: Jacobi's, a draft model's) is sent is decided before it is drawn,
never from its draws, so verification keeps the target distribution exactly.

Candidates draft as large as auto may cut to, without their own cost gate (auto is the gate). A
drafter that learns from any block (``learns_from_any_block``: Token Recycling's table) observes
every step; the others only their own drafts, and a draft proposed but not sent comes back to its
drafter cut to nothing (as the loop cuts a draft at the end of the context).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

import torch

from ..costs import CostCurve, cost_curve
from ..model import Model
from ..options import check_int
from ..tree import Block, Draft
from ..verify import Verdict
from .base import MAX_NODES, CompositeDrafter, Drafter, DrafterConfig, StepContext, make_drafter, register

# merge holds suffix, recycling and the shipped eagle head and sizes its tree by the cost curve; ngram is
# a cheap probe for long copies. lookahead and jacobi are candidates on request only: on the native
# runtime their unverified window rows cost more than they were found to bring (1.20 and ~1.0 tokens
# per forward in the default benchmark), so probing them by default cost more than it found.
DEFAULT_METHODS = ("merge", "ngram")
# the lossless methods; draft and layerskip need a model, eagle and medusa a trained head (merge holds
# the shipped eagle head where there is one)
CANDIDATES = DEFAULT_METHODS + ("lookahead", "jacobi", "suffix", "recycling", "eagle", "medusa", "draft", "layerskip")
PRIOR_ACCEPT = 0.5  # the guess for a method's first node, before any observation
GROWTH = 0.8  # a node never observed: guessed accepted this times as often as the node before it
PRIOR_WEIGHT = 1.0  # the guesses weigh as much as one observed step
CONFIDENCE = 1.0  # the optimistic estimate: this many standard errors above the mean
DECAY = 0.98  # per step: counts fade with a half-life of ~35 steps, so auto follows the text
CARRY = 8.0  # a drafter's next generation starts from its estimates weighed as this many steps at most

# How the candidates draft inside auto (over their defaults): deep, no cost gate (auto is the gate),
# and as many nodes as auto may cut to (the option named in SIZE_OPTION gets auto's max_nodes).
SUB_OPTIONS = {
    "ngram": {"max_depth": 10, "min_accept": 0},
    "recycling": {"max_depth": 5, "lookup_depth": 8, "min_accept": 0},
    "lookahead": {"min_accept": 0},
    "jacobi": {"min_accept": 0},
}
SIZE_OPTION = {"ngram": "max_nodes", "recycling": "tree_size", "merge": "max_nodes", "suffix": "max_nodes",
               "eagle": "tree_nodes", "medusa": "tree_nodes"}


@dataclass(frozen=True)
class AutoConfig(DrafterConfig):
    """methods: the candidates, among merge, ngram, lookahead, jacobi, suffix, recycling, eagle, medusa,
    draft, layerskip (None: merge and ngram, plus draft when a draft model is given; merge joins suffix,
    recycling and the shipped eagle head's branches in one tree, ``merge.py``); max_nodes: the largest draft sent (its cost
    curve is measured up to 16 rows); costs: the cost curve by hand, ``{k: c(k)/c(1)}`` (None: measured
    once per machine, model, dtype, runtime, quantization and thread count, and cached: ``costs.py``);
    options: the candidates' options by method, over auto's own (e.g. ``{"ngram": {"max_n": 3}}``);
    draft: the draft model of the ``draft`` candidate."""

    methods: tuple[str, ...] | None = None
    max_nodes: int = 16
    costs: dict | None = None
    options: dict | None = None
    draft: str | Model | None = None

    def __post_init__(self) -> None:
        check_int(self, "max_nodes", 1, MAX_NODES)
        if self.methods is not None:
            if not isinstance(self.methods, (list, tuple)) or not self.methods:
                raise ValueError(f"methods must be a non-empty list of method names, got {self.methods!r}")
            object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
            unknown = [m for m in self.methods if m not in CANDIDATES]
            if unknown:
                raise ValueError(f"methods: auto chooses among {', '.join(CANDIDATES)}; not {', '.join(map(str, unknown))}")
        if self.costs is not None:
            CostCurve.of(self.costs)  # raises a ValueError that says what a curve looks like
        if self.options is not None:
            if not isinstance(self.options, dict) or not all(m in CANDIDATES and isinstance(v, dict)
                                                             for m, v in self.options.items()):
                raise ValueError(f"options must map candidate methods to their options, e.g. "
                                 f"{{\"ngram\": {{\"max_n\": 3}}}}; got {self.options!r}")
            if any("draft" in v for v in self.options.values()):
                raise ValueError("give the draft model as auto's own 'draft' option (--draft MODEL)")
        if self.draft is not None and not isinstance(self.draft, Model) and not (isinstance(self.draft, str) and self.draft):
            raise ValueError(f"draft must be a model spec or a loaded Model, got {self.draft!r}")


class Arm:
    """One candidate and what auto learnt of its drafts; every count fades by ``DECAY`` a step.

    seen[i]: steps that sent its draft cut to more than i nodes (node i would have gone, had it been
    there); sent[i]: of those, the steps where node i was there; hit[i]: where it was accepted.
    """

    def __init__(self, drafter: Drafter, max_nodes: int):
        self.drafter = drafter
        self.seen, self.sent, self.hit = [0.0] * max_nodes, [0.0] * max_nodes, [0.0] * max_nodes
        self.aux = 0  # unverified rows its last proposal came with
        self.node_cost = 0.0  # drafting cost per node, in one-row target forwards (set by ``begin``)
        self.at = 0  # the step the counts have faded to

    def fade(self, step: int) -> None:
        if step > self.at:
            f = DECAY ** (step - self.at)
            for counts in (self.seen, self.sent, self.hit):
                counts[:] = [x * f for x in counts]
            self.at = step

    def carry(self, weight: float) -> None:
        """Keep the estimates but weigh them as ``weight`` steps at most (a new text begins)."""
        f = min(1.0, weight / self.seen[0]) if self.seen[0] > 0 else 1.0
        for counts in (self.seen, self.sent, self.hit):
            counts[:] = [x * f for x in counts]

    def estimates(self) -> tuple[list[float], list[float]]:
        """Per node i, for a draft cut to more than i nodes: P(node i accepted), optimistic (mean plus
        ``CONFIDENCE`` standard errors, at most P(there)), and P(node i there). An unseen node's prior:
        accepted ``GROWTH`` times as often as the node before it, and there."""
        p, r, accept, present = PRIOR_ACCEPT / GROWTH, 1.0, [], []
        for seen, sent, hit in zip(self.seen, self.sent, self.hit):
            weight = seen + PRIOR_WEIGHT
            p = (hit + PRIOR_WEIGHT * GROWTH * p) / weight
            r = (sent + PRIOR_WEIGHT * r) / weight
            accept.append(min(r, p + CONFIDENCE * (p * (1 - p) / weight) ** 0.5))
            present.append(r)
        return accept, present

    def plan(self, curve: Callable[[float], float], forced: int = 0) -> tuple[float, int]:
        """(optimistic speedup, nodes to cut its draft to) at the best cut; ties go to the smaller.
        Cuts reach at most twice the nodes observed at least once (faded), plus one. ``forced``: certain
        tokens drafted ahead of the draft (their rows cost, they are accepted)."""
        accept, present = self.estimates()
        known = next((i for i, seen in enumerate(self.seen) if seen < 1.0), len(self.seen))
        if self.drafter.sizes_itself:  # it cuts its own draft at the cost curve: no growth limit on top
            known = len(self.seen)
        tau, nodes = 1.0 + forced, 0.0
        best = (0.0, 1)
        for s, (p, r) in enumerate(zip(accept[: 2 * known + 1], present), start=1):
            tau, nodes = tau + p, nodes + r
            gain = tau / (curve(1 + forced + nodes + self.aux) + self.node_cost * nodes)
            if gain > best[0] * (1 + 1e-9):
                best = (gain, s)
        return best

    def pays(self, draft: Draft, curve: Callable[[float], float], forced: int = 0) -> bool:
        """Whether this proposal (its nodes there, its aux rows known) is expected to beat plain (with
        ``forced`` certain tokens ahead of it: the forced chain alone), optimistically as in ``plan``."""
        accept, present = self.estimates()
        n = len(draft)
        tau = 1.0 + forced + sum(p / r for p, r in zip(accept[:n], present[:n]) if r > 0)
        return tau / (curve(1 + forced + n + self.aux) + self.node_cost * n) > base_gain(curve, forced)

    def record(self, cap: int, block: Block, verdict: Verdict) -> None:
        n, hits = len(block.draft), set(verdict.accepted)
        for i in range(cap):
            self.seen[i] += 1
            self.sent[i] += i < n
            self.hit[i] += i in hits


def base_gain(curve: Callable[[float], float], forced: int) -> float:
    """The speedup of a step without a draft: 1 (plain), or (1 + f) / c(1 + f) with f forced tokens."""
    return (1.0 + forced) / curve(1 + forced) if forced else 1.0


@register
class AutoDrafter(CompositeDrafter):
    name = "auto"
    Config = AutoConfig
    config: AutoConfig

    def __init__(self, model, config: AutoConfig | None = None, candidates: list[Drafter] | None = None):
        """``candidates``: drafters to choose among instead of building ``config.methods`` (scripted
        ones, in tests)."""
        super().__init__(model, config or AutoConfig())
        c = self.config
        if candidates is None:
            methods = c.methods or DEFAULT_METHODS + (("draft",) if c.draft is not None else ())
            candidates = [make_drafter(m, model, **self.options(m)) for m in methods]
        self.arms = [Arm(drafter, c.max_nodes) for drafter in candidates]
        self.reads_features = any(arm.drafter.reads_features for arm in self.arms)  # a head among them
        self.curve = CostCurve.of(c.costs) if c.costs is not None else None  # None: measured on first use
        self.step = 0
        self.chosen: Arm | None = None  # whose draft the last propose returned
        self.asked: list[Arm] = []  # candidates that proposed this step
        self.cap = 0
        self.used = "plain"

    def options(self, method: str) -> dict:
        size = {SIZE_OPTION[method]: self.config.max_nodes} if method in SIZE_OPTION else {}
        options = {**SUB_OPTIONS.get(method, {}), **size, **(self.config.options or {}).get(method, {})}
        if method == "draft":
            options["draft"] = self.config.draft if self.config.draft is not None else ""
        if method == "merge" and self.config.costs is not None:
            options.setdefault("costs", self.config.costs)  # one curve for auto and the merge it sends
        return options

    def begin(self, prompt_ids: list[int], params) -> None:
        if self.curve is None:
            self.curve = cost_curve(self.model)
        for arm in self.arms:
            arm.drafter.begin(prompt_ids, params)
            arm.node_cost = arm.drafter.drafting_cost()
            arm.carry(CARRY)
        self.chosen, self.asked, self.used = None, [], "plain"

    def inner(self) -> list[Drafter]:
        return [arm.drafter for arm in self.arms]

    def propose(self, ctx: StepContext) -> Draft:
        self.step += 1
        self.chosen, self.asked = None, []
        curve = functools.partial(self.curve, context=len(ctx.tokens))  # rows cost more with a longer cache
        plans = []
        for arm in self.arms:
            arm.fade(self.step)
            plans.append((*arm.plan(curve, ctx.forced), arm))
        base = base_gain(curve, ctx.forced)
        for gain, cap, arm in sorted(plans, key=lambda p: -p[0]):  # stable: ties keep the methods' order
            cap = min(cap, ctx.max_nodes)
            if gain <= base or cap < 1:
                break  # nobody is expected to beat plain decoding
            draft = arm.drafter.propose(dataclasses.replace(ctx, max_nodes=cap)).truncated(cap)
            self.asked.append(arm)
            arm.node_cost = arm.drafter.drafting_cost()  # merge: the costly members it asked this step
            if not len(draft):
                continue  # nothing to draft here (no n-gram match): the next candidate
            aux = arm.drafter.aux_rows()
            arm.aux = len(aux) if aux is not None else 0
            # A sampled draft (q) is sent whatever it drew; a chosen one only if it still pays as it came
            # out (a short match, a window of aux rows): choosing a sampled draft by its draws would bias it.
            if draft.q is not None or arm.pays(draft, curve, ctx.forced):
                self.chosen, self.cap = arm, cap
                return draft
        return Draft()

    def aux_rows(self):
        return self.chosen.drafter.aux_rows() if self.chosen is not None else None

    def observe(self, block: Block, logits: torch.Tensor, verdict: Verdict) -> None:
        unsent = None
        for arm in self.arms:
            if arm is self.chosen or arm.drafter.learns_from_any_block:
                arm.drafter.observe(block, logits, verdict)
            elif arm in self.asked:  # it proposed, another draft went: its draft was cut to nothing
                unsent = unsent or (Block(block.root, Draft()), logits[:1], Verdict([], verdict.tokens[:1]))
                arm.drafter.observe(*unsent)
        self.used = "plain"
        if self.chosen is not None and len(block.draft):
            self.chosen.record(self.cap, block, verdict)
            self.used = self.chosen.drafter.name

    def step_method(self) -> str:
        return self.used
