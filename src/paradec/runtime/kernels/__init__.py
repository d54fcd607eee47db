"""The C++ kernels of the native runtime, loaded through ctypes (``common.h`` says what is where).

``kernels()`` gives the library built for this machine (``build.py`` builds and caches it);
``kernels(variant)`` a narrower instruction-set path this CPU can also run (the tests check each).
``Kernels`` mirrors the C interface of ``api.h``: the structures and the calls; ``runtime/ops.py``
fills the structures from packed weights.
"""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache

from .build import KernelsUnavailable, build_key, library, missing_tools, runnable_variants

log = logging.getLogger(__name__)
ABI = 3  # api.cpp's pd_abi()
MAX_PARTS = 4
FMT_CODES = {"f32": 0, "bf16": 1, "bf16-tiled": 2, "q8_0": 10, "q4_0": 11, "q4_1": 12, "q4_k": 13, "q5_k": 14, "q6_k": 15,
             "q5_0": 16, "q5_1": 17}  # quant.h's Fmt

i64p = ctypes.POINTER(ctypes.c_int64)
f32p = ctypes.POINTER(ctypes.c_float)


class Part(ctypes.Structure):
    _fields_ = [("fmt", ctypes.c_int32), ("pad", ctypes.c_int32), ("N", ctypes.c_int64), ("w", ctypes.c_void_p)]


class LinearC(ctypes.Structure):
    _fields_ = [("N", ctypes.c_int64), ("K", ctypes.c_int64), ("nparts", ctypes.c_int32), ("pad", ctypes.c_int32),
                ("bias", ctypes.c_void_p), ("parts", Part * MAX_PARTS)]


class LayerC(ctypes.Structure):
    _fields_ = [("qkv", LinearC), ("o", LinearC), ("gate_up", LinearC), ("down", LinearC),
                ("attn_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p)]


class ModelC(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int32), ("hidden", ctypes.c_int32), ("heads", ctypes.c_int32),
                ("kv_heads", ctypes.c_int32), ("head_dim", ctypes.c_int32), ("inter", ctypes.c_int32),
                ("eps", ctypes.c_float), ("kv_bf16", ctypes.c_int32), ("layer", ctypes.POINTER(LayerC)),
                ("norm", ctypes.c_void_p)]


class RowsC(ctypes.Structure):
    _fields_ = [("M", ctypes.c_int64), ("positions", ctypes.c_void_p), ("store", ctypes.c_void_p), ("seq", ctypes.c_void_p),
                ("start", ctypes.POINTER(ctypes.c_void_p)), ("prefix", ctypes.c_void_p), ("extra", ctypes.c_void_p),
                ("E", ctypes.c_int64), ("caches", ctypes.POINTER(ctypes.c_void_p)), ("caps", ctypes.c_void_p),
                ("sequences", ctypes.c_int64), ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p), ("P", ctypes.c_int64)]


class KernelError(RuntimeError):
    """A kernel refused its input (the message says why)."""


class Kernels:
    """One built kernel library: its calls, with errors raised as ``KernelError``."""

    def __init__(self, path, variant: str):
        self.path, self.variant = path, variant
        try:
            lib = ctypes.CDLL(str(path))
            abi = lib.pd_abi()
        except (OSError, AttributeError) as exc:  # a library that does not load or is not ours
            raise KernelsUnavailable(f"paradec's CPU kernels at {path} do not load: {exc}") from None
        if abi != ABI:
            raise KernelsUnavailable(f"paradec's CPU kernels at {path} have interface {abi}, expected {ABI}")
        lib.pd_isa.restype = ctypes.c_char_p
        lib.pd_last_error.restype = ctypes.c_char_p
        lib.pd_tile_bytes.restype = ctypes.c_int64
        lib.pd_tile_bytes.argtypes = [ctypes.c_int32, ctypes.c_int64]
        lib.pd_set_threads.argtypes = [ctypes.c_int]
        lib.pd_use_own_pool.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.pd_matmul.argtypes = [ctypes.POINTER(LinearC), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        lib.pd_embed.argtypes = [ctypes.POINTER(LinearC), ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        lib.pd_layers.argtypes = [ctypes.POINTER(ModelC), ctypes.c_int64, ctypes.POINTER(RowsC), ctypes.c_void_p, ctypes.c_void_p]
        self.lib = lib
        self.isa = lib.pd_isa().decode()
        self._threads = None

    def _check(self, status: int) -> None:
        if status != 0:
            raise KernelError(self.lib.pd_last_error().decode())

    def set_threads(self, threads: int) -> None:
        """Size of the shared thread pool (the caller takes part); a no-op when unchanged."""
        if threads != self._threads:
            self._check(self.lib.pd_set_threads(int(threads)))
            self._threads = threads

    def use_own_pool(self, threads: int, cpus: list[int] | None = None) -> None:
        """Give the calling thread its own pool of ``threads`` threads pinned to ``cpus`` (0: the shared pool)."""
        cpus = list(cpus or [])
        arr = (ctypes.c_int * max(1, len(cpus)))(*cpus)
        self._check(self.lib.pd_use_own_pool(int(threads), arr, len(cpus)))

    def tile_bytes(self, fmt: str, K: int) -> int:
        return int(self.lib.pd_tile_bytes(FMT_CODES[fmt], K))

    def matmul(self, lin: LinearC, M: int, x_ptr: int, y_ptr: int) -> None:
        self._check(self.lib.pd_matmul(ctypes.byref(lin), M, x_ptr, y_ptr))

    def embed(self, lin: LinearC, idx_ptr: int, n: int, out_ptr: int) -> None:
        self._check(self.lib.pd_embed(ctypes.byref(lin), idx_ptr, n, out_ptr))

    def layers(self, model: ModelC, layers: int, rows: RowsC, h_ptr: int, out_ptr: int) -> None:
        self._check(self.lib.pd_layers(ctypes.byref(model), layers, ctypes.byref(rows), h_ptr, out_ptr))


@lru_cache(maxsize=None)
def kernels(variant: str = "native") -> Kernels:
    """The kernel library of ``variant`` (built once per machine); raises ``KernelsUnavailable`` with the reason."""
    return Kernels(library(variant), variant)


__all__ = ["KernelError", "Kernels", "KernelsUnavailable", "build_key", "kernels", "missing_tools", "runnable_variants"]
