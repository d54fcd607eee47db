"""Drafters, one module per method; importing this package registers them all."""

from . import plain  # noqa: F401  (registers)
from . import jacobi  # noqa: F401  (registers)
from . import lookahead  # noqa: F401  (registers)
from . import ngram  # noqa: F401  (registers)
from . import recycling  # noqa: F401  (registers)
from . import draft_model, layerskip  # noqa: F401  (registers)
from .base import METHODS, Drafter, DrafterConfig, StepContext, make_drafter, register

__all__ = ["METHODS", "Drafter", "DrafterConfig", "StepContext", "make_drafter", "register"]
