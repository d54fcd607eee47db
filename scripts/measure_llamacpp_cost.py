"""llama.cpp's forward over k new rows of a GGUF file, as `paradec cost-curve` measures paradec's: the
fastest of 15 one-call `eval`s of k tokens after `--context` tokens, the cache cropped back after each.
Needs llama-cpp-python (not part of `make setup`; README). Timing only: idle machine.

    python scripts/measure_llamacpp_cost.py FILE.gguf [--threads 2] [--context 256] [--ks 1,4,8]

The README's Qwen2.5-Coder files are in ~/.cache/paradec/builtin/ after their first load.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--ks", default="1,4,8")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    from llama_cpp import Llama

    ks = [int(k) for k in args.ks.split(",")]
    llm = Llama(model_path=args.file, n_ctx=args.context + max(ks) + 16, n_threads=args.threads,
                n_threads_batch=args.threads, n_batch=512, logits_all=True, verbose=False)
    prompt = [(7 * i + 3) % 10000 + 100 for i in range(args.context)]
    llm.eval(prompt)
    base = llm.n_tokens

    def forward(k: int) -> float:
        start = time.perf_counter()
        llm.eval(prompt[:k])
        elapsed = time.perf_counter() - start
        ctx = llm._ctx
        (ctx.memory_seq_rm if hasattr(ctx, "memory_seq_rm") else ctx.kv_cache_seq_rm)(0, base, -1)
        llm.n_tokens = base
        return elapsed

    times = {}
    for k in ks:
        for _ in range(3):
            forward(k)
        times[k] = min(forward(k) for _ in range(args.rounds))
    print(f"llama.cpp {args.file.split('/')[-1]}, {args.threads} threads, context {args.context}")
    print(f"{'k':>4} {'ms':>9} {'c(k)/c(1)':>10}")
    for k in ks:
        print(f"{k:>4} {times[k] * 1e3:>9.2f} {times[k] / times[ks[0]]:>10.2f}")


if __name__ == "__main__":
    main()
