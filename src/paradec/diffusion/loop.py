"""The denoising loop, for every diffusion decoder: forward → select → commit, block after block.

It returns the same ``Result`` / ``Stats`` as ``decode.py`` and streams through the same ``TextStream``:
text is final once every position before it is decided, so it streams as the decided prefix grows.
The generation ends when that prefix reaches an EOS token or ``max_new_tokens`` (later blocks are
never decoded), at a stop string, or when ``interrupt`` says so.

Stats of a diffusion generation: ``forward_passes`` counts every forward (there is no separate
prefill; the first forward reads the prompt), ``mean_accepted_length`` is positions decided per
forward (``accepted_tokens`` = decided positions - forwards), ``new_tokens`` the tokens delivered.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from ..decode import Result
from ..model import Model
from ..sampling import SamplingParams
from ..stats import Stats
from ..text import TextStream
from .canvas import Canvas
from .decoders import Decoder, Selection, StepView


def layout(model: Model, decoder: Decoder, max_new_tokens: int) -> tuple[int, int]:
    """(block length, blocks) of a generation: ``block_length`` (the model's own block size for block
    diffusion), no longer than the generation; the canvas is ``block * blocks`` >= ``max_new_tokens``."""
    block = model.diffusion.block_size or min(decoder.config.block_length, max(max_new_tokens, 1))
    return block, -(-max_new_tokens // block)


def denoise(
    model: Model,
    decoder: Decoder,
    prompt_ids: list[int],
    params: SamplingParams,
    max_new_tokens: int,
    stop: list[str] | None = None,
    interrupt: Callable[[], str | None] | None = None,
    trace: Callable[[Canvas, int, StepView, Selection], None] | None = None,
) -> Iterator[str]:
    """Generate up to ``max_new_tokens`` tokens after ``prompt_ids``; yield text pieces, return a ``Result``.

    The canvas holds ``max_new_tokens`` positions rounded up to whole blocks (``block_length``, or the
    model's own block size for block diffusion). ``trace(canvas, block, view, selection)`` is called
    after each step (decoding traces for the learned commit filter, tests).
    """
    spec = model.diffusion
    stats = Stats(method=decoder.name, prompt_tokens=len(prompt_ids))
    text = TextStream(model.tokenizer, stop)
    if max_new_tokens <= 0:
        stats.stop_reason = "length"
        return Result(text="", token_ids=[], stats=stats)
    block, blocks = layout(model, decoder, max_new_tokens)
    canvas = Canvas(model.target(), spec, prompt_ids, blocks * block, block, decoder.config.cache)
    eos, mask = model.eos_token_ids, spec.mask_token_id
    generator = None if params.greedy else params.generator()
    P, delivered, decided, done = len(prompt_ids), 0, 0, False

    def deliver() -> list[int]:
        """The newly decided prefix up to EOS / the token limit; sets ``stats.stop_reason`` when it ends there."""
        nonlocal delivered
        new = []
        for token in canvas.tokens[P + delivered :]:
            if token == mask:
                break
            if token in eos:
                stats.stop_reason = "eos"
                break
            new.append(token)
            delivered += 1
            if delivered >= max_new_tokens:
                stats.stop_reason = "length"
                break
        return new

    for b in range(blocks):
        masked = canvas.masked(b)
        decoder.begin_block(int(masked.sum()), blocks)
        logits, step = None, 0
        while not done and bool(masked.any()):
            if interrupt is not None and (reason := interrupt()):
                stats.stop_reason, done = reason, True
                break
            start = time.perf_counter()
            if logits is None:
                logits = canvas.forward(b)[0]
            view = StepView(logits, masked, step, 1 - float(masked.sum()) / block, params, generator)
            selection = decoder.select(view)
            now = len(selection.positions) - selection.draft
            if now < 1:
                raise RuntimeError(f"decoder {decoder.name} committed nothing")
            canvas.commit(b, selection.positions[:now], selection.tokens[:now])
            decided += now
            logits = None
            piece = text.push(deliver(), final=bool(stats.stop_reason))
            if selection.draft and not (stats.stop_reason or text.stopped):  # draft-and-verify: states after each draft token
                draft = list(zip(selection.positions[now:], selection.tokens[now:]))
                outs = canvas.forward(b, [draft[:i] for i in range(len(draft) + 1)])
                base = canvas.masked(b)
                views = []
                for i, out in enumerate(outs):
                    m = base.clone()
                    m[[p for p, _ in draft[:i]]] = False
                    views.append(StepView(out, m, step, view.progress, params, generator))
                accepted = decoder.verify(views, draft)
                canvas.commit(b, [p for p, _ in draft[:accepted]], [t for _, t in draft[:accepted]])
                decided += accepted
                logits = outs[accepted]
                piece += text.push(deliver(), final=bool(stats.stop_reason))
            if trace is not None:
                trace(canvas, b, view, selection)
            masked, step = canvas.masked(b), step + 1
            done = bool(stats.stop_reason) or text.stopped
            stats.decode_time += time.perf_counter() - start
            if piece:
                yield piece
        if done:
            break
    tail = text.push([], final=True)
    if tail:
        yield tail
    if text.stopped:
        stats.stop_reason = "stop"
    stats.stop_reason = stats.stop_reason or "length"
    stats.forward_passes = canvas.forwards
    stats.accepted_tokens = decided - canvas.forwards
    stats.new_tokens = len(text.ids)
    return Result(text=text.text, token_ids=list(text.ids), stats=stats)
