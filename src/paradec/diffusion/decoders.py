"""Diffusion decoders: after each forward pass, which masked positions of the current block to commit.

A decoder is a small class like a drafter: a frozen ``Config`` validated on construction, and
``select(view) -> Selection``. The loop (``loop.py``) owns the forwards, the KV cache and the
commits; a decoder only reads the block's logits. One name → class registry (``DECODERS``) serves
the CLI, the Python API and the benchmark.

Options every decoder shares (``DecoderConfig``): ``block_length`` (semi-autoregressive blocks:
positions of later blocks stay masked until the earlier ones are decided) and ``cache``:

- ``none``: every forward reads the whole sequence (exact);
- ``prefix`` (Fast-dLLM): a block's first forward reads everything and caches the positions before
  the block; the block's later forwards read the block and what follows it;
- ``dual`` (Fast-dLLM): the first forward also caches the positions after the block; later forwards
  read the block alone.
At each block's first forward all three read the same rows, so their logits there are equal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import ParadecError
from ..options import build_config, check_int, check_number
from ..sampling import SamplingParams
from . import rules

if TYPE_CHECKING:
    from ..model import Model

CACHES = ("none", "prefix", "dual")
MAX_BLOCK = 1024


@dataclass
class StepView:
    """What a decoder reads at one step of one block.

    logits:   (n, vocab) row j predicts block position j (shifted models already realigned)
    masked:   (n,) bool, positions still undecided
    step:     forwards so far in this block (0 at its first step)
    progress: fraction of the block's positions decided
    """

    logits: torch.Tensor
    masked: torch.Tensor
    step: int
    progress: float
    params: SamplingParams
    generator: torch.Generator | None
    _candidates: tuple | None = field(default=None, repr=False)

    def candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (n,), confidence (n,)) — see ``rules.candidates``; computed once per view."""
        if self._candidates is None:
            self._candidates = rules.candidates(self.logits, self.masked, self.params, self.generator)
        return self._candidates


@dataclass
class Selection:
    """Block positions to commit, in commit order, with their tokens. The last ``draft`` entries are not
    commits but a draft for the loop to verify (the lossless decoder's)."""

    positions: list[int]
    tokens: list[int]
    draft: int = 0

    @classmethod
    def of(cls, view: StepView, positions: list[int]) -> "Selection":
        tokens, _ = view.candidates()
        return cls(positions, [int(tokens[i]) for i in positions])


@dataclass(frozen=True)
class DecoderConfig:
    block_length: int = 32
    cache: str = "none"

    def __post_init__(self) -> None:
        check_int(self, "block_length", 1, MAX_BLOCK)
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {', '.join(CACHES)}, got {self.cache!r}")


class Decoder:
    """Subclass, set ``name`` and ``Config``, decorate with ``@register``; its one-line summary goes in
    ``paradec.methods.DIFFUSION_DECODERS`` (listed without importing torch)."""

    name: ClassVar[str]
    Config: ClassVar[type[DecoderConfig]] = DecoderConfig
    lossless: ClassVar[bool] = False  # output equals the one-token-per-step greedy decode
    from_auto: bool = False  # made for the method "auto"
    greedy_only: ClassVar[bool] = False  # refuses sampling

    def __init__(self, model: "Model", config: DecoderConfig):
        self.model, self.config = model, config

    def begin_block(self, masked: int, blocks: int) -> None:
        """Reset per-block state; ``masked`` positions to decide, ``blocks`` in the generation."""

    def select(self, view: StepView) -> Selection:
        raise NotImplementedError

    def verify(self, views: list[StepView], draft: list[tuple[int, int]]) -> int:
        """For a selection with a draft: how many draft entries to commit, given the logits of the
        states before each (``views[j]``: the canvas with the first j draft entries filled in)."""
        raise NotImplementedError


DECODERS: dict[str, type[Decoder]] = {}
BASELINE = "low_confidence"  # with its default options: one token per step, the reference for every decoder


def register(cls: type[Decoder]) -> type[Decoder]:
    DECODERS[cls.name] = cls
    return cls


def make_decoder(name: str, model: "Model", **options) -> Decoder:
    """Build a registered decoder; unknown decoders and options are user errors."""
    from . import learned, lossless  # noqa: F401  (they register themselves)

    auto = name == "auto"  # the default method: the lossless decoder (prepare_denoising falls back to the baseline when sampling)
    if name == "plain":
        name = BASELINE
    elif auto:
        name = "lossless"
    try:
        cls = DECODERS[name]
    except KeyError:
        raise ParadecError(f"unknown method '{name}' for a diffusion LM; choose one of: {', '.join(sorted(DECODERS))}") from None
    decoder = cls(model, build_config(cls.Config, name, options))
    decoder.from_auto = auto
    return decoder


# --- the rules as decoders -------------------------------------------------------------------------

@dataclass(frozen=True)
class LowConfidenceConfig(DecoderConfig):
    steps: int | None = None  # steps per block; None: one token per step

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "steps", 1, MAX_BLOCK, optional=True)


@register
class LowConfidence(Decoder):
    """LLaDA: commit a fixed number of the most confident positions per step (``num_transfer_tokens``)."""

    name = "low_confidence"
    Config = LowConfidenceConfig

    def begin_block(self, masked: int, blocks: int) -> None:
        self.schedule = rules.num_transfer_tokens(masked, min(self.config.steps or masked, masked))

    def select(self, view: StepView) -> Selection:
        k = self.schedule[view.step] if view.step < len(self.schedule) else 1
        return Selection.of(view, rules.low_confidence(view.candidates()[1], k))


@dataclass(frozen=True)
class ThresholdConfig(DecoderConfig):
    threshold: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "threshold", 0.0, 1.0)


@register
class Threshold(Decoder):
    name = "threshold"
    Config = ThresholdConfig

    def select(self, view: StepView) -> Selection:
        return Selection.of(view, rules.threshold(view.candidates()[1], self.config.threshold))


@dataclass(frozen=True)
class FactorConfig(DecoderConfig):
    factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "factor", 0.0, 100.0)


@register
class Factor(Decoder):
    name = "factor"
    Config = FactorConfig

    def select(self, view: StepView) -> Selection:
        return Selection.of(view, rules.factor(view.candidates()[1], self.config.factor))


@dataclass(frozen=True)
class LocalLeapConfig(DecoderConfig):
    anchor_threshold: float = 0.9
    local_threshold: float = 0.6
    radius: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "anchor_threshold", 0.0, 1.0)
        check_number(self, "local_threshold", 0.0, self.anchor_threshold)
        check_int(self, "radius", 1, MAX_BLOCK)


@register
class LocalLeap(Decoder):
    name = "localleap"
    Config = LocalLeapConfig

    def select(self, view: StepView) -> Selection:
        c = self.config
        return Selection.of(view, rules.local_leap(view.candidates()[1], c.anchor_threshold, c.local_threshold, c.radius))


@dataclass(frozen=True)
class CreditConfig(DecoderConfig):
    threshold: float = 0.9
    alpha: float = 0.5  # weight of log(1 + credit) in the fused logits
    beta: float = 0.7  # decay of the credit per step
    gamma: float = 1.0  # exponent of the probability a step adds

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "threshold", 0.0, 1.0)
        check_number(self, "alpha", 0.0, 10.0)
        check_number(self, "beta", 0.0, 1.0)
        check_number(self, "gamma", 0.0, 10.0)


@register
class Credit(Decoder):
    """CreditDecoding: the threshold rule on logits fused with each position's trace credit."""

    name = "credit"
    Config = CreditConfig

    def begin_block(self, masked: int, blocks: int) -> None:
        self.credit = None

    def select(self, view: StepView) -> Selection:
        c = self.config
        if self.credit is None:
            self.credit = torch.zeros(view.logits.shape, dtype=torch.float64)
        self.credit = rules.credit_update(self.credit, view.logits, view.masked, c.beta, c.gamma)
        fused = dataclasses.replace(view, logits=rules.credit_fuse(view.logits, self.credit, c.alpha), _candidates=None)
        return Selection.of(fused, rules.threshold(fused.candidates()[1], c.threshold))


@dataclass(frozen=True)
class EarlyCommitConfig(LowConfidenceConfig):
    gaps: tuple[float, float, float] = (7.5, 5.0, 2.5)  # logit-gap thresholds: early, middle, late in the block

    def __post_init__(self) -> None:
        super().__post_init__()
        gaps = tuple(self.gaps) if isinstance(self.gaps, (list, tuple)) else ()
        if len(gaps) != 3 or not all(isinstance(g, (int, float)) and not isinstance(g, bool) and g >= 0 for g in gaps):
            raise ValueError(f"gaps must be three numbers >= 0, got {self.gaps!r}")
        object.__setattr__(self, "gaps", gaps)


@register
class EarlyCommit(LowConfidence):
    """Prophet: the fixed schedule until the answer is decided (top-1/top-2 gap), then everything at once."""

    name = "early_commit"
    Config = EarlyCommitConfig

    def select(self, view: StepView) -> Selection:
        if rules.early_commit(rules.top2_gap(view.logits), view.masked, view.progress, self.config.gaps):
            return Selection.of(view, rules.ranked(view.candidates()[1]))
        return super().select(view)
