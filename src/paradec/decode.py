"""The one decoding loop: draft → verify → accept → commit, for every method.

Plain decoding is this loop with the empty drafter, so baseline and methods share one code path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from .drafters.base import Drafter, StepContext
from .model import Model
from .sampling import SamplingParams, sample, target_probs
from .stats import Stats
from .text import TextStream
from .tree import block_mask, block_positions, depths
from .verify import verify


@dataclass
class Result:
    text: str
    token_ids: list[int]  # generated tokens only (no prompt, no EOS)
    stats: Stats

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "stats": self.stats.to_dict()}


def decode(
    model: Model,
    drafter: Drafter,
    prompt_ids: list[int],
    params: SamplingParams,
    max_new_tokens: int,
    stop: list[str] | None = None,
    interrupt: Callable[[], str | None] | None = None,
) -> Iterator[str]:
    """Generate after ``prompt_ids``; yield text pieces as they become final, return a ``Result``.

    Use as ``result = yield from decode(...)`` or through ``paradec.stream``. ``interrupt`` is asked
    between steps (after the prefill and after every forward); a reason it returns (e.g. "cancelled")
    ends the generation there, with that reason as ``stop_reason``. It lets a server notice a gone
    client even while text is held back (a long stop string), not only when a piece is emitted.
    """
    target = model.target()  # its prefill raises ContextOverflowError for a prompt that does not fit
    stats = Stats(method=drafter.name, prompt_tokens=len(prompt_ids))
    text = TextStream(model.tokenizer, stop)
    eos = model.eos_token_ids
    generator = None if params.greedy else params.generator()
    tokens = list(prompt_ids)  # committed: prompt + generated; tokens[-1] is the next root
    generated: list[int] = []

    def accept(new: list[int]) -> bool:
        """Append step tokens up to EOS / the token limit; True when generation must end."""
        for token in new:
            if token in eos:
                stats.stop_reason = "eos"
                return True
            generated.append(token)
            tokens.append(token)
            if len(generated) >= max_new_tokens:
                stats.stop_reason = "length"
                return True
        return False

    start = time.perf_counter()
    drafter.begin(list(prompt_ids), params)
    logits = target.prefill(list(prompt_ids))
    first = int(logits.argmax()) if params.greedy else sample(target_probs(logits, params), generator)
    stats.prefill_time = time.perf_counter() - start
    done = max_new_tokens <= 0 or accept([first])

    while True:
        piece = text.push(generated[len(text.ids) :])
        if piece:
            yield piece
        if done or text.stopped:
            break
        if interrupt is not None and (reason := interrupt()):
            stats.stop_reason = reason
            break
        room = target.max_length - target.length - 1  # rows after the root that still fit
        if room < 0:
            stats.stop_reason = "context"
            break
        start = time.perf_counter()
        ctx = StepContext(tokens, len(prompt_ids), room, params, generator)
        draft = drafter.propose(ctx)
        if draft.block_size - 1 > room:
            draft = draft.truncated(room)
        # One forward over root + draft tree (+ aux rows): the whole draft is scored at once.
        logits = target.forward([tokens[-1]] + draft.tokens + draft.aux_tokens, block_positions(draft), block_mask(draft))
        verdict = verify(draft, logits, params, generator)
        target.commit([0] + [i + 1 for i in verdict.accepted])  # root + accepted path stay cached
        drafter.observe(draft, logits, verdict)
        stats.record_step(depths(draft.parents), len(verdict.accepted))
        done = accept(verdict.tokens)
        stats.decode_time += time.perf_counter() - start

    tail = text.flush()
    if tail:
        yield tail
    if text.stopped:
        stats.stop_reason = "stop"
    stats.new_tokens = len(text.ids)
    return Result(text=text.text, token_ids=list(text.ids), stats=stats)
