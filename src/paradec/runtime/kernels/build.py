"""Build (once per machine and source) the C++ kernel library and cache it.

The kernels are a plain shared library with a C interface (``api.h``), compiled with this machine's
C++ compiler and loaded with ctypes: no torch headers and no Python ABI in it, so it builds in well
under a minute and one build serves every Python and torch version. ``-march=native`` makes the
compiler pick the instruction-set path this CPU runs (AVX-512 VNNI, AVX-512 BW, AVX2 or scalar; see
``common.h``); the tests also build the narrower *variants* the CPU can run, to check every path.

The library is cached under ``$PARADEC_CACHE/kernels/<key>/`` where the key covers the sources, the
flags, the compiler's version and the CPU's features. A build takes an exclusive file lock, compiles
into a temporary name and renames it into place, so another process (a second checkout, a Ray
replica) either waits or finds a finished library — never a half-written one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ...errors import ParadecError

HERE = Path(__file__).parent
SOURCES = sorted(HERE.glob("*.cpp"))
HEADERS = sorted(HERE.glob("*.h"))
CFLAGS = ["-O3", "-std=c++17", "-fPIC", "-ffp-contract=off", "-Wno-maybe-uninitialized"]  # FMAs only where written
# instruction-set variants: the flags that select them, and the CPU flags they need
VARIANTS = {
    "native": (["-march=native"], set()),
    "avx512bw": (["-march=native", "-mno-avx512vnni", "-mno-avxvnni"], {"avx512f", "avx512bw", "avx512vl", "avx2", "fma", "f16c"}),
    "avx2": (["-march=native", "-mno-avx512f", "-mno-avxvnni"], {"avx2", "fma", "f16c"}),
    "scalar": (["-march=x86-64"] if platform.machine() in ("x86_64", "AMD64") else ["-O3"], set()),
}


class KernelsUnavailable(ParadecError):
    """The C++ kernels cannot be built or loaded here (the message says why and what to install)."""


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def runnable_variants() -> list[str]:
    """The variants this CPU can run (``native`` first)."""
    flags = cpu_flags()
    return [name for name, (_, needs) in VARIANTS.items() if needs <= flags]


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def missing_tools() -> list[str]:
    """What building needs and this machine lacks."""
    return [] if compiler() else ["a C++ compiler (e.g. apt-get install g++)"]


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build_key(variant: str = "native") -> str:
    """What the library depends on: sources, flags, compiler, CPU."""
    cxx = compiler() or ""
    h = hashlib.sha256()
    for path in SOURCES + HEADERS:
        h.update(path.name.encode() + path.read_bytes())
    for part in (" ".join(CFLAGS + VARIANTS[variant][0]), cxx, _compiler_version(cxx), " ".join(sorted(cpu_flags())),
                 platform.machine()):
        h.update(part.encode())
    return f"{variant}-{h.hexdigest()[:16]}"


def library(variant: str = "native") -> Path:
    """The built library of ``variant``, built now if it is not cached (raises KernelsUnavailable)."""
    from ...model.builtins import cache_root

    if variant not in VARIANTS:
        raise KernelsUnavailable(f"unknown kernel variant {variant!r}; one of {', '.join(VARIANTS)}")
    missing = missing_tools()
    if missing:
        raise KernelsUnavailable(f"building paradec's CPU kernels needs {' and '.join(missing)}")
    folder = cache_root() / "kernels" / build_key(variant)
    built = folder / "libparadec_kernels.so"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not built.is_file():
            _compile(variant, folder, built)
    return built


def _compile(variant: str, folder: Path, out: Path) -> None:
    import logging

    logging.getLogger(__name__).warning("building paradec's CPU kernels (%s) for this machine (once, ~1 min)", variant)
    cxx = compiler()
    flags = CFLAGS + VARIANTS[variant][0]
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        def one(src: Path) -> Path:  # one object per source: the two cores compile side by side
            obj = Path(tmp) / (src.stem + ".o")
            _run([cxx, *flags, "-c", str(src), "-o", str(obj)], folder)
            return obj

        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            objects = list(pool.map(one, SOURCES))
        linked = Path(tmp) / out.name
        _run([cxx, "-shared", "-o", str(linked), *map(str, objects), "-lpthread"], folder)
        os.replace(linked, out)


def _run(cmd: list[str], folder: Path) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise KernelsUnavailable(f"building paradec's CPU kernels failed: {exc}") from exc
    if done.returncode != 0:
        first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:300])
        raise KernelsUnavailable(f"building paradec's CPU kernels failed: {first} (build folder: {folder})")
