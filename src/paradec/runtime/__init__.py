"""Runtimes: what runs the model for one sequence (``Target``), chosen by name like methods are.

- ``native`` (default): paradec's own runtime — flat packed weights (float32, bfloat16, int8 or 4-bit),
  a preallocated KV cache, row-invariant C++ kernels (a row's logits never depend on the other rows
  of its block, so verification and plain decoding agree bit for bit in every format);
- ``hf``: the transformers model as it is (any architecture transformers runs), the reference.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ParadecError

RUNTIMES = ("native", "hf")
DEFAULT_RUNTIME = "native"
# native runtime: auto (a GGUF file's own 4/8-bit blocks, else none), weights as they are, 8-bit, 4-bit
QUANTS = ("auto", "none", "int8", "int4")  # see runtime/loading.py
DEFAULT_QUANT = "auto"


def load_runtime(name: str, directory: Path, dtype, quant: str = DEFAULT_QUANT, gguf_file: Path | None = None):
    """Build runtime ``name`` for the model in ``directory`` (a transformers directory with safetensors)."""
    if name == "native":
        from .native import NativeRuntime

        return NativeRuntime.load(directory, dtype, quant, gguf_file)
    if name == "hf":
        if quant not in ("none", "auto"):
            raise ParadecError(f"--quant {quant} needs the native runtime (--runtime native)")
        from ..model.loading import load_pretrained
        from .hf import HFRuntime

        return HFRuntime(load_pretrained(directory, dtype))
    raise ParadecError(f"unknown runtime '{name}'; choose one of: {', '.join(RUNTIMES)}")


__all__ = ["DEFAULT_QUANT", "DEFAULT_RUNTIME", "QUANTS", "RUNTIMES", "load_runtime"]
