"""The one decoding loop: draft → verify → accept → commit, for every method.

Plain decoding is this loop with the empty drafter, so baseline and methods share one code path.
The loop's state lives in a ``Sequence`` and each verb of a step is one of its methods, so that
``paradec.parallel.Batch`` steps several sequences with the same pieces, one forward for all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .constraints.forced import graft, inner_step
from .drafters.base import Drafter, StepContext
from .model import Model
from .runtime.target import Block as Rows
from .runtime.target import Target
from .sampling import SamplingParams, sample, target_probs
from .stats import Overlap, Stats
from .text import TextStream
from .tree import Block, Draft, block_mask, block_positions, depths
from .verify import Verdict, verify


@dataclass
class Result:
    text: str
    token_ids: list[int]  # generated tokens only (no prompt, no EOS)
    stats: Stats

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "stats": self.stats.to_dict()}


@dataclass(frozen=True)
class Step:
    """One decoding step, for an ``on_step`` hook (the decoding view, ``viz.py``, records these)."""

    block: Block  # what the target read: root, draft tree, aux rows
    verdict: Verdict  # the accepted path and the bonus token
    delivered: int  # how many of ``verdict.tokens`` the caller received (fewer on the last step)
    method: str  # the method that drafted it (``Drafter.step_method``)
    overlap: Overlap | None = None  # drafting on a thread of its own for this step (``pearl``)


def rows_of(block: Block) -> Rows:
    """What the target reads for a block: its tokens, their positions after the committed ones, the tree mask."""
    return Rows(block.tokens, block_positions(block), block_mask(block))


class Sequence:
    """One generation between steps: its target (KV cache), drafter, committed tokens, text and stats.

    A step is ``block = next_block()`` → the target scores ``rows_of(block)`` → ``advance(block, logits)``;
    the first is ``start(logits)`` with the logits after the prompt. Whoever runs the forwards (``run``
    here, one at a time; ``paradec.parallel.Batch``, several sequences per forward) calls the same verbs,
    so a sequence decodes alike either way.

    ``interrupt`` is asked before every step; a reason it returns (e.g. "cancelled") ends the
    generation there, with that reason as ``stop_reason``. ``generator``: the random source of sampling
    (default: one seeded from ``params.seed``). ``on_step`` is called with every ``Step`` after its
    forward (None: nothing is recorded). ``grammar``: a compiled constraint (``paradec.constraints``):
    every row is masked by it before a token is chosen, a complete match ends the generation, and every
    method but plain drafts the tokens it forces ahead of its own draft.
    """

    def __init__(self, model: Model, drafter: Drafter, prompt_ids: list[int], params: SamplingParams,
                 max_new_tokens: int, stop: list[str] | None = None,
                 interrupt: Callable[[], str | None] | None = None, target: Target | None = None,
                 generator: torch.Generator | None = None, on_step: Callable[[Step], None] | None = None,
                 grammar=None):
        self.model, self.drafter, self.params = model, drafter, params
        self.on_step = on_step
        model.check_ids(prompt_ids)  # a prompt of ids that no tokenizer made: the API's callers, the tests
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens, self.interrupt = max_new_tokens, interrupt
        self.target = target if target is not None else model.target()
        self.stats = Stats(method=drafter.name, prompt_tokens=len(prompt_ids))
        self.text = TextStream(model.tokenizer, stop)
        self.eos = model.eos_token_ids
        self.generator = None if params.greedy else (generator or params.generator())
        self.features = drafter.reads_features  # the target's hidden states go to the drafter
        self.tokens = list(prompt_ids)  # committed: prompt + generated; tokens[-1] is the next root
        self.generated: list[int] = []
        self.done = False  # no step follows (EOS, token limit, interrupt, context)
        self.last_step = (0, 0)  # (block rows, tokens verified) of the latest step
        self.result: Result | None = None
        self._step_start = 0.0
        self.guide = None
        if grammar is not None:
            from .constraints.guide import Guide

            self.guide = Guide(grammar)
        self.forced = 0  # tokens the grammar forced at the head of the current block's draft
        self.drafts_forced = drafter.name != "plain"  # plain stays the one-token-per-forward baseline
        drafter.begin(list(prompt_ids), params)

    @property
    def finished(self) -> bool:
        return self.done or self.text.stopped

    def _accept(self, new: list[int]) -> bool:
        """Append step tokens up to EOS / the token limit; True when generation must end."""
        for token in new:
            if token in self.eos:
                self.stats.stop_reason = "eos"
                return True
            self.generated.append(token)
            self.tokens.append(token)
            if self.guide is not None and (end := self.guide.commit(token)):  # complete (only EOS may follow)
                self.stats.stop_reason = end
                return True
            if len(self.generated) >= self.max_new_tokens:
                self.stats.stop_reason = "length"
                return True
        return False

    def start(self, logits: torch.Tensor) -> str:
        """The prompt has been read: draw the first token from the logits after it, (vocab,).
        Returns the text that is now final."""
        p = self.params
        if self.guide is not None:
            logits = self.guide.masked(logits)
        first = int(logits.argmax()) if p.greedy else sample(target_probs(logits, p), self.generator)
        self.done = self.max_new_tokens <= 0 or self._accept([first])
        return self.text.push(self.generated, final=self.done)

    def next_block(self, max_rows: int | None = None) -> Block | None:
        """Draft the next step's block, or None when the generation ends before it.

        max_rows: the most rows after the root this step may use (a batch's draft budget; 0 = a plain
        step); the context window's room caps it anyway.
        """
        if self.finished:
            return None
        if self.interrupt is not None and (reason := self.interrupt()):
            self.stats.stop_reason, self.done = reason, True
            return None
        room = self.target.max_length - self.target.length - 1  # rows after the root that still fit
        if room < 0:
            self.stats.stop_reason, self.done = "context", True
            return None
        if max_rows is not None:
            room = min(room, max_rows)
        self._step_start = time.perf_counter()
        # A step delivers at most its accepted path + the bonus token: no node deeper than the
        # tokens still wanted after the bonus is worth verifying.
        wanted = self.max_new_tokens - len(self.generated) - 1
        forced = self.guide.forced(min(room, wanted)) if self.guide is not None and self.drafts_forced else []
        self.forced = len(forced)
        ctx = StepContext(self.tokens + forced, len(self.prompt_ids), room - len(forced), self.params, self.generator,
                          forced=len(forced))
        # a drafter that reads the target's hidden states has them for committed tokens only: not after forced ones
        skip = forced and self.features
        draft = Draft() if skip else self.drafter.propose(ctx).to_depth(wanted - len(forced))
        aux = self.drafter.aux_rows() if not forced else None  # aux rows attend to the root, not to a chain
        return Block(self.tokens[-1], graft(forced, draft), aux).fitted(room)

    def advance(self, block: Block, logits: torch.Tensor, hidden: torch.Tensor | None = None) -> str:
        """Verify ``block`` against its logits (len(block), vocab), commit the accepted path, learn,
        record; returns the text that is now final. ``hidden`` (len(block), d): the block's hidden
        states, needed when the drafter reads features (``self.features``)."""
        if self.guide is not None:
            logits = self.guide.masked_rows(block, logits)
        verdict = verify(block.draft, logits, self.params, self.generator)
        kept = [0] + [i + 1 for i in verdict.accepted]  # root + accepted path stay cached
        self.target.commit(kept)
        if self.features:
            if hidden is None:
                raise ValueError(f"method '{self.drafter.name}' reads the target's hidden states: pass them to advance")
            self.drafter.observe_features(hidden[kept])
        self.drafter.observe(*inner_step(block, logits, verdict, self.forced))
        fresh = len(self.generated)
        self.done = self._accept(verdict.tokens)
        self.last_step = (len(block), len(verdict.tokens))
        self.stats.decode_time += time.perf_counter() - self._step_start
        piece = self.text.push(self.generated[fresh:], final=self.done)
        # the caller gets the step's tokens up to EOS, the token limit or a stop string: count only those
        delivered, method = len(self.text.ids) - fresh, self.drafter.step_method()
        if self.forced and len(block.draft) == self.forced:  # the grammar drafted this step alone
            method = "forced"
        self.stats.record_step(depths(block.draft.parents), len(verdict.accepted), delivered, method)
        self.stats.forced_tokens += min(self.forced, len(verdict.accepted), delivered)
        if (overlap := self.drafter.drafting_report()) is not None:
            self.stats.record_overlap(overlap)
        if self.on_step is not None:
            self.on_step(Step(block, verdict, delivered, method, overlap))
        return piece

    def finish(self) -> str:
        """End the generation: the text still held back, and ``self.result``."""
        tail = self.text.push([], final=True)  # when the context window or an interrupt ended the generation
        if self.text.stopped:
            self.stats.stop_reason = "stop"
        if self.guide is not None:
            self.stats.constraint = "complete" if self.guide.accepting else "incomplete"
        self.stats.new_tokens = len(self.text.ids)
        self.done = True
        self.drafter.finish(list(self.tokens))
        self.drafter.end()
        self.result = Result(text=self.text.text, token_ids=list(self.text.ids), stats=self.stats)
        return tail


def run(seq: Sequence) -> Iterator[str]:
    """The loop for one sequence: yield text pieces as they become final, return its ``Result``."""
    start = time.perf_counter()
    try:
        piece = seq.start(prefill(seq.target, seq.prompt_ids, seq.drafter))
        seq.stats.prefill_time = time.perf_counter() - start
        if piece:
            yield piece
        while (block := seq.next_block()) is not None:
            # One forward over root + draft tree (+ aux rows): the whole draft is scored at once.
            out = seq.target.forward(*rows_of(block), hidden=seq.features)
            logits, hidden = out if seq.features else (out, None)
            piece = seq.advance(block, logits, hidden)
            if piece:
                yield piece
    except BaseException:  # an error, or the caller dropped the stream: the drafter lets go (finish does too)
        seq.drafter.end()
        raise
    tail = seq.finish()
    if tail:
        yield tail
    return seq.result


def prefill(target: Target, prompt_ids: list[int], drafter: Drafter) -> torch.Tensor:
    """Read the prompt; returns the logits after its last token, (vocab,). A drafter that reads
    features gets every prompt row's hidden states (the LM head still runs on the last row only)."""
    if not drafter.reads_features or not prompt_ids:
        return target.prefill(prompt_ids)
    logits, hidden = target.prefill(prompt_ids, hidden=True)
    drafter.observe_features(hidden)
    return logits


def decode(
    model: Model,
    drafter: Drafter,
    prompt_ids: list[int],
    params: SamplingParams,
    max_new_tokens: int,
    stop: list[str] | None = None,
    interrupt: Callable[[], str | None] | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> Iterator[str]:
    """Generate after ``prompt_ids``; yield text pieces as they become final, return a ``Result``.

    Use as ``result = yield from decode(...)`` or through ``paradec.stream``. ``interrupt`` is asked
    between steps (after the prefill and after every forward); a reason it returns (e.g. "cancelled")
    ends the generation there, with that reason as ``stop_reason``. It lets a server notice a gone
    client even while text is held back (a long stop string), not only when a piece is emitted.
    ``on_step`` is called with every ``Step`` after its forward (None: nothing is recorded).
    """
    # the target's prefill raises ContextOverflowError for a prompt that does not fit
    return (yield from run(Sequence(model, drafter, prompt_ids, params, max_new_tokens, stop, interrupt,
                                 on_step=on_step)))
