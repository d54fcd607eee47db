"""Sweep Jacobi and Lookahead settings on the embedded model; print Markdown tables.

Times are *CPU* times of this process (``time.process_time``) with one torch thread: on a shared
2-core machine (load ~10) wall-clock times of a forward swing several-fold from one call to the
next, and with two threads each call also burns time spinning; CPU time of one thread is stable to
a few percent. (Each machine's own cost curve differs; re-run the sweep there.)

1. Cost model: the time of one forward over k new rows relative to one row, measured by
   alternating k in random order many times and taking medians.
2. For each configuration, greedy decoding on an input-grounded prompt (summarise an XSum article)
   and open-ended ones (a Natural Questions question, a QuAC dialogue turn): tokens per forward and
   rows per forward (root + draft tree + lookahead window), both independent of machine load;
   the *estimated* speedup: decoded tokens ÷ the sum over forwards of cost(rows), with this run's
   cost curve and with the 2-thread curve measured on a quiet machine; and the *measured* speedup against
   plain decoding run on the same prompt just before (decode CPU time per token, prefill
   excluded). The load average is printed with each row.

    python scripts/sweep_jacobi_lookahead.py --dtype bfloat16 float32 --tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import paradec  # first: it sets OMP_WAIT_POLICY before torch loads
import torch

from paradec.api import encode_prompt
from paradec.bench.data import load_prompts
from paradec.drafters import Drafter, make_drafter

# Gates are written with the one cost gate's options (drafters/gate.py): the sweep's old
# "patience 1, pause P" is min_accept=1, accept_decay=0, probe_every=P + 1 (the same behaviour);
# its "patience 2" rows have no equivalent since the gates were unified and are not run any more.
NO_GATE = dict(min_accept=0)
CONFIGS = {
    "jacobi": [dict(window=1), dict(window=4, **NO_GATE), dict()],
    "lookahead": [
        dict(window=3, ngram=3, guesses=2, **NO_GATE),
        dict(window=4, ngram=3, guesses=3, **NO_GATE),
        dict(window=6, ngram=3, guesses=3, **NO_GATE),
        dict(window=4, ngram=4, guesses=3, **NO_GATE),
        dict(window=4, ngram=3, guesses=3, pool_from_context=False, **NO_GATE),
        dict(window=4, ngram=3, guesses=3, min_accept=1, accept_decay=0, probe_every=4),
        dict(),  # the defaults: W=4, N=3, G=3, gate by dtype
        dict(window=4, ngram=3, guesses=3, min_accept=1, accept_decay=0, probe_every=11),
        dict(window=3, ngram=3, guesses=2, min_accept=1, accept_decay=0, probe_every=7),
    ],
}
DEFAULTS = {"jacobi": [2], "lookahead": [6]}  # --only-defaults


class Counted(Drafter):
    """Wraps a drafter to count the rows it makes the target read (root + tree + aux) and to note
    the CPU clock when decoding starts (the first proposal comes right after the prefill)."""

    def __init__(self, inner: Drafter):
        self.inner, self.name, self.blocks, self.start = inner, inner.name, [], None

    def begin(self, prompt_ids, params):
        self.inner.begin(prompt_ids, params)

    def propose(self, ctx):
        if self.start is None:
            self.start = time.process_time()
        return self.inner.propose(ctx)

    def aux_rows(self):
        return self.inner.aux_rows()

    def observe(self, block, logits, verdict):
        self.blocks.append(len(block))  # the rows the target read
        self.inner.observe(block, logits, verdict)


def run(model, ids, method, options, tokens):
    """Greedy generation → (result, rows of every forward, decode CPU seconds per generated token)."""
    drafter = Counted(make_drafter(method, model, **options))
    r = paradec.generate(model, ids, drafter, max_new_tokens=tokens)
    cpu = time.process_time() - drafter.start
    return r, drafter.blocks, cpu / max(len(r.token_ids) - 1, 1)


# Cost of a forward over k rows relative to 1 row measured earlier on this machine with 2 threads
# when it was quiet (the figures the project's brief gives), for a second estimate.
REFERENCE = {
    "bfloat16": {1: 1.0, 8: 1.0, 16: 1.25, 32: 1.6},
    "float32": {1: 1.0, 2: 1.4, 8: 1.7, 16: 2.2, 32: 3.2},
}


def cost_model(model, ks=(1, 2, 4, 8, 12, 16, 24, 32), reps=7, context=300) -> dict[int, float]:
    """Median time of a forward over k rows (causal block) divided by that over 1 row."""
    target = model.target()
    target.prefill([100 + i % 1000 for i in range(context)])
    times: dict[int, list[float]] = {k: [] for k in ks}
    order = random.Random(0)
    for _ in range(reps):
        for k in order.sample(list(ks), len(ks)):
            mask = torch.tril(torch.ones(k, k, dtype=torch.bool))
            start = time.process_time()
            target.forward(list(range(500, 500 + k)), list(range(k)), mask)
            times[k].append(time.process_time() - start)
            target.commit([])
    base = statistics.median(times[1])
    return {k: statistics.median(v) / base for k, v in times.items()}


def cost_of(costs: dict[int, float], rows: float) -> float:
    """Linear interpolation of the cost model at a (mean) number of rows."""
    ks = sorted(costs)
    for a, b in zip(ks, ks[1:]):
        if rows <= b:
            return costs[a] + (costs[b] - costs[a]) * (max(rows, a) - a) / (b - a)
    return costs[ks[-1]] * rows / ks[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=list(CONFIGS))
    ap.add_argument("--only", type=int, nargs="*", help="indices into each method's config list")
    ap.add_argument("--only-defaults", action="store_true", help="run only each method's default config")
    ap.add_argument("--categories", nargs="+", default=["summarization", "qa"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s, see above)")
    ap.add_argument("--json", help="also append raw rows to this JSON-lines file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    prompts = load_prompts(args.categories, 1)
    for dtype in args.dtype:
        model = paradec.load("smollm2-135m", dtype=dtype)
        costs = cost_model(model)
        print(f"\n{dtype}: cost of a forward over k rows relative to 1 (load {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{k}: {c:.2f}" for k, c in costs.items()))
        print("\n| dtype | prompt | method | config | tokens/forward | rows/forward | est. (this curve) | est. (2-thread curve) | measured | load |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for prompt in prompts:
            ids = encode_prompt(model, [{"role": "user", "content": prompt.turns[0]}])
            paradec.generate(model, ids, "plain", max_new_tokens=4)  # warm-up
            for method in args.methods:
                for i, options in enumerate(CONFIGS[method]):
                    if (args.only and i not in args.only) or (args.only_defaults and i not in DEFAULTS[method]):
                        continue
                    base, _, base_cpu = run(model, ids, "plain", {}, args.tokens)
                    r, rows, cpu = run(model, ids, method, options, args.tokens)
                    same = r.token_ids == base.token_ids
                    tpf = r.stats.mean_accepted_length
                    estimate = (len(r.token_ids) - 1) / sum(cost_of(costs, k) for k in rows)  # plain: 1 per forward
                    reference = (len(r.token_ids) - 1) / sum(cost_of(REFERENCE[dtype], k) for k in rows)
                    rows = statistics.mean(rows)
                    measured = base_cpu / cpu
                    load = os.getloadavg()[0]
                    cfg = ", ".join(f"{k}={v}" for k, v in options.items())
                    flag = "" if same or dtype != "float32" else " (DIFF)"
                    print(f"| {dtype} | {prompt.category} | {method} | {cfg} | {tpf:.2f} | {rows:.1f} | {estimate:.2f}x | {reference:.2f}x | "
                          f"{measured:.2f}x{flag} | {load:.1f} |", flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(dict(dtype=dtype, prompt=prompt.id, method=method, options=options,
                                                    tokens_per_forward=tpf, rows=rows, estimate=estimate, reference=reference,
                                                    measured=measured, same=same, load=load, costs=costs)) + "\n")


if __name__ == "__main__":
    main()
