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
from ..tree import AuxRows, Block, Draft
from .defaults import with_defaults

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


# Upper bounds shared by the drafters' options: generous for real use, cheap in the worst case, so
# that no option (a request's, on the server) can make one step arbitrarily expensive.
MAX_NODES = 128  # draft tree nodes = block rows after the root (a forward over ~128 rows)
MAX_DEPTH = 32  # tokens along one draft path (for an LM drafter: its forwards per step)


@dataclass(frozen=True)
class DrafterConfig:
    """Base of every method's frozen config; subclasses validate their fields in ``__post_init__``
    with the ``check_*`` helpers below, each field between a lower and an upper bound."""


def check_int(config: DrafterConfig, name: str, low: int, high: int, *, optional: bool = False) -> None:
    """Raise a ValueError naming the option unless it is an integer in [low, high] (or None if optional)."""
    value = getattr(config, name)
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        default = " (or null for the default)" if optional else ""
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{default}, got {value!r}")


def check_number(config: DrafterConfig, name: str, low: float, high: float, *, optional: bool = False,
                 below_high: bool = False) -> None:
    """Raise a ValueError naming the option unless it is a number in [low, high] ([low, high) if
    ``below_high``; None allowed if optional)."""
    value = getattr(config, name)
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok or (below_high and value == high):
        default = " (or null for the default)" if optional else ""
        end = ")" if below_high else "]"
        raise ValueError(f"{name} must be a number in [{low}, {high}{end}{default}, got {value!r}")


def check_bool(config: DrafterConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


class Drafter:
    """Subclass, set ``name`` and ``Config``, and decorate with ``@register`` (a built-in method also
    gets a line in ``paradec.methods``)."""

    name: ClassVar[str]
    Config: ClassVar[type[DrafterConfig]] = DrafterConfig
    # True for a drafter that learns from any verified block, whoever drafted it (Token Recycling's
    # table): ``auto`` lets it observe every step, not only the steps that sent its own drafts.
    learns_from_any_block: ClassVar[bool] = False

    def __init__(self, model: "Model", config: DrafterConfig):
        self.model = model
        self.config = with_defaults(self.name, config, model)  # None options: by dtype and runtime

    def begin(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Reset per-generation state before the first step."""

    def propose(self, ctx: StepContext) -> Draft:
        raise NotImplementedError

    def aux_rows(self) -> AuxRows | None:
        """Unverified rows to score along with the draft just proposed (Lookahead's window); most
        methods have none. The loop may drop them whole when the context is nearly full."""
        return None

    def drafting_cost(self) -> float:
        """What drafting costs per draft node, in one-row forwards of the target: 0 for drafters that run
        no model (their bookkeeping is small next to a forward). ``auto`` adds it to a draft's cost."""
        return 0.0

    def step_method(self) -> str:
        """The method whose draft the last ``propose`` returned, for ``Stats.methods``: this drafter's
        own name; ``auto`` names the method it picked that step, or "plain" when it drafted nothing."""
        return self.name

    def observe(self, block: Block, logits: torch.Tensor, verdict: "Verdict") -> None:
        """Learn from a verified step. ``block``: what the target read: the proposed draft (cut to
        fit the context near its end) and the aux rows, or ``aux=None`` if there were none or they
        were dropped. logits: (len(block), vocab), one row per block row."""


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
