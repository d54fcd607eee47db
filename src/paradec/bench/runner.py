"""The harness: every contender on every prompt, interleaved, timed alike, outputs kept for the equality check.

Spec-Bench's rules: greedy, batch size 1, the same ``max_new_tokens`` for all, a warm-up before
timing, wall time per turn including prefill and excluding detokenisation. Contenders run one
after another on each prompt (plain first, the others in an order rotated per prompt), so a load
spike on a shared machine hits every method of that prompt rather than one method's whole run.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..drafters import METHODS, Drafter, make_drafter
from ..errors import ParadecError
from ..machine import cpu_times, others_busy
from ..model import Model
from .data import Conversation, Prompt

BASELINE = "plain"
DRAFT_FIELDS = ("draft", "draft_model")  # config fields that name a second model


@dataclass
class Run:
    """One contender's answer to one turn."""

    token_ids: list[int]  # generated ids, EOS excluded
    seconds: float  # prefill + decoding, detokenisation excluded
    forward_passes: int  # target forwards after the prefill
    accepted_tokens: int  # draft tokens accepted (tokens per forward = (accepted + forwards) / forwards)


class Contender(Protocol):
    name: str
    kind: str  # "paradec" or "peer"

    def run(self, prompt_ids: list[int], max_new_tokens: int) -> Run: ...


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def describe(self, text: str) -> None: ...
    def advance(self) -> None: ...


class ParadecMethod:
    """A registered method, one drafter instance for the whole benchmark (as a server would keep it)."""

    kind = "paradec"

    def __init__(self, model: Model, name: str, options: dict | None = None):
        self.name = name
        self.model = model
        self.drafter: Drafter = make_drafter(name, model, **(options or {}))

    def run(self, prompt_ids: list[int], max_new_tokens: int) -> Run:
        from ..api import generate

        result = generate(self.model, prompt_ids, self.drafter, max_new_tokens=max_new_tokens)
        s = result.stats
        return Run(result.token_ids, s.total_time, s.forward_passes, s.accepted_tokens)


def needs_extra_model(cls: type[Drafter]) -> bool:
    """A method whose config needs a second model (a draft model; ``auto`` only takes one if given) or
    cannot be built with defaults."""
    fields = dataclasses.fields(cls.Config)
    if any(f.name in DRAFT_FIELDS and f.default is not None for f in fields):
        return True
    return any(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)


def default_methods() -> list[str]:
    """Every registered lossless method that needs no extra model, plain first (resolved at run time)."""
    names = [n for n, cls in sorted(METHODS.items()) if getattr(cls, "lossless", True) and not needs_extra_model(cls)
             and not getattr(cls, "needs_constraint", False)]  # ``forced`` is plain without one (--suite structured)
    return [BASELINE] + [n for n in names if n != BASELINE]


def resolve_methods(spec: str | None, draft: str | None = None) -> list[str]:
    """``None``/"default" → ``default_methods()`` (plus draft-model methods when ``draft`` is given);
    "all" → every registered method; else a comma list. Plain is always first: it is the baseline."""
    if spec in (None, "", "default"):
        names = default_methods()
        if draft:
            names += [n for n, cls in sorted(METHODS.items()) if n not in names and needs_extra_model(cls)]
    elif spec == "all":
        names = [BASELINE] + sorted(n for n in METHODS if n != BASELINE)
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in METHODS and n != "default"]
        if unknown:
            raise ParadecError(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(sorted(METHODS))}")
        expanded: list[str] = []
        for n in names:
            expanded += default_methods() if n == "default" else [n]
        names = expanded
    return [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]


def method_options(name: str, options: dict, draft: str | None) -> dict:
    opts = dict(options.get(name, {}))
    if draft and any(f.name == "draft" for f in dataclasses.fields(METHODS[name].Config)):
        opts.setdefault("draft", draft)
    return opts


def machine_info(threads: int) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


QUIET_WINDOW = 0.5  # seconds idle after set-up, to read how busy other processes keep the machine


@dataclass
class Outcome:
    """Everything the report needs: per-turn records, contenders that could not run, and the run's context."""

    records: list[dict] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> reason
    meta: dict = field(default_factory=dict)


def warm_up(contenders: list[Contender], ids: list[int], outcome: Outcome) -> list[Contender]:
    """One short untimed generation each (allocators, kernels, lazy imports); a failure here drops the
    contender with its reason instead of failing the whole run."""
    ready = []
    for c in contenders:
        try:
            c.run(ids, 8)
        except Exception as exc:  # a peer library may fail in any way; report it, keep benchmarking
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            outcome.unavailable[c.name] = f"failed on warm-up: {type(exc).__name__}: {first_line}"
            continue
        ready.append(c)
    return ready


def run_bench(
    model: Model,
    prompts: list[Prompt],
    contenders: list[Contender],
    max_new_tokens: int,
    repeats: int = 1,
    outcome: Outcome | None = None,
    progress: "Progress | None" = None,
) -> Outcome:
    """Run ``contenders`` (the first is plain decoding) on every turn of every prompt, ``repeats`` times.

    Turn t > 0 of a prompt is asked after the baseline's own answers to the earlier turns (from the
    first repeat), so every contender decodes the same conversation.
    """
    from ..api import encode_prompt

    outcome = outcome or Outcome()
    if not contenders or contenders[0].name != BASELINE:
        raise ParadecError("the first contender must be plain decoding (the baseline)")
    load_before = load_average()  # includes our own set-up (model load, kernel build, cost curve, warm-up)
    first = encode_prompt(model, [{"role": "user", "content": prompts[0].turns[0]}])
    contenders = [contenders[0]] + warm_up(contenders, first, outcome)[1:]
    if BASELINE in outcome.unavailable:
        raise ParadecError(f"plain decoding fails: {outcome.unavailable[BASELINE]}")
    quiet = cpu_times()  # after set-up and warm-up (auto's cost curve is measured there): we idle a moment
    time.sleep(QUIET_WINDOW)
    begun = cpu_times()
    if progress:
        progress.start(sum(len(p.turns) for p in prompts) * repeats * len(contenders))
    load_samples = []
    for p_index, prompt in enumerate(prompts):
        others = contenders[1:]
        k = p_index % len(others) if others else 0
        order = [contenders[0]] + others[k:] + others[:k]
        talk = Conversation(prompt)
        for turn in range(len(prompt.turns)):
            ids = encode_prompt(model, talk.messages(turn))
            for rep in range(repeats):
                for c in order:
                    if progress:
                        progress.describe(f"{prompt.id} turn {turn + 1}: {c.name}")
                    record = {"prompt_id": prompt.id, "category": prompt.category, "turn": turn, "repeat": rep,
                              "method": c.name, "kind": c.kind, "prompt_tokens": len(ids)}
                    try:
                        r = c.run(ids, max_new_tokens)
                    except Exception as exc:
                        if c.name == BASELINE:
                            raise
                        record["error"] = f"{type(exc).__name__}: {exc}"
                    else:
                        record.update(seconds=r.seconds, new_tokens=len(r.token_ids), forward_passes=r.forward_passes,
                                      accepted_tokens=r.accepted_tokens, token_ids=r.token_ids)
                        if c.name == BASELINE and rep == 0 and turn + 1 < len(prompt.turns):
                            talk.answers.append(model.tokenizer.decode(r.token_ids, skip_special_tokens=True))
                    outcome.records.append(record)
                    if progress:
                        progress.advance()
        load_samples.append(load_average()[:1])
    outcome.meta.update(load_before=load_before, load_after=load_average(),
                        load_max_1min=max((s[0] for s in load_samples if s), default=None),
                        others_before=others_busy(quiet, begun), others_during=others_busy(begun, cpu_times()))
    return outcome
