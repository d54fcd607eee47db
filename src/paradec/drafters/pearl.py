"""``pearl``: the draft model drafts the next segment while the target verifies this one (PEARL, Liu et al. 2024).

A separate draft model is accurate but, on a CPU, not cheap: with ``draft`` the target waits while the
draft drafts, then the draft waits while the target verifies. Here the draft runs on a thread of its
own with its own cores (``placement.py``), and the loop sees one drafter:

- post-verify: when ``propose`` hands the loop a block, the draft goes on drafting past it, as if all of it
  will be accepted; its first token past the block is its guess of the step's bonus token. If the target
  accepts the whole block and its bonus equals the guess, the rest is already the next block.
- pre-verify: when verification rejected a token (or the guess), the draft restarts from the committed
  tokens, and this step sends no draft: the target reads the root alone, which checks the draft's first
  token, while the draft drafts from it.
- the block's length adapts (+2 after a step that accepted all of it, -1 otherwise, within [1,
  max_draft]) and is cut where one more token stops paying at the measured costs of both models running
  side by side (``cost_aware``, ``BlockCost``); the draft stops early where it guesses its path will not
  be accepted.

What is drafted never depends on timing: the loop waits for a token it decided to send, so the same text
gives the same blocks (and a seeded sample repeats). With one core, or ``overlap: false``, the draft
drafts on the loop's thread when asked, as ``draft`` does (chains only; no pre-verify, nothing drafted ahead).

Lossless as every method: greedy output equals plain greedy output; sampling is exact, each drafted
token carrying the q it was drawn from. A draft model with another tokenizer drafts through text
(``vocab_bridge.py``): greedy proposals, verified as certain ones. ``drafter: "layerskip"`` drafts with
the target's own first layers instead of a second model.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from dataclasses import dataclass, field

import torch

from ..errors import ParadecError
from ..model import Model
from ..options import PATH, check_bool, check_int, check_number
from ..sampling import SamplingParams
from ..stats import Overlap
from ..tree import Block, Draft
from .base import MAX_DEPTH, Drafter, DrafterConfig, StepContext, register
from ..costs import CostCurve, cost_curve
from .draft_chain import DraftChain, use_cores
from .draft_model import load_draft, same_vocab
from .draft_runner import DraftRunner
from .draft_tree import DEFAULT_MAX_DRAFT, DEFAULT_MIN_CONFIDENCE
from .layerskip import DEFAULT_FRACTION, MAX_LAYERS
from .placement import OverlapCosts, Placement, machine_cpus, overlap_costs, place, work_share
from .vocab_bridge import BEHIND, KEPT, SameVocab, TextBridge



@dataclass(frozen=True)
class BlockCost:
    """What a step with a block of k target tokens costs, in one-row target forwards, from measured costs.

    Inline: a verify over k + 1 rows plus the k drafting forwards before it (δ each), as ``costs.StepCost``.
    Overlapped, in the steady state: the slower of the step's two sides, the verify over k + 1 rows or
    the drafting of the k + 1 tokens (the next block and the guess) that the draft makes meanwhile. A
    token joins the block while the expected tokens per cost rise: its value is the draft's guess, before
    drawing it, that the path up to it is accepted (so sampled blocks stay exact, as in ``draft_tree.py``).

    Example (overlapped; verify c(k) = 1, 1, 1.3, 1.3, 1.7; δ = 0.3; values 0.9, 0.8, 0.7, 0.3): times
    for k = 0..4 are 1, 1, 1.3, 1.3, 1.7 (drafting 5 × 0.3 = 1.5 < 1.7); tokens per cost 1, 1.9, 2.08,
    2.62, 2.18: the block stops after three tokens.
    """

    rows: CostCurve  # c(k)/c(1) of a verify over k rows
    delta: float  # one draft token, in one-row target forwards
    overlap: bool
    context: int | None = None  # tokens in the target's cache: the curve is read there

    def time(self, k: int, per_token: float = 1.0) -> float:
        verify, drafting = self.rows(k + 1, self.context), self.delta * per_token
        return max(verify, (k + 1) * drafting) if self.overlap else verify + k * drafting

    def pays(self, value: float, k: int, total: float, per_token: float = 1.0) -> bool:
        """Whether the k-th token, of ``value``, raises tokens per cost over the first k - 1 (values summing to ``total``);
        ``per_token``: draft tokens per target token (another tokenizer)."""
        return (1 + total + value) / self.time(k, per_token) >= (1 + total) / self.time(k - 1, per_token)


@dataclass(frozen=True)
class PearlConfig(DrafterConfig):
    """draft: the draft model (model spec or a loaded ``Model``; another tokenizer drafts through text);
    drafter: "draft" (that model) or "layerskip" (the target's first ``layers`` layers, 0 = a quarter);
    max_draft: the longest block (at most 32); adaptive: +2 after a fully accepted block, -1 otherwise;
    min_confidence: the draft stops where its guess that its path is accepted falls below this;
    cost_aware: cut a block where one more row stops paying at the measured costs (``placement.py``);
    draft_threads / target_threads: the two thread pools (None: from the machine's cores, see
    ``placement.py``); overlap: draft on a thread of its own (None: when there is more than one core)."""

    draft: str | Model = field(default="", metadata=PATH)
    drafter: str = "draft"
    layers: int = 0
    max_draft: int = DEFAULT_MAX_DRAFT
    adaptive: bool = True
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    cost_aware: bool = True
    draft_threads: int | None = None
    target_threads: int | None = None
    overlap: bool | None = None

    def __post_init__(self) -> None:
        check_int(self, "layers", 0, MAX_LAYERS)
        check_int(self, "max_draft", 1, MAX_DEPTH)
        check_number(self, "min_confidence", 0, 1)
        check_bool(self, "adaptive")
        check_bool(self, "cost_aware")
        cores = len(machine_cpus())  # a request's options never start more threads than the machine has cores
        check_int(self, "draft_threads", 1, cores, optional=True)
        check_int(self, "target_threads", 1, cores, optional=True)
        if self.overlap is not None:
            check_bool(self, "overlap")
        if self.drafter not in ("draft", "layerskip"):
            raise ValueError(f"drafter must be 'draft' or 'layerskip', got {self.drafter!r}")
        if self.drafter == "draft" and not isinstance(self.draft, Model) and not (isinstance(self.draft, str) and self.draft):
            raise ValueError("pearl needs a draft model: pass --draft MODEL (method option 'draft'), "
                             "or drafter 'layerskip'")


@register
class PearlDrafter(Drafter):
    name = "pearl"
    Config = PearlConfig
    config: PearlConfig

    def __init__(self, model: Model, config: PearlConfig):
        super().__init__(model, config)
        c = self.config
        runner, self.bridge, vocab = self._drafting_side()
        self.native = getattr(model.runtime, "name", "") == "native"
        self.placement: Placement = place(c.draft_threads, c.target_threads, c.overlap,
                                          lambda: work_share(model, *self.drafting))
        p = self.placement
        if p.overlap and c.drafter == "layerskip" and self.native:
            model.runtime.rope.ensure(model.max_length)  # shared tables: never regrown while the other thread reads them
        self.chain = DraftChain(runner, vocab, c.min_confidence, p.draft_threads if p.overlap else 0, p.draft_cpus,
                                self.native)
        weakref.finalize(self, self.chain.close)  # the drafting thread ends with its drafter
        self.costs: OverlapCosts | None = None  # measured side by side (overlap, cost_aware)
        self.cost: BlockCost | None = None  # what a block costs (cost_aware)
        self.depth = c.max_draft
        self.loop_cores = None  # (thread id, undo) while the loop's thread has the target's cores

    def _drafting_side(self) -> tuple[DraftRunner, SameVocab | TextBridge, int]:
        c, model = self.config, self.model
        if c.drafter == "layerskip":
            total = model.runtime.layers
            n = c.layers or max(1, round(total * DEFAULT_FRACTION))
            if n > total:
                raise ParadecError(f"pearl: layers={n} but '{model.name}' has only {total} decoder layers")
            self.drafting, self.draft_eos = (model, n), frozenset(model.eos_token_ids)
            return DraftRunner(model.target(layers=n)), SameVocab(), model.vocab_size
        draft = load_draft(c.draft, model)
        self.drafting, self.draft_eos = (draft, None), frozenset(draft.eos_token_ids)
        if same_vocab(model, draft):
            return DraftRunner(draft.target()), SameVocab(), model.vocab_size
        return DraftRunner(draft.target()), TextBridge(model.tokenizer, draft.tokenizer), draft.vocab_size

    @property
    def overlap(self) -> bool:
        return self.placement.overlap

    def begin(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if self.config.cost_aware and self.cost is None:
            self.cost = self._measured_cost()
        self.depth = self.config.max_draft
        self.params, self.seeded, self.first = params, False, True
        # across vocabularies the draft is greedy whatever the request samples with (vocab_bridge.py)
        drafting = params if isinstance(self.bridge, SameVocab) else SamplingParams()
        self.chain.begin(self.bridge.prompt(prompt_ids), drafting, 0, self.draft_eos)

    def _measured_cost(self) -> BlockCost:
        """A block's cost from measured costs: side by side on the placement's cores (overlap), or each
        model's cost curve at the process's threads (``paradec.costs``, inline)."""
        if self.overlap:
            self.costs = overlap_costs(self.model, *self.drafting, self.placement)
            return BlockCost(self.costs.target, self.costs.draft_ratio(), overlap=True)
        delta = cost_curve(*self.drafting).seconds / cost_curve(self.model).seconds
        return BlockCost(cost_curve(self.model), delta, overlap=False)

    def propose(self, ctx: StepContext) -> Draft:
        chain = self.chain
        if self.overlap and (self.loop_cores is None or self.loop_cores[0] != threading.get_ident()):
            # the loop's thread verifies on the target's cores
            undo = use_cores(self.placement.target_threads, self.placement.target_cpus, self.native)
            self.loop_cores = (threading.get_ident(), undo)
        if not self.seeded:  # the draft's uniforms: from the request's random source, once
            seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator)) if ctx.generator is not None else 0
            with chain.cond:
                chain.seed = seed
            self.seeded = True
        kept = self._align(ctx.tokens, force=self.first)  # the first step: the draft has not read the prompt yet
        self.first = False
        lookahead = self.bridge.draft_tokens(min(self.depth + 2, self.config.max_draft) + 1)  # guess + next block
        if not kept and self.overlap:  # pre-verify: the target reads the root alone while the draft restarts
            with chain.cond:
                base = chain.base
            chain.want(base + lookahead)
            chain.set_verifying(True)
            return Draft()
        draft, used = self._block(min(self.depth, ctx.max_nodes), len(ctx.tokens))
        if self.overlap:  # post-verify: draft the guess and the next block while the target verifies this one
            with chain.cond:
                base = chain.base
            chain.want(base + used + lookahead)
        chain.set_verifying(True)
        return draft

    def _align(self, committed: list[int], force: bool) -> bool:
        """Bring the chain in line with the committed tokens; True when it continues them (its guess of
        the bonus token was right). A chain that stops short of them is waited for, one token at a
        time (its next token decides), except inline, where it restarts (as ``draft`` syncs)."""
        force = force or not self.overlap
        while True:
            with self.chain.cond:
                status = self.bridge.align(self.chain, committed, force)
                if status != BEHIND:
                    return status == KEPT
                n = len(self.chain.seq) + 1
            self.chain.ensure(n)
            with self.chain.cond:
                force = len(self.chain.seq) < n  # it cannot grow (halted): restart

    def _block(self, limit: int, context: int) -> tuple[Draft, int]:
        """The next block: up to ``limit`` target tokens of the chain, waiting for the draft where it is
        behind, cut where one more token stops paying (``BlockCost`` at ``context`` tokens). Returns it
        and the chain tokens it uses."""
        chain = self.chain
        cost = dataclasses.replace(self.cost, context=context) if self.cost is not None else None
        per_token = self.bridge.per_target_token()  # chain tokens per target token
        tokens, qs, used, total = [], [], 0, 0.0
        while len(tokens) < limit:
            with chain.cond:
                view = self.bridge.view(chain)
                length = len(chain.seq)
            j = len(tokens)
            if len(view) <= j:
                chain.ensure(length + 1)
                with chain.cond:
                    if len(chain.seq) <= length:  # halted: the block ends here
                        break
                continue
            p = view[j]
            if cost is not None and not cost.pays(p.plan, j + 1, total, per_token):
                break
            total += p.plan
            tokens.append(p.token)
            qs.append(p.q)
            used = p.needs
        return Draft.chain(tokens, None if all(q is None for q in qs) else qs), used

    def observe(self, block: Block, logits: torch.Tensor, verdict) -> None:
        self.chain.set_verifying(False)
        n = len(block.draft)
        if self.config.adaptive and n:
            full = len(verdict.accepted) == n
            self.depth = min(self.depth + 2, self.config.max_draft) if full else max(self.depth - 1, 1)

    def drafting_report(self) -> Overlap:
        return Overlap(*self.chain.report())

    def drafting_cost(self) -> float:
        return self.cost.delta if self.cost is not None else 0.0

    def end(self) -> None:
        self.chain.halt()
        self.chain.set_verifying(False)
        if self.loop_cores is not None and self.loop_cores[0] == threading.get_ident():
            self.loop_cores[1]()
            self.loop_cores = None
