"""How many 512-bit `vpdpbusd` (AVX-512 VNNI: 64 int8 multiply-adds each) one core issues per second:
12 independent accumulators, compiled with the kernels' compiler and -march=native. The floor under
what extra rows cost (docs/runtime.md, "Why extra rows are not free yet"). Needs AVX-512 VNNI.

    python scripts/measure_vnni_rate.py
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from paradec.runtime.kernels import build

SOURCE = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdio>
int main() {
  __m512i a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_epi32(i);
  const __m512i w = _mm512_set1_epi8(3), x = _mm512_set1_epi8(5);
  const long N = 200000000;
  auto t0 = std::chrono::steady_clock::now();
  for (long n = 0; n < N; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm512_dpbusd_epi32(a[i], w, x);
    asm volatile("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]));
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int sink = 0;
  for (int i = 0; i < 12; ++i) sink += _mm512_reduce_add_epi32(a[i]);
  printf("vpdpbusd zmm: %.2f G/s on one thread (sink %d)\n", 12.0 * N / s / 1e9, sink);
}
"""


def main() -> None:
    if not {"avx512_vnni", "avx512f"} <= build.cpu_flags():
        raise SystemExit("this CPU has no AVX-512 VNNI")
    cxx = build.compiler()
    if cxx is None:
        raise SystemExit("no C++ compiler")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "dp.cpp", Path(tmp) / "dp"
        src.write_text(SOURCE)
        subprocess.run([cxx, "-O2", "-march=native", "-o", str(exe), str(src)], check=True)
        subprocess.run([str(exe)], check=True)


if __name__ == "__main__":
    main()
