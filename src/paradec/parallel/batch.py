"""Several sequences stepped together: one forward per step for all of them (continuous batching).

Each sequence keeps its own drafter, sampling parameters, KV cache and text; a step is the one loop's
verbs (``paradec.decode.Sequence``) with the forward shared::

    every live sequence:   block_i = seq.next_block(budget)        its own draft (or none)
    joining sequences:     the rest of their prompt (last row's logits only)
    one forward_many over all of those rows                        weights read once
    every sequence:        seq.advance(block_i, logits_i)          its own verdict: acceptance is ragged

Sequences join between steps (``add``) and leave when they finish, so a server can run requests as
they come. Branches of one prompt join as a group: their common prefix is read once and forked
(``target.fork()``); a branch whose prompt goes on past it reads its own rest in the next step.
On the native runtime a row's logits do not depend on the other rows of its forward, so every
sequence decodes bit for bit as it would alone. When a sequence's drafter reads the target's hidden
states (EAGLE, Medusa), the forward also returns every row's: each such drafter gets its prompt's
(the shared prefix, then its own rest) and its block's, as the one-sequence loop gives them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..decode import Sequence, rows_of
from ..errors import ContextOverflowError
from ..runtime.target import Block as Rows
from ..runtime.target import forward_many
from ..tree import Block


@dataclass
class StepOutcome:
    """What one step did: text made final per sequence, and the sequences that left the batch
    (finished: ``seq.result`` is set; failed: with the exception that ended them)."""

    pieces: list[tuple[Sequence, str]] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)
    failed: list[tuple[Sequence, BaseException]] = field(default_factory=list)


@dataclass
class Counters:
    """Totals over the batch's life (the server's metrics read them)."""

    forwards: int = 0  # forwards run (one per step with any rows)
    rows: int = 0  # rows scored, prompts included
    tokens: int = 0  # tokens generated (accepted + bonus + first tokens), before stop-string cuts
    sequence_steps: int = 0  # decoding steps summed over sequences (a step of B sequences counts B)


def common_prefix(prompts: list[list[int]]) -> int:
    """Length of the longest prefix every prompt starts with."""
    n = min(len(p) for p in prompts)
    for i in range(n):
        if any(p[i] != prompts[0][i] for p in prompts):
            return i
    return n


class DraftPolicy(Protocol):
    """Whether the batch's greedy sequences draft this step (the server's ``serve.switch.DraftSwitch``)."""

    def max_rows(self, seqs: list[Sequence]) -> int | None:
        """The draft budget of ``seqs`` this step: None (as they like) or a most rows after the root."""

    def observe(self, seqs: list[Sequence]) -> None:
        """After the step: ``seqs`` (those it budgeted) have stepped; ``seq.last_step`` tells how."""


class Batch:
    """Sequences decoded together; ``add`` them, call ``step`` until ``len(batch) == 0``.

    switch: decides per step how much the batch's *greedy* sequences draft (a ``DraftPolicy``); None =
    every sequence drafts as its drafter likes, as it would alone. A sampling sequence always drafts
    as it would alone: a drafted step draws other random numbers than a plain one, so a budget set by
    what else is in the batch would make a seeded sample depend on other sequences. A greedy
    sequence's output is the same whatever it drafts.
    """

    def __init__(self, switch: DraftPolicy | None = None):
        self.switch = switch
        self.live: list[Sequence] = []  # prompt read: one block per step
        self.reading: list[Sequence] = []  # hold a prefix of their prompt: read the rest next step
        self.groups: list[list[Sequence]] = []  # joined, nothing read yet
        self.counters = Counters()

    def __len__(self) -> int:
        return len(self.live) + len(self.reading) + sum(len(g) for g in self.groups)

    @property
    def sequences(self) -> list[Sequence]:
        return [*self.live, *self.reading, *(s for g in self.groups for s in g)]

    def add(self, *branches: Sequence) -> None:
        """Join before the next step. Several sequences form a group: branches whose prompts share a
        prefix read it once. Each must hold a fresh target (``model.target()``) of the same model."""
        if not branches:
            return
        for seq in branches:
            if len(seq.prompt_ids) > seq.target.max_length:
                raise ContextOverflowError(f"the prompt has {len(seq.prompt_ids)} tokens but the model's context "
                                           f"window is {seq.target.max_length} tokens")
            if not seq.prompt_ids or seq.target.length or seq.target.pending:
                raise ValueError("a sequence joins with a non-empty prompt and a fresh target")
        if len(branches) > 1 and common_prefix([s.prompt_ids for s in branches]) == 0:
            self.groups.extend([s] for s in branches)  # nothing to share
        else:
            self.groups.append(list(branches))

    def remove(self, seq: Sequence) -> None:
        """Drop a sequence without finishing it (its result stays None); its drafter lets go."""
        seq.drafter.end()
        self.live = [s for s in self.live if s is not seq]
        self.reading = [s for s in self.reading if s is not seq]
        self.groups = [g for g in ([s for s in g if s is not seq] for g in self.groups) if g]

    def step(self) -> StepOutcome:
        """One forward for every sequence; see the module docstring."""
        out = StepOutcome()
        budgeted = [s for s in self.live if s.params.greedy] if self.switch is not None else []
        budget = self.switch.max_rows(budgeted) if budgeted else None
        stepping: list[tuple[Sequence, Block]] = []
        for seq in list(self.live):
            try:
                block = seq.next_block(budget if seq.params.greedy else None)
            except Exception as exc:  # a drafter's failure ends its own sequence only
                self._fail(seq, exc, out)
                continue
            if block is None:
                self._finish(seq, out)
            else:
                stepping.append((seq, block))
        groups, reading = self.groups, self.reading
        self.groups, self.reading = [], []
        prefixes = [common_prefix([s.prompt_ids for s in g]) for g in groups]
        targets = [g[0].target for g in groups] + [s.target for s in reading] + [s.target for s, _ in stepping]
        rows = ([Rows(g[0].prompt_ids[:n], list(range(n)), None, True) for g, n in zip(groups, prefixes)]
                + [self._rest(s) for s in reading] + [rows_of(b) for _, b in stepping])
        if not targets:
            return out
        involved = [s for g in groups for s in g] + reading + [s for s, _ in stepping]
        features = any(s.features for s in involved)  # then every row's hidden states come back
        start = time.perf_counter()
        try:
            out_rows = forward_many(targets, rows, hidden=features)
            logits, hidden = zip(*out_rows) if features else (out_rows, [None] * len(out_rows))
        except Exception as exc:  # cannot tell whose rows caused it: every sequence in the forward ends
            for seq in involved:
                self._fail(seq, exc, out)
            return out
        elapsed = time.perf_counter() - start
        c = self.counters
        c.forwards += 1
        c.rows += sum(len(r.tokens) for r in rows)
        c.sequence_steps += len(stepping)
        for g, n, lg, hd in zip(groups, prefixes, logits, hidden):
            self._joined(g, n, lg[-1], hd, elapsed, out)
        at = len(groups)
        for seq, lg, hd in zip(reading, logits[at:], hidden[at:]):
            try:
                seq.target.commit(list(range(seq.target.pending)))
                seq.stats.prefill_time += elapsed
                if seq.features:
                    seq.drafter.observe_features(hd)
                piece = seq.start(lg[-1])
            except Exception as exc:  # its first token or its drafter failed: it ends alone
                self._fail(seq, exc, out)
                continue
            self._started(seq, piece, out)
        at += len(reading)
        for (seq, block), lg, hd in zip(stepping, logits[at:], hidden[at:]):
            before = len(seq.generated)
            try:
                piece = seq.advance(block, lg, hd)
            except Exception as exc:
                self._fail(seq, exc, out)
                continue
            c.tokens += len(seq.generated) - before
            if piece:
                out.pieces.append((seq, piece))
            if seq.finished:  # leaves now, so that its result comes with this step
                self._finish(seq, out)
        if budgeted:
            self.switch.observe([s for s, _ in stepping if s.params.greedy])
        return out

    def _rest(self, seq: Sequence) -> Rows:
        """The rows of the part of ``seq``'s prompt its target does not hold yet."""
        rest = seq.prompt_ids[seq.target.length:]
        return Rows(rest, list(range(len(rest))), None, True)

    def _joined(self, group: list[Sequence], n: int, logits: torch.Tensor, hidden: torch.Tensor | None,
                elapsed: float, out: StepOutcome) -> None:
        """The group's common prefix of ``n`` tokens is in its first target: fork it for the others.
        ``hidden``: the prefix rows' hidden states (when some drafter reads them)."""
        first = group[0].target
        first.commit(list(range(n)))
        for i, seq in enumerate(group):
            try:
                if i:
                    seq.target = first.fork()
                seq.stats.prefill_time += elapsed
                if seq.features:
                    seq.drafter.observe_features(hidden)
                if len(seq.prompt_ids) > n:
                    self.reading.append(seq)
                    continue
                piece = seq.start(logits)
            except Exception as exc:  # its first token or its drafter failed: it ends alone
                self._fail(seq, exc, out)
                continue
            self._started(seq, piece, out)

    def _started(self, seq: Sequence, piece: str, out: StepOutcome) -> None:
        self.counters.tokens += len(seq.generated)
        if piece:
            out.pieces.append((seq, piece))
        if seq.finished:
            self._finish(seq, out, joined=False)
        else:
            self.live.append(seq)

    def _finish(self, seq: Sequence, out: StepOutcome, joined: bool = True) -> None:
        if joined:
            self.live.remove(seq)
        tail = seq.finish()
        if tail:
            out.pieces.append((seq, tail))
        out.finished.append(seq)

    def _fail(self, seq: Sequence, exc: BaseException, out: StepOutcome) -> None:
        self.remove(seq)
        seq.done = True
        out.failed.append((seq, exc))


def decode_together(seqs: list[list[Sequence]] | list[Sequence], batch: Batch | None = None) -> list:
    """Run sequences (or groups of branches) to their end in one batch; their ``Result``s, in order.
    A sequence that fails raises its exception here. ``batch``: the one to run them on (default: a
    new one without a draft switch); its ``counters`` then tell the forwards the run took."""
    batch = Batch() if batch is None else batch
    flat: list[Sequence] = []
    for item in seqs:
        group = item if isinstance(item, list) else [item]
        batch.add(*group)
        flat.extend(group)
    while len(batch):
        outcome = batch.step()
        if outcome.failed:
            raise outcome.failed[0][1]
    return [s.result for s in flat]
