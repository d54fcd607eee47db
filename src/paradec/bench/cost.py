"""``paradec cost-curve``: what a forward over k new rows costs relative to one row, c(k)/c(1).

The curve says which draft sizes can pay: a draft accepted τ tokens per forward on a block of k rows
speeds decoding up by about τ / (c(k)/c(1)). Measured after a prompt of ``--context`` tokens, on a
chain of k rows that is then dropped (the cache returns to the prompt), k values interleaved round
by round so a load spike hits all of them alike; the fastest of the rounds (``paradec.costs.measure``,
which ``auto`` also uses, with fewer rounds, for the curve it caches).
"""

from __future__ import annotations

import argparse

DEFAULT_KS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


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
    from ..costs import measure
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
