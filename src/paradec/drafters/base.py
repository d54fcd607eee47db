"""The drafter contract and the method registry.

A drafter proposes a token tree each step and learns from the outcome; it never touches the
target's KV cache or the verification rule. One name → class map serves the CLI, the server and
the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import ParadecError
from ..options import build_config
from ..sampling import SamplingParams
from ..tree import AuxRows, Block, Draft
from .defaults import with_defaults

if TYPE_CHECKING:
    from ..model import Model
    from ..stats import Overlap
    from ..verify import Verdict


@dataclass
class StepContext:
    """What a drafter may read when proposing.

    tokens:    every committed token, prompt first; the last one is the root of the next draft
    prompt_length: how many of ``tokens`` are the prompt
    max_nodes: the most draft nodes the context window still has room for
    forced:    how many of ``tokens`` (the last ones) a grammar forced this step: they are not committed
               yet but certain to be, drafted ahead of this draft (``paradec.constraints.forced``)
    """

    tokens: list[int]
    prompt_length: int
    max_nodes: int
    params: SamplingParams
    generator: torch.Generator | None
    forced: int = 0


# Upper bounds shared by the drafters' options: generous for real use, cheap in the worst case, so
# that no option (a request's, on the server) can make one step arbitrarily expensive.
MAX_NODES = 128  # draft tree nodes = block rows after the root (a forward over ~128 rows)
MAX_DEPTH = 32  # tokens along one draft path (for an LM drafter: its forwards per step)


@dataclass(frozen=True)
class DrafterConfig:
    """Base of every method's frozen config; subclasses validate their fields in ``__post_init__``
    with the ``check_*`` helpers (``paradec.options``), each field between a lower and an upper bound."""


class Drafter:
    """Subclass, set ``name`` and ``Config``, and decorate with ``@register`` (a built-in method also
    gets a line in ``paradec.methods``)."""

    name: ClassVar[str]
    Config: ClassVar[type[DrafterConfig]] = DrafterConfig
    # True for a drafter that learns from any verified block, whoever drafted it (Token Recycling's
    # table): ``auto`` lets it observe every step, not only the steps that sent its own drafts.
    learns_from_any_block: ClassVar[bool] = False
    # True: the loop asks the target for its hidden states and passes them to ``observe_features``
    # (trained heads read them); False spares the loop that work.
    reads_features: ClassVar[bool] = False
    # True for a drafter that sizes its own draft by the cost curve (``merge``): ``auto`` then lets its
    # draft grow to any size the observed acceptance pays for, without its own step-by-step growth limit.
    sizes_itself: ClassVar[bool] = False

    def __init__(self, model: "Model", config: DrafterConfig):
        self.model = model
        self.config = with_defaults(self.name, config, model)  # None options: by dtype and runtime

    def begin(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Reset per-generation state before the first step."""

    def end(self) -> None:
        """The generation is over, or abandoned on an error: give back what it held (``pearl``: its
        drafting thread's work, the loop thread's own cores). Called on the loop's thread; may come twice."""

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

    def drafting_report(self) -> "Overlap | None":
        """What drafting did for the step just verified, asked after ``observe``: its drafting forwards,
        how many ran while the target verified, the seconds the loop waited (``pearl``); None for the
        drafters that draft on the loop's thread."""
        return None

    def observe_features(self, features: torch.Tensor) -> None:
        """The target's final-normed hidden states (n, d) of the rows it just committed, in order: the
        prompt's after the prefill, then after each step the root's and the accepted nodes' (before
        ``observe``). Together they cover every committed token but the newest (the next root).
        Called only when ``reads_features``."""

    def use_corpus(self, corpus) -> None:
        """Read and add to ``corpus`` (a ``suffix.SuffixCorpus``: a server's, one per API key) instead of
        a corpus of its own; drafters without one ignore it, those that hold others pass it on."""

    def finish(self, tokens: list[int]) -> None:
        """The generation ended; ``tokens``: every committed token, prompt first (``suffix`` keeps the
        conversation in its corpus)."""

    def observe(self, block: Block, logits: torch.Tensor, verdict: "Verdict") -> None:
        """Learn from a verified step. ``block``: what the target read: the proposed draft (cut to
        fit the context near its end) and the aux rows, or ``aux=None`` if there were none or they
        were dropped. logits: (len(block), vocab), one row per block row."""


class CompositeDrafter(Drafter):
    """A drafter over other drafters (``auto``, ``merge``): the hooks each inner one needs pass through.
    Subclasses list them in ``inner`` and set ``reads_features`` when any of them reads features."""

    def inner(self) -> list[Drafter]:
        raise NotImplementedError

    def finish(self, tokens: list[int]) -> None:
        for d in self.inner():
            d.finish(tokens)

    def end(self) -> None:
        for d in self.inner():
            d.end()

    def use_corpus(self, corpus) -> None:
        for d in self.inner():
            d.use_corpus(corpus)

    def observe_features(self, features: torch.Tensor) -> None:
        for d in self.inner():
            if d.reads_features:
                d.observe_features(features)


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
    return cls(model, build_config(cls.Config, method, options))
