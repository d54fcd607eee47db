"""The decoding view: one self-contained HTML page that shows what parallel decoding did.

Step by step: the draft tree the target verified, the accepted path, the bonus token; and the output
text coloured by how each token came: an accepted draft token, the bonus token of a step that
drafted, a plain step's token (or the prefill's). ``paradec generate --html out.html`` writes it; the
server keeps it for a request that asks (``"paradec": {"view": true}``).

Recording costs nothing unless asked: ``Trace.step`` is the decoder's ``on_step`` hook and keeps each
step as a few lists of ints (no tensors: a sampled draft's distributions are dropped). The page is
one file, CSS and JavaScript inline, the data as JSON in it; its Content-Security-Policy allows no
network at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .decode import Result, Step
from .text import TextStream

TEMPLATE = Path(__file__).with_name("view.html")


@dataclass(frozen=True)
class StepRecord:
    """One step, as the page needs it. ``accepted``: node indices of the accepted path; ``tokens``:
    the verdict's tokens (accepted path, then the bonus); the caller received the first ``delivered``."""

    method: str
    root: int
    nodes: tuple[int, ...]
    parents: tuple[int, ...]
    aux: int  # unverified rows scored along (Lookahead's window)
    accepted: tuple[int, ...]
    tokens: tuple[int, ...]
    delivered: int
    drafting: tuple[int, int, float] | None = None  # (draft forwards, of those during verification, seconds waited): pearl


@dataclass
class Trace:
    """The steps of one generation: pass ``trace.step`` as ``on_step`` to ``paradec.stream``/``generate``."""

    steps: list[StepRecord] = field(default_factory=list)

    def step(self, step: Step) -> None:
        block, verdict = step.block, step.verdict
        self.steps.append(StepRecord(
            method=step.method, root=block.root, nodes=tuple(block.draft.tokens), parents=tuple(block.draft.parents),
            aux=len(block.aux) if block.aux is not None else 0, accepted=tuple(verdict.accepted),
            tokens=tuple(verdict.tokens), delivered=step.delivered,
            drafting=tuple(step.overlap) if step.overlap is not None else None))


def provenance(steps: list[StepRecord], n_tokens: int) -> list[tuple[str, int]]:
    """(kind, step) of each delivered token: the prefill's first, then each step's accepted draft
    tokens and its bonus ("bonus" after a draft, "plain" after none); step -1 is the prefill.

    Example: steps delivering [a, b, bonus] (2 accepted) then [c] (no draft) →
    ``[("prefill", -1), ("accepted", 0), ("accepted", 0), ("bonus", 0), ("plain", 1)]``.
    """
    out = [("prefill", -1)]
    for i, s in enumerate(steps):
        for j in range(s.delivered):
            if j < len(s.accepted):
                out.append(("accepted", i))
            else:
                out.append(("bonus" if s.nodes else "plain", i))
    return out[:n_tokens]


def page_data(trace: Trace, result: Result, tokenizer, prompt_ids: list[int], model_name: str = "") -> dict:
    """Everything the page shows, as JSON-ready data (token texts decoded here, once)."""
    stream = TextStream(tokenizer)
    stream.push(list(result.token_ids), final=True)
    pieces = [stream.text[a:b] for a, b in zip([0] + stream.ends[:-1], stream.ends)]  # each token's text

    def one(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    stats = result.stats
    return {
        "model": model_name,
        "prompt": tokenizer.decode(prompt_ids, skip_special_tokens=False),
        "stats": {"method": stats.method, "new_tokens": stats.new_tokens, "forward_passes": stats.forward_passes,
                  "accepted_tokens": stats.accepted_tokens, "draft_nodes": stats.draft_nodes,
                  "tokens_per_forward": round(stats.mean_accepted_length, 3), "methods": stats.methods,
                  "stop_reason": stats.stop_reason, "seconds": round(stats.total_time, 3)},
        "tokens": [{"text": text, "kind": kind, "step": step}
                   for text, (kind, step) in zip(pieces, provenance(trace.steps, len(pieces)))],
        "steps": [{"method": s.method, "root": one(s.root), "nodes": [one(t) for t in s.nodes],
                   "parents": list(s.parents), "aux": s.aux, "accepted": list(s.accepted),
                   "bonus": one(s.tokens[-1]) if s.delivered > len(s.accepted) else None,
                   "delivered": s.delivered,
                   "drafting": dict(zip(("forwards", "overlapped", "wait"), s.drafting)) if s.drafting else None}
                  for s in trace.steps],
    }


def render(data: dict) -> str:
    """The page: the template with ``data`` inlined (``<`` escaped, so no text can close the script)."""
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    return TEMPLATE.read_text(encoding="utf-8").replace("__PARADEC_DATA__", payload)


def write_view(path: str | Path, trace: Trace, result: Result, tokenizer, prompt_ids: list[int],
               model_name: str = "") -> Path:
    path = Path(path)
    path.write_text(render(page_data(trace, result, tokenizer, prompt_ids, model_name)), encoding="utf-8")
    return path
