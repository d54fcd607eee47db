"""Prefill cost on SmolLM2-135M (docs/runtime.md, "Speed"): a prompt of N tokens read by the native
runtime (4-bit and bfloat16) and by transformers (bfloat16), and the same linear-layer products done by
MKL's float32 GEMM (what handing a prefill's matmuls to torch would cost). Timing only: idle machine.

    python scripts/measure_prefill.py [--tokens 1000] [--threads 2]

With llama-cpp-python installed, also llama.cpp's prefill of the same model requantized to Q4_0 (the
benchmark's llama.cpp peer's file), on the same thread count.
"""

from __future__ import annotations

import argparse
import time

import paradec  # first: it sets OMP_WAIT_POLICY before torch loads
import torch


def prefill_seconds(model, n: int) -> float:
    ids = [1000 + i for i in range(n)]
    model.target().prefill(ids)  # warm-up
    start = time.perf_counter()
    model.target().prefill(ids)
    return time.perf_counter() - start


def gemm_seconds(model, n: int) -> float:
    """float32 F.linear over n rows for every decoder linear layer's shape (the LM head excluded: a
    prefill scores the last row only)."""
    layer = model.runtime.weights.layers[0]
    total = 0.0
    for linear in (layer.qkv, layer.o, layer.gate_up, layer.down):
        w = torch.randn(*linear.shape)  # (N, K)
        x = torch.randn(n, linear.shape[1])
        torch.nn.functional.linear(x, w)
        start = time.perf_counter()
        torch.nn.functional.linear(x, w)
        total += time.perf_counter() - start
    return total * len(model.runtime.weights.layers)


def llamacpp_line(n: int, threads: int) -> str:
    """llama.cpp reading the same ``n`` token ids (best of two after a warm-up), or why it cannot."""
    from paradec.bench.llamacpp import unavailable_reason

    model = paradec.load("smollm2-135m", "bfloat16")
    if why := unavailable_reason(model):
        return f"llama.cpp: {why}"
    from llama_cpp import Llama

    from paradec.bench.llamacpp import gguf_for

    path = gguf_for(model, "Q4_0")
    llm = Llama(model_path=str(path), n_ctx=max(2048, n + 8), n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False)
    ids = [1000 + i for i in range(n)]
    llm.reset()
    llm.eval(ids[:8])  # warm-up
    best = float("inf")
    for _ in range(2):
        llm.reset()  # forget the cached prefix: the whole prompt is read again
        start = time.perf_counter()
        llm.eval(ids)
        best = min(best, time.perf_counter() - start)
    return f"llama.cpp ({path.name}, {threads} thread(s)): prefill of {n} tokens {best:.2f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for runtime, quant in (("native", "auto"), ("native", "none"), ("hf", "auto")):
        model = paradec.load("smollm2-135m", "bfloat16", runtime, quant)
        print(f"{model.runtime.description}: prefill of {args.tokens} tokens {prefill_seconds(model, args.tokens):.2f} s")
    print(f"MKL float32 GEMM, the decoder's linear layers over {args.tokens} rows: "
          f"{gemm_seconds(paradec.load('smollm2-135m', 'float32', 'native', 'none'), args.tokens):.2f} s")
    print(llamacpp_line(args.tokens, args.threads))


if __name__ == "__main__":
    main()
