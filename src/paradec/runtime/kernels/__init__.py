"""Build (once) and load the C++ kernels in this folder (``common.h`` says what is where).

The kernels are compiled on first use with this machine's C++ compiler and ``-march=native`` (the
same SIMD code then fits whatever CPU runs it), and cached under ``$PARADEC_CACHE/kernels/`` keyed by
the source, torch's version and the CPU's features, so later runs load the built library in
milliseconds. Building needs a C++ compiler (gcc/clang) and ``ninja``; without them the native runtime
falls back to plain torch operations, with a message saying why and how to fix it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
from functools import lru_cache
from pathlib import Path

from ...errors import ParadecError

HERE = Path(__file__).parent
SOURCES = sorted(HERE.glob("*.cpp"))  # compiled together with common.h
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-ffp-contract=off"]  # FMAs only where written

log = logging.getLogger(__name__)


class KernelsUnavailable(ParadecError):
    """The C++ kernels cannot be built or loaded here (the message says why and what to install)."""


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build_key() -> str:
    import torch

    h = hashlib.sha256()
    code = [p.read_bytes() for p in SOURCES + [HERE / "common.h"]]
    for part in (*code, torch.__version__.encode(), " ".join(CFLAGS).encode(), _cpu_flags().encode(),
                 platform.machine().encode()):
        h.update(part)
    return h.hexdigest()[:16]


def missing_tools() -> list[str]:
    """What building needs and this machine lacks."""
    missing = []
    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        missing.append("a C++ compiler (e.g. apt-get install g++)")
    try:
        import ninja  # noqa: F401
    except ImportError:
        if not shutil.which("ninja"):
            missing.append("ninja (pip install ninja)")
    return missing


@lru_cache(maxsize=1)
def kernels():
    """The compiled kernel module; raises ``KernelsUnavailable`` with the reason if it cannot be had."""
    from ...model.builtins import cache_root

    missing = missing_tools()
    if missing:
        raise KernelsUnavailable(f"building paradec's CPU kernels needs {' and '.join(missing)}")
    from torch.utils import cpp_extension

    key = build_key()
    directory = cache_root() / "kernels" / key
    directory.mkdir(parents=True, exist_ok=True)
    name = f"paradec_kernels_{key}"
    if not any(directory.glob(f"{name}*.so")):
        log.warning("building paradec's CPU kernels for this machine (once, ~1 min)")
    try:
        return cpp_extension.load(name=name, sources=[str(p) for p in SOURCES], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                                  build_directory=str(directory), verbose=False)
    except Exception as exc:  # compiler errors, a broken toolchain, an unloadable library
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KernelsUnavailable(f"building paradec's CPU kernels failed: {first} (build folder: {directory})") from exc
