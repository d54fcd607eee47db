"""The drafter contract and the method registry.

A drafter proposes a token tree each step and learns from the outcome; it never touches the
target's KV cache or the verification rule. One name → class map serves the CLI, the server and
the benchmark.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import ParadecError
from ..sampling import SamplingParams
from ..tree import Draft

if TYPE_CHECKING:
    from ..model import Model
    from ..verify import Verdict


@dataclass
class StepContext:
    """What a drafter may read when proposing.

    tokens:    every committed token, prompt first; the last one is the root of the next draft
    prompt_length: how many of ``tokens`` are the prompt
    max_nodes: the most draft nodes the context window still has room for
    """

    tokens: list[int]
    prompt_length: int
    max_nodes: int
    params: SamplingParams
    generator: torch.Generator | None


@dataclass(frozen=True)
class DrafterConfig:
    """Base of every method's frozen config; subclasses validate their fields in ``__post_init__``."""


class Drafter:
    """Subclass, set ``name`` and ``Config``, and decorate with ``@register`` (a built-in method also
    gets a line in ``paradec.methods``)."""

    name: ClassVar[str]
    Config: ClassVar[type[DrafterConfig]] = DrafterConfig

    def __init__(self, model: "Model", config: DrafterConfig):
        self.model = model
        self.config = config

    def begin(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Reset per-generation state before the first step."""

    def propose(self, ctx: StepContext) -> Draft:
        raise NotImplementedError

    def observe(self, draft: Draft, logits: torch.Tensor, verdict: "Verdict") -> None:
        """Learn from a verified step. logits: (block, vocab), one row per block row."""


METHODS: dict[str, type[Drafter]] = {}


def register(cls: type[Drafter]) -> type[Drafter]:
    METHODS[cls.name] = cls
    return cls


def make_drafter(method: str, model: "Model", **options) -> Drafter:
    """Build a registered drafter; unknown methods and options are user errors."""
    try:
        cls = METHODS[method]
    except KeyError:
        raise ParadecError(f"unknown method '{method}'; choose one of: {', '.join(sorted(METHODS))}") from None
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(options) - fields
    if unknown:
        allowed = ", ".join(sorted(fields)) or "none"
        raise ParadecError(f"method '{method}' has no option(s) {', '.join(sorted(unknown))}; its options: {allowed}")
    try:
        config = cls.Config(**options)
    except (TypeError, ValueError) as exc:
        raise ParadecError(f"bad option for method '{method}': {exc}") from exc
    return cls(model, config)
