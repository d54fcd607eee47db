"""Drafters, one module per method; importing this package imports (registers) the built-in ones,
which ``paradec.methods`` lists."""

from importlib import import_module

from ..methods import BUILTIN_METHODS
from .base import METHODS, Drafter, DrafterConfig, StepContext, make_drafter, register

for _method in BUILTIN_METHODS.values():
    import_module(f".{_method.module}", __name__)

__all__ = ["METHODS", "Drafter", "DrafterConfig", "StepContext", "make_drafter", "register"]
