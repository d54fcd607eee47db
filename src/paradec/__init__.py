"""paradec: parallel decoding for language models, lossless by construction.

    import paradec
    model = paradec.load("smollm2-135m", dtype="float32")
    result = paradec.generate(model, "Summarise: ...", method="plain", max_new_tokens=64)
    for piece in paradec.stream(model, "Hello", chat=True):
        print(piece, end="")
"""

from .api import Stream, encode_prompt, generate, stream
from .decode import Result
from .drafters import METHODS, Drafter, make_drafter
from .errors import ContextOverflowError, ParadecError
from .model import BUILTIN_MODELS, Model, load
from .sampling import SamplingParams
from .stats import Stats
from .tree import Draft

__all__ = [
    "BUILTIN_MODELS",
    "METHODS",
    "ContextOverflowError",
    "Draft",
    "Drafter",
    "Model",
    "ParadecError",
    "Result",
    "SamplingParams",
    "Stats",
    "Stream",
    "encode_prompt",
    "generate",
    "load",
    "make_drafter",
    "stream",
]
