"""``paradec cost-curve``: what a forward over k new rows costs relative to one row, c(k)/c(1).

The curve says which draft sizes can pay: a draft accepted τ tokens per forward on a block of k rows
speeds decoding up by about τ / (c(k)/c(1)). Measured after a prompt of ``--context`` tokens, on a
chain of k rows that is then dropped (the cache returns to the prompt), k values interleaved round
by round so a load spike hits all of them alike; medians over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

DEFAULT_KS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def measure(model, ks=DEFAULT_KS, context: int = 256, rounds: int = 15, warmup: int = 2) -> dict[int, float]:
    """Median seconds of one forward over k rows, for every k in ``ks``."""
    target = model.target()
    vocab = model.vocab_size
    prompt = [(7 * i + 3) % vocab for i in range(context)]
    target.prefill(prompt)
    times: dict[int, list[float]] = {k: [] for k in ks}
    for r in range(warmup + rounds):
        for k in ks:
            tokens = [(11 * r + 5 * j + 1) % vocab for j in range(k)]
            start = time.perf_counter()
            target.forward(tokens, list(range(k)))
            elapsed = time.perf_counter() - start
            target.commit([])
            if r >= warmup:
                times[k].append(elapsed)
    return {k: statistics.median(v) for k, v in times.items()}


def add_parser(subparsers) -> None:
    from ..cli import add_model_args

    p = subparsers.add_parser("cost-curve", help="cost of a forward over k rows relative to one row, per runtime/format",
                              description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="row counts, comma-separated (default: %(default)s)")
    p.add_argument("--context", type=int, default=256, help="tokens in the cache before the rows (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch/kernel threads (default: torch's default)")
    p.set_defaults(func=cmd_cost)


def cmd_cost(args: argparse.Namespace) -> int:
    import os

    import torch

    from ..errors import ParadecError
    from ..model import load

    try:
        ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    except ValueError:
        raise ParadecError(f"--ks must be comma-separated integers, got '{args.ks}'") from None
    if not ks or ks[0] < 1 or args.context < 1 or args.rounds < 1:
        raise ParadecError("--ks, --context and --rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.model, args.dtype, args.runtime, args.quant)
    curve = measure(model, ks, args.context, args.rounds)
    base = curve[ks[0]]
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{model.name}: {model.runtime.description}, {torch.get_num_threads()} threads, context {args.context}, "
          f"load {load_avg:.2f}")
    print(f"{'k':>4} {'ms':>9} {'c(k)/c(' + str(ks[0]) + ')':>10}")
    for k in ks:
        print(f"{k:>4} {curve[k] * 1000:>9.2f} {curve[k] / base:>10.2f}")
    return 0
