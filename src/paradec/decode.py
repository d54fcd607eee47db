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
from .tree import Block, block_mask, block_positions, depths
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
    features = drafter.reads_features
    drafter.begin(list(prompt_ids), params)
    logits = prefill(target, list(prompt_ids), drafter)
    first = int(logits.argmax()) if params.greedy else sample(target_probs(logits, params), generator)
    stats.prefill_time = time.perf_counter() - start
    done = max_new_tokens <= 0 or accept([first])
    piece = text.push(generated, final=done)
    if piece:
        yield piece

    while not (done or text.stopped):
        if interrupt is not None and (reason := interrupt()):
            stats.stop_reason = reason
            break
        room = target.max_length - target.length - 1  # rows after the root that still fit
        if room < 0:
            stats.stop_reason = "context"
            break
        start = time.perf_counter()
        ctx = StepContext(tokens, len(prompt_ids), room, params, generator)
        # A step delivers at most its accepted path + the bonus token: no node deeper than the
        # tokens still wanted after the bonus is worth verifying.
        draft = drafter.propose(ctx).to_depth(max_new_tokens - len(generated) - 1)
        block = Block(tokens[-1], draft, drafter.aux_rows()).fitted(room)
        # One forward over root + draft tree (+ aux rows): the whole draft is scored at once.
        out = target.forward(block.tokens, block_positions(block), block_mask(block), hidden=features)
        logits, hidden = out if features else (out, None)
        verdict = verify(block.draft, logits, params, generator)
        kept = [0] + [i + 1 for i in verdict.accepted]  # root + accepted path stay cached
        target.commit(kept)
        if features:
            drafter.observe_features(hidden[kept])
        drafter.observe(block, logits, verdict)
        fresh = len(generated)
        done = accept(verdict.tokens)
        stats.decode_time += time.perf_counter() - start
        piece = text.push(generated[fresh:], final=done)
        # the caller gets the step's tokens up to EOS, the token limit or a stop string: count only those
        stats.record_step(depths(block.draft.parents), len(verdict.accepted), delivered=len(text.ids) - fresh)
        if piece:
            yield piece

    tail = text.push([], final=True)  # when the context window ended the generation
    if tail:
        yield tail
    if text.stopped:
        stats.stop_reason = "stop"
    stats.new_tokens = len(text.ids)
    return Result(text=text.text, token_ids=list(text.ids), stats=stats)


PREFILL_CHUNK = 128  # prompt rows per forward when the drafter reads features (bounds the logits kept)


def prefill(target, prompt_ids: list[int], drafter: Drafter):
    """Read the prompt; returns the logits after its last token, (vocab,). A drafter that reads
    features gets every prompt row's hidden states: the prompt is read as chunks of forwards with
    ``hidden=True`` (on the native runtime a row's results do not depend on its block, so this gives
    prefill's bits). TODO(runtime): a ``Target.prefill(ids, hidden=True)`` would spare the LM head
    over every prompt row."""
    if not drafter.reads_features:
        return target.prefill(prompt_ids)
    target.check_room(len(prompt_ids))
    target.reset()
    for at in range(0, len(prompt_ids), PREFILL_CHUNK):
        chunk = prompt_ids[at : at + PREFILL_CHUNK]
        logits, hidden = target.forward(chunk, list(range(len(chunk))), hidden=True)
        target.commit(list(range(len(chunk))))
        drafter.observe_features(hidden)
    return logits[-1]
