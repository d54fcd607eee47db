"""The one record every method returns, so results compare on equal terms."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple


class Overlap(NamedTuple):
    """One step's drafting on a thread of its own (``pearl``)."""

    forwards: int  # the drafting model's forwards since the previous step
    overlapped: int  # of those, the ones that started while the target verified a block
    wait: float  # seconds the loop waited for the drafting thread


@dataclass
class Stats:
    """Counts and times of one generation.

    forward_passes counts target forwards after the prefill; each yields ``accepted + 1`` tokens
    (accepted draft tokens plus the bonus), so ``mean_accepted_length`` is tokens per forward.
    Only tokens the caller receives count as accepted: the step that ends a generation (EOS, the
    token limit, a stop string) may verify more than it delivers. So ``new_tokens`` is
    ``1 + accepted_tokens + forward_passes`` (the first token comes from the prefill), one less when
    the last step's bonus token was EOS or cut by a stop string.
    ``drafted[d]`` / ``accepted[d]``: steps whose draft had a node at depth d+1 / whose delivered
    accepted path reached depth d+1. ``methods``: forward passes per method that drafted them (one
    entry for a fixed method; ``auto`` lists what it picked, "plain" for its steps without a draft).
    ``forced_tokens``: accepted tokens that a grammar forced (free drafts, ``paradec.constraints``), part of
    ``accepted_tokens``; ``constraint``: with a constraint, "complete" when the output matches it whole,
    "incomplete" when the generation ended before (the token limit, the context window), else "".
    ``draft_forwards``, ``overlapped_forwards``, ``draft_wait``: a drafter on its own thread (``pearl``):
    its forwards, those that ran while the target verified, the seconds the loop waited for it.
    Times exclude detokenisation.
    """

    method: str
    prompt_tokens: int = 0
    new_tokens: int = 0
    forward_passes: int = 0
    accepted_tokens: int = 0  # accepted draft tokens the caller received, over all steps
    forced_tokens: int = 0  # of those, the ones a grammar forced
    draft_nodes: int = 0  # draft nodes proposed over all steps (tree nodes, not aux rows)
    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)
    prefill_time: float = 0.0
    decode_time: float = 0.0
    draft_forwards: int = 0
    overlapped_forwards: int = 0
    draft_wait: float = 0.0
    stop_reason: str = ""  # eos | length | stop | context | constraint (a grammar's dead end)
    constraint: str = ""  # complete | incomplete (with a constraint)

    def record_step(self, draft_depths: list[int], accepted_len: int, delivered: int, method: str) -> None:
        """One forward: the draft's node depths, the accepted path's length, how many of the step's
        tokens (accepted path, then bonus) the caller received, and the method that drafted it."""
        accepted_len = min(accepted_len, delivered)
        self.forward_passes += 1
        self.methods[method] = self.methods.get(method, 0) + 1
        self.accepted_tokens += accepted_len
        self.draft_nodes += len(draft_depths)
        deepest = max(draft_depths, default=0)
        for counts, upto in ((self.drafted, deepest), (self.accepted, accepted_len)):
            counts.extend([0] * (upto - len(counts)))
            for d in range(upto):
                counts[d] += 1

    def record_overlap(self, overlap: Overlap) -> None:
        self.draft_forwards += overlap.forwards
        self.overlapped_forwards += overlap.overlapped
        self.draft_wait += overlap.wait

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per target forward pass (accepted draft tokens + the bonus token)."""
        return (self.accepted_tokens + self.forward_passes) / self.forward_passes if self.forward_passes else 0.0

    @property
    def total_time(self) -> float:
        return self.prefill_time + self.decode_time

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.total_time if self.total_time > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(
            mean_accepted_length=self.mean_accepted_length,
            tokens_per_second=self.tokens_per_second,
            total_time=self.total_time,
        )
        return out

    def summary(self) -> str:
        picked = ""
        forced = f" ({self.forced_tokens} forced by the grammar)" if self.forced_tokens else ""
        incomplete = ", the output does not complete the constraint" if self.constraint == "incomplete" else ""
        if set(self.methods) - {self.method}:  # auto: what it picked, most used first
            used = sorted(self.methods.items(), key=lambda kv: (-kv[1], kv[0]))
            picked = " (" + ", ".join(f"{name} {steps}" for name, steps in used) + ")"
        drafting = ""
        if self.draft_forwards:
            drafting = (f", drafting: {self.overlapped_forwards} of {self.draft_forwards} draft forwards during "
                        f"verification, {self.draft_wait:.2f}s waited")
        return (
            f"[{self.method}] {self.new_tokens} tokens in {self.total_time:.2f}s "
            f"({self.tokens_per_second:.1f} tok/s), {self.forward_passes} forward passes{picked}, "
            f"{self.mean_accepted_length:.2f} tokens/forward{forced}{drafting}, prefill {self.prefill_time:.2f}s, "
            f"stop: {self.stop_reason}{incomplete}"
        )
