"""``pearl``'s drafting side: a draft model extends one chain of tokens, on a thread of its own or inline.

The state, under one lock::

    seq     the draft model's tokens: seq[:base] stand for the committed tokens, seq[base:] is the chain
    until   how long ``seq`` should grow: the loop asks, the drafting thread drafts up to it
    epoch   bumped when the loop rewrites ``seq`` (``rebase``): a forward begun before it is discarded

The drafting thread only appends to ``seq``; the loop moves ``base`` over tokens the target committed
(``advance``) or rewrites ``seq`` from the first one that differs (``rebase``). Each appended token costs
one forward: ``DraftRunner.sync`` reads what its cache lacks (the token just drafted; after a rebase the
new tail) and gives the next distribution. Only this side touches the draft model's cache.

Halting: the chain stops where the draft's own guess that its path is accepted (the product of its
tokens' probabilities since ``base``, times the best probability of the next one: known *before* that
token is drawn) falls below ``min_confidence``, at the draft's EOS, or at its context window. Moving
``base`` forward raises the guess, and drafting resumes. The first token after ``base`` is always drafted.

Sampling: the token at position n of ``seq`` is drawn from q by the inverse CDF at a uniform that
depends only on (seed, n). So what is drafted never depends on when the thread ran (a seeded
generation repeats), and every verified draw is a fresh sample of its q: a position is verified at most
once, and the draws at that position that were thrown away (a rebase) were never verified.
"""

from __future__ import annotations

import math
import random
import threading
import time
from typing import Callable

import torch

from ..sampling import SamplingParams
from .draft_runner import DraftRunner
from .draft_tree import draft_dist

SEED_STRIDE = 1_000_003  # seed * stride + position: one uniform per (generation, position)


class DraftChain:
    """threads: >= 1 drafts on a thread of its own, with a kernel pool of that many threads on ``cpus``
    (the native runtime) or that many torch threads (the hf runtime); 0 drafts inline, on the loop's
    thread, when the loop asks (the sequential fallback). vocab: the width of q (the target's vocabulary
    when the two share it; the draft's own otherwise, where only its argmax is used)."""

    def __init__(self, runner: DraftRunner, vocab: int, min_confidence: float, threads: int = 0,
                 cpus: tuple[int, ...] = (), native: bool = True):
        self.runner, self.vocab, self.min_confidence = runner, vocab, min_confidence
        self.cond = threading.Condition()
        self.seq: list[int] = []
        self.probs: list[float] = []  # per position of seq: q(token) (1.0 over the base)
        self.plans: list[float] = []  # per position: the path's guess before the token was drawn
        self.qs: list[torch.Tensor | None] = []  # per position: q, when sampling
        self.base = self.until = self.epoch = 0
        self.halted = self.verifying = self.closed = False
        self.params = SamplingParams()
        self.seed = 0
        self.eos: frozenset[int] = frozenset()
        self.end_q: tuple[int, int, torch.Tensor] | None = None  # (epoch, len(seq), q after seq's last token)
        self.forwards = self.overlapped = 0
        self.waited = 0.0
        self.error: BaseException | None = None
        self.threaded = threads > 0
        if self.threaded:
            self.thread = threading.Thread(target=self._serve, args=(threads, tuple(cpus), native),
                                           name="paradec-draft", daemon=True)
            self.thread.start()

    # ---- the loop's side (every method takes the lock itself, except where it says so) ----

    def begin(self, tokens: list[int], params: SamplingParams, seed: int, eos: frozenset[int]) -> None:
        """A new generation: ``tokens`` (the prompt, in the draft's tokens) are the base; nothing drafted."""
        with self.cond:
            self.params, self.seed, self.eos = params, seed, eos
            self.seq, self.probs, self.plans, self.qs = list(tokens), [1.0] * len(tokens), [1.0] * len(tokens), [None] * len(tokens)
            self.base = self.until = len(tokens)
            self._changed()

    def rebase(self, keep: int, tail: list[int]) -> None:
        """Keep ``seq[:keep]``, append ``tail``: the new base (caller holds the lock)."""
        self.qs[self.base:keep] = [None] * max(0, keep - self.base)  # kept = committed: their q is done
        del self.seq[keep:], self.probs[keep:], self.plans[keep:], self.qs[keep:]
        self.seq += tail
        self.probs += [1.0] * len(tail)
        self.plans += [1.0] * len(tail)
        self.qs += [None] * len(tail)
        self.base = self.until = len(self.seq)
        self._changed()

    def advance(self, base: int) -> None:
        """The target committed ``seq[self.base:base]``: the chain now starts there (caller holds the lock)."""
        self.qs[self.base:base] = [None] * (base - self.base)  # committed: their q (a vocabulary each) is done
        self.base = base
        self.until = max(self.until, base)
        self.halted = False  # the path's guess rose: the next token may pay now
        self.cond.notify_all()

    def want(self, until: int) -> None:
        """Draft until ``seq`` has ``until`` tokens (in the background: the loop does not wait)."""
        with self.cond:
            if until > self.until:
                self.until = until
                self.cond.notify_all()

    def ensure(self, length: int) -> None:
        """Wait until ``seq`` has ``length`` tokens or cannot grow (halted, full, failed); inline, draft them now."""
        self.want(length)
        start = time.perf_counter()
        if self.threaded:
            with self.cond:
                self.cond.wait_for(lambda: len(self.seq) >= length or not self._can_grow())
        else:
            while True:
                with self.cond:
                    if len(self.seq) >= length or not self._can_grow():
                        break
                    job = self._job()
                self._draft(*job)
        self.waited += time.perf_counter() - start
        if self.error is not None:
            raise self.error

    def set_verifying(self, on: bool) -> None:
        with self.cond:
            self.verifying = on

    def halt(self) -> None:
        """Draft nothing more until asked (the generation ended)."""
        with self.cond:
            self.until = len(self.seq)

    def report(self) -> tuple[int, int, float]:
        """(forwards, of those during verification, seconds waited) since the last report."""
        with self.cond:
            out = (self.forwards, self.overlapped, self.waited)
            self.forwards = self.overlapped = 0
            self.waited = 0.0
            return out

    def close(self) -> None:
        """End the drafting thread and wait for it (its kernel pool must not outlive the process's exit)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.threaded and self.thread is not threading.current_thread():
            self.thread.join(timeout=60)

    def chain_score(self) -> float:
        """The draft's guess that the whole chain is accepted (caller holds the lock)."""
        return math.prod(self.probs[self.base:])

    # ---- the drafting side ----

    def _changed(self) -> None:
        self.epoch += 1
        self.halted = False
        self.end_q = None
        self.cond.notify_all()

    def _can_grow(self) -> bool:
        return (self.error is None and not self.closed and not self.halted
                and len(self.seq) < self.runner.max_length - 1 and not (self.seq and self.seq[-1] in self.eos))

    def _job(self) -> tuple[list[int], int, bool]:
        return list(self.seq), self.epoch, self.verifying

    def _serve(self, threads: int, cpus: tuple[int, ...], native: bool) -> None:
        """The drafting thread: its own cores, then draft whenever ``seq`` is shorter than ``until``."""
        try:
            undo = use_cores(threads, cpus, native)
        except Exception as exc:  # noqa: BLE001 - reported to the loop at its next wait
            with self.cond:
                self.error = exc
                self.cond.notify_all()
            return
        try:
            self._drafting()
        finally:
            undo()  # the thread's own pool ends with it

    def _drafting(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.closed or (len(self.seq) < self.until and self._can_grow()))
                if self.closed:
                    return
                job = self._job()
            try:
                self._draft(*job)
            except BaseException as exc:  # noqa: BLE001 - the loop raises it
                with self.cond:
                    self.error = exc
                    self.cond.notify_all()
                return

    def _draft(self, tokens: list[int], epoch: int, during: bool) -> None:
        """One token after ``tokens``: a forward (unless its distribution is known), then append under the lock."""
        with self.cond:
            known = self.end_q if self.end_q is not None and self.end_q[:2] == (epoch, len(tokens)) else None
        if known is not None:
            q = known[2]
        else:
            q = draft_dist(self.runner.sync(tokens), self.vocab, self.params)  # (vocab,); the kernels release the GIL
        with self.cond:
            if known is None:
                self.forwards += 1
                self.overlapped += during
            if epoch == self.epoch and len(self.seq) == len(tokens):
                self._append(q)
            self.cond.notify_all()

    def _append(self, q: torch.Tensor) -> None:
        n = len(self.seq)
        self.end_q = (self.epoch, n, q)
        score, top = self.chain_score(), float(q.max())
        if n > self.base and score * top < self.min_confidence:
            self.halted = True
            return
        x = self._pick(q, n)
        self.seq.append(x)
        self.probs.append(float(q[x]))
        self.plans.append(score * top)
        self.qs.append(None if self.params.greedy else q)

    def _pick(self, q: torch.Tensor, position: int) -> int:
        """Greedy: the argmax. Sampling: q's inverse CDF at the uniform of (seed, position)."""
        if self.params.greedy:
            return int(q.argmax())
        u = random.Random(self.seed * SEED_STRIDE + position).random()
        cdf = q.cumsum(0)
        x = int(torch.searchsorted(cdf, torch.tensor(u, dtype=cdf.dtype) * cdf[-1], right=True))
        x = min(x, len(q) - 1)
        while q[x] <= 0:  # rounding at the top of the CDF: step back to a token q can draw
            x -= 1
        return x


def use_cores(threads: int, cpus: tuple[int, ...], native: bool) -> Callable[[], None]:
    """Give the calling thread ``threads`` threads of its own on ``cpus``: a kernel pool on the native
    runtime (when its kernels load), torch's thread count on the hf runtime. Returns the undo."""
    if native:
        try:
            from ..runtime.kernels import KernelsUnavailable, kernels

            lib = kernels()
        except (ImportError, KernelsUnavailable):
            lib = None
        if lib is not None:
            lib.use_own_pool(threads, list(cpus))
            return lambda: lib.use_own_pool(0)
    before = torch.get_num_threads()  # per thread under OpenMP
    torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(before)
