"""Sweep the `ngram` and `recycling` configs on the embedded model; print a Markdown table.

Every configuration runs right after a plain-decoding run of the same prompt (interleaved, same
process), so each speedup is a ratio measured under the same machine load; the load average is
printed with the table. Greedy decoding; the outputs are checked against plain greedy.

    python scripts/sweep_ngram_recycling.py --dtype bfloat16            # the default grid
    python scripts/sweep_ngram_recycling.py --dtype float32 --limit 1 \\
        --config 'ngram' --config 'recycling {"tree_size": 8}'           # chosen configs only

A config is a method name optionally followed by its options as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

import paradec  # first: it sets OMP_WAIT_POLICY before torch loads
import torch

from paradec.api import encode_prompt
from paradec.bench.data import load_prompts
from paradec.decode import decode
from paradec.drafters import make_drafter
from paradec.sampling import SamplingParams

GRID = [
    "ngram",
    'ngram {"max_branches": 1}',
    'ngram {"adaptive": false}',
    'ngram {"max_depth": 16, "max_nodes": 24}',
    'ngram {"min_n": 1}',
    'recycling {"tree_size": 8, "max_depth": 4}',
    "recycling",
    'recycling {"tree_size": 16, "max_depth": 6}',
    'recycling {"tree_size": 24, "max_depth": 6}',
    'recycling {"lookup_branches": 1}',
    'recycling {"lookup_branches": 2, "tree_size": 8}',
]

CATEGORIES = {"summarization": "input-grounded", "qa": "open-ended"}


def run(model, method: str, options: dict, ids: list[int], max_new: int):
    drafter = make_drafter(method, model, **options)
    gen = decode(model, drafter, ids, SamplingParams(), max_new)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--limit", type=int, default=2, help="prompts per category")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--config", action="append", help="method [JSON options]; repeatable (default: the grid)")
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a heavily shared machine: "
                    "2 threads stall each other there, 8x slower when we measured)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configs = args.config or GRID
    model = paradec.load("smollm2-135m", dtype=args.dtype)
    prompts = load_prompts(args.categories.split(","), args.limit)
    loads = [os.getloadavg()[0]]
    # (category, config) -> [plain seconds, method seconds, tokens, forwards, exact runs, runs]
    acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0, 0, 0])
    run(model, "plain", {}, encode_prompt(model, "Hello", chat=True), 8)  # warm-up
    start = time.time()
    for p in prompts:
        ids = encode_prompt(model, [{"role": "user", "content": p.turns[0]}])
        for config in configs:
            method, _, opts = config.partition(" ")
            options = json.loads(opts) if opts else {}
            base = run(model, "plain", {}, ids, args.max_new_tokens)
            res = run(model, method, options, ids, args.max_new_tokens)
            a = acc[(p.category, config)]
            a[0] += base.stats.total_time / max(1, base.stats.new_tokens)
            a[1] += res.stats.total_time / max(1, res.stats.new_tokens)
            a[2] += res.stats.accepted_tokens + res.stats.forward_passes
            a[3] += res.stats.forward_passes
            a[4] += res.token_ids == base.token_ids
            a[5] += 1
            loads.append(os.getloadavg()[0])
            print(f"  {p.category:14s} {config:50s} {base.stats.tokens_per_second:5.1f} -> "
                  f"{res.stats.tokens_per_second:5.1f} tok/s, {res.stats.mean_accepted_length:.2f} tok/fwd", flush=True)
    print(f"\n{args.dtype}, {args.threads} thread(s), {args.limit} prompt(s) per category, {args.max_new_tokens} new tokens max, "
          f"{time.time() - start:.0f} s, load average (1 min) {min(loads):.1f}-{max(loads):.1f}\n")
    print("| dtype | category | config | tokens/forward | speedup vs plain | exact |")
    print("| --- | --- | --- | ---: | ---: | --- |")
    for (category, config), (tp, tm, n, f, ex, runs) in acc.items():
        print(f"| {args.dtype} | {category} ({CATEGORIES.get(category, '')}) | `{config}` | "
              f"{(n / f if f else 0):.2f} | {tp / tm:.2f}x | {int(ex)}/{int(runs)} |")


if __name__ == "__main__":
    main()
