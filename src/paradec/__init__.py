"""paradec: parallel decoding for language models, lossless by construction.

    import paradec
    model = paradec.load("smollm2-135m", dtype="float32")
    result = paradec.generate(model, "Summarise: ...", method="plain", max_new_tokens=64)
    for piece in paradec.stream(model, "Hello", chat=True):
        print(piece, end="")
    samples = paradec.generate_n(model, "Once upon a time", n=4, temperature=0.8)  # one forward per step for all

``import paradec`` is light: each name below imports its module (and torch, transformers) on first
use, so the command line starts at once for commands that need no model.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING

# torch's OpenMP workers spin for a while after each of its operations; beside paradec's own kernel
# threads on a small machine they take the cores the kernels need (16 % of a 2-core forward's time).
# Read when torch loads: this takes effect when paradec is imported first (the command line does).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_MODULES = {  # public name -> the submodule that defines it
    "BUILTIN_MODELS": "model", "Model": "model", "load": "model",
    "METHODS": "drafters", "Drafter": "drafters", "make_drafter": "drafters",
    "Constraint": "constraints", "ContextOverflowError": "errors", "ParadecError": "errors",
    "Result": "decode", "SamplingParams": "sampling", "Stats": "stats", "Draft": "tree",
    "Stream": "api", "encode_prompt": "api", "generate": "api", "prepare": "api", "stream": "api",
    "Batch": "parallel.batch", "generate_n": "parallel.branches", "first_finish": "parallel.branches",
    "extract": "parallel.branches", "reason": "parallel.branches",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module 'paradec' has no attribute '{name}'")
    value = getattr(import_module(f".{_MODULES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and editors see
    from .api import Stream, encode_prompt, generate, prepare, stream
    from .constraints import Constraint
    from .decode import Result
    from .drafters import METHODS, Drafter, make_drafter
    from .errors import ContextOverflowError, ParadecError
    from .model import BUILTIN_MODELS, Model, load
    from .parallel.batch import Batch
    from .parallel.branches import extract, first_finish, generate_n, reason
    from .sampling import SamplingParams
    from .stats import Stats
    from .tree import Draft
