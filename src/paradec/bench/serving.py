"""``paradec bench-serve``: concurrent clients against a live ``paradec serve``.

For each number of clients (1, 2, 4, 8, 16) and each method (plain: no speculation; a drafting one),
the same requests go to the server through its OpenAI route, streamed, ``c`` at a time (closed loop:
a client sends its next request when its answer has ended). Per level: aggregate tokens per second
(tokens of all answers / wall time of the level), p50/p95 latency and time to first token, and from
the server's /metrics the forwards it ran, tokens per forward and sequences per forward. Greedy
answers must not depend on the batch: each one is compared with the same request's answer at the
lowest level (decoded alone when that is 1) and with plain decoding's.

Then ``--samples N``: every request once with ``n = 1`` and once with ``n = N`` (sampling, same seed),
one at a time: the wall-time ratio, and the ratio of forwards (the longest of N samples sets them).

The server is not started here: start it apart (its own cores) with ``--max-batch`` at least the
largest level, so that the clients measure the server, not themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParadecError

DEFAULT_CLIENTS = "1,2,4,8,16"
DEFAULT_METHODS = "plain,recycling"
COUNTERS = ("paradec_forwards_total", "paradec_generated_tokens_total", "paradec_sequence_steps_total")


@dataclass
class Reply:
    """One streamed answer: text, tokens (``usage``), seconds to the first text and to the end."""

    prompt: int  # index of the request
    texts: list[str]  # one per choice
    tokens: int
    seconds: float
    first: float | None  # time to first token: request sent → first non-empty text chunk
    error: str | None = None


def percentile(values: list[float], q: float) -> float:
    """numpy's quantile (linear between the closest ranks); nan for no values."""
    import numpy as np  # not at import: `paradec --help` builds this module's parser and stays light

    return float(np.quantile(values, q)) if values else math.nan


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format → {sample name with labels: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def ask(client, index: int, body: dict) -> Reply:
    """Stream one chat completion; the text of every choice, usage, and the times."""
    start = time.perf_counter()
    texts, first, tokens = [""] * body.get("n", 1), None, 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return Reply(index, texts, 0, time.perf_counter() - start, None,
                             f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Reply(index, texts, tokens, time.perf_counter() - start, first, chunk["error"]["message"])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk["choices"]:
                    piece = choice["delta"].get("content") or ""
                    if piece and first is None:
                        first = time.perf_counter() - start
                    texts[choice["index"]] += piece
    except Exception as exc:  # noqa: BLE001 (a lost request is a result of the benchmark, not its end)
        return Reply(index, texts, tokens, time.perf_counter() - start, first, f"{type(exc).__name__}: {exc}")
    return Reply(index, texts, tokens, time.perf_counter() - start, first)


async def run_level(url: str, bodies: list[dict], clients: int, headers: dict,
                    timeout: float) -> tuple[list[Reply], float, dict[str, float]]:
    """Every body, ``clients`` at a time; the replies in request order, the wall time, and the
    differences of the server's counters over the level."""
    import httpx

    pending = list(range(len(bodies)))
    replies: list[Reply | None] = [None] * len(bodies)
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) as client:
        before = parse_metrics((await client.get("/metrics")).text)

        async def one_client() -> None:
            while pending:
                i = pending.pop(0)
                replies[i] = await ask(client, i, bodies[i])

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start
        after = parse_metrics((await client.get("/metrics")).text)
    return replies, wall, {name: after.get(name, 0.0) - before.get(name, 0.0) for name in COUNTERS}


def summary(method: str, clients: int, replies: list[Reply], wall: float, counters: dict[str, float]) -> dict:
    """One row of the table."""
    ok = [r for r in replies if r.error is None]
    tokens = sum(r.tokens for r in ok)
    forwards = counters["paradec_forwards_total"]
    return {
        "method": method, "clients": clients, "requests": len(replies), "ok": len(ok), "tokens": tokens,
        "wall_seconds": wall, "tokens_per_second": tokens / wall if wall > 0 else 0.0,
        "latency_p50": percentile([r.seconds for r in ok], 0.5), "latency_p95": percentile([r.seconds for r in ok], 0.95),
        "ttft_p50": percentile([r.first for r in ok if r.first is not None], 0.5),
        "ttft_p95": percentile([r.first for r in ok if r.first is not None], 0.95),
        "forwards": forwards,
        "tokens_per_forward": counters["paradec_generated_tokens_total"] / forwards if forwards else 0.0,
        "sequences_per_forward": counters["paradec_sequence_steps_total"] / forwards if forwards else 0.0,
        "errors": sorted({r.error for r in replies if r.error})[:3],
    }


def same(replies: list[Reply], reference: list[Reply]) -> int:
    """How many answers equal the reference answer to the same request (both succeeded)."""
    return sum(r.error is None and ref.error is None and r.texts == ref.texts for r, ref in zip(replies, reference))


def load_bodies(args: argparse.Namespace) -> list[dict]:
    """``--requests`` chat requests: the first turn of the benchmark prompts (or ``--questions``), cycled."""
    from . import data

    if args.questions:
        prompts = data.load_questions(args.questions)
    else:
        categories = [c.strip() for c in args.categories.split(",") if c.strip()]
        prompts = data.load_prompts(categories, math.ceil(args.requests / len(categories)), args.seed)
    return [{"messages": [{"role": "user", "content": prompts[i % len(prompts)].turns[0]}],
             "max_tokens": args.max_tokens, "temperature": 0}
            for i in range(args.requests)]


def with_method(body: dict, method: str, **more) -> dict:
    return {**body, **more, "stream": True, "stream_options": {"include_usage": True}, "paradec": {"method": method}}


def table(rows: list[dict], lowest: int) -> str:
    """The rows as a markdown table; ``lowest``: the level the ratios and the identity compare with."""
    head = (f"| method | clients | ok | tokens | tok/s | × vs {lowest} client(s) | latency p50 / p95 s "
            f"| TTFT p50 / p95 s | forwards | tokens/forward | sequences/forward | same as at {lowest} client(s) "
            "| same as plain |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['clients']} | {r['ok']}/{r['requests']} | {r['tokens']} | {r['tokens_per_second']:.1f} "
            f"| {r['speedup_vs_lowest']:.2f}× | {r['latency_p50']:.2f} / {r['latency_p95']:.2f} "
            f"| {r['ttft_p50']:.2f} / {r['ttft_p95']:.2f} | {r['forwards']:.0f} | {r['tokens_per_forward']:.2f} "
            f"| {r['sequences_per_forward']:.2f} | {r['same_as_lowest']}/{r['requests']} | {r['same_as_plain']}/{r['requests']} |")
    return "\n".join(lines)


async def run_samples(url: str, bodies: list[dict], method: str, n: int, headers: dict, timeout: float,
                      seed: int, temperature: float) -> dict:
    """Each body with n = 1 then n = ``n`` (the same seed, so sample 0 is the n = 1 answer), one at a time."""
    walls, forwards = {1: 0.0, n: 0.0}, {1: 0.0, n: 0.0}
    lost = 0
    for i, body in enumerate(bodies):
        for k in (1, n):
            b = with_method(body, method, n=k, seed=seed + i, temperature=temperature)
            replies, wall, counters = await run_level(url, [b], 1, headers, timeout)
            lost += replies[0].error is not None
            walls[k] += wall
            forwards[k] += counters["paradec_forwards_total"]
    return {"method": method, "n": n, "requests": len(bodies), "lost": lost, "wall_n1": walls[1], f"wall_n{n}": walls[n],
            "wall_ratio": walls[n] / walls[1] if walls[1] else math.nan,
            "forwards_ratio": forwards[n] / forwards[1] if forwards[1] else math.nan}


def cmd_bench_serve(args: argparse.Namespace) -> int:
    try:
        levels = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    except ValueError:
        raise ParadecError(f"--clients must be comma-separated integers, got '{args.clients}'") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not levels or levels[0] < 1 or args.requests < 1 or args.max_tokens < 1 or args.samples < 0 or not methods:
        raise ParadecError("--clients, --requests and --max-tokens must be >= 1, --samples >= 0, --methods not empty")
    methods = ["plain"] + [m for m in dict.fromkeys(methods) if m != "plain"]  # plain first: the reference
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    bodies = load_bodies(args)
    url = args.url.rstrip("/")

    async def main() -> tuple[list[dict], list[dict]]:
        rows, reference, plain = [], {}, {}
        for m in methods:  # warm-up, untimed: each method's first request pays for lazy set-up
            await run_level(url, [with_method(bodies[0], m)], 1, headers, args.timeout)
        for c in levels:
            for m in methods:
                print(f"[bench-serve] {m}, {c} client(s), {len(bodies)} requests", file=sys.stderr, flush=True)
                replies, wall, counters = await run_level(url, [with_method(b, m) for b in bodies], c, headers,
                                                          args.timeout)
                reference.setdefault(m, replies)
                if m == "plain":
                    plain[c] = replies
                row = summary(m, c, replies, wall, counters)
                row["same_as_lowest"] = same(replies, reference[m])
                row["same_as_plain"] = same(replies, plain[c])
                rows.append(row)
        for row in rows:
            lowest = next(r for r in rows if r["method"] == row["method"] and r["clients"] == levels[0])
            row["speedup_vs_lowest"] = (row["tokens_per_second"] / lowest["tokens_per_second"]
                                        if lowest["tokens_per_second"] else math.nan)
        samples = []
        if args.samples > 1:
            for m in methods:
                print(f"[bench-serve] {m}, n = 1 vs n = {args.samples}", file=sys.stderr, flush=True)
                samples.append(await run_samples(url, bodies, m, args.samples, headers, args.timeout, args.seed,
                                                 args.temperature))
        return rows, samples

    rows, samples = asyncio.run(main())
    print(f"paradec bench-serve: {url}, {len(bodies)} requests of {args.max_tokens} tokens at most, greedy, streamed")
    print(table(rows, levels[0]))
    top = next((c for c in (8, levels[-1]) if c in levels), levels[-1])
    for m in methods:
        row = next(r for r in rows if r["method"] == m and r["clients"] == top)
        print(f"{m}: {top} clients: {row['speedup_vs_lowest']:.2f}× the aggregate tok/s of {levels[0]} client(s); "
              f"answers identical to the {levels[0]}-client ones: {row['same_as_lowest']}/{row['requests']}, "
              f"lost: {row['requests'] - row['ok']}")
    for s in samples:
        print(f"{s['method']}: n = {s['n']} samples: {s['wall_ratio']:.2f}× the wall time of n = 1 "
              f"({s['forwards_ratio']:.2f}× the forwards: the longest sample sets them), lost {s['lost']}")
    if args.output:
        Path(args.output).write_text(json.dumps({"command": " ".join(sys.argv), "levels": rows, "samples": samples},
                                                indent=1))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench-serve", help="concurrent clients against a running `paradec serve`: aggregate tok/s, latency, TTFT",
        description="For each number of clients and each method, the same greedy chat requests go to the "
                    "server, streamed, that many at a time: aggregate tok/s, p50/p95 latency and time to first token, "
                    "forwards, tokens and sequences per forward (from /metrics), and how many answers equal the "
                    "lowest level's and plain decoding's. Then n samples against one (--samples).",
        epilog="example (the server on core 1, the clients on core 0):\n"
               "  taskset -c 1 paradec serve --dtype float32 --quant none --max-batch 16 --port 8000 &\n"
               "  taskset -c 0 paradec bench-serve --url http://127.0.0.1:8000 --output serve.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    p.add_argument("--api-key", help="the server's --api-key, if it has one")
    p.add_argument("--clients", default=DEFAULT_CLIENTS, metavar="A,B",
                   help="numbers of concurrent clients, one level each (default: %(default)s)")
    p.add_argument("--methods", default=DEFAULT_METHODS, metavar="A,B",
                   help="methods compared at every level; plain (no speculation) always runs (default: %(default)s)")
    p.add_argument("--requests", type=int, default=32, help="requests per level and method (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=48, help="max_tokens of every request (default: %(default)s)")
    p.add_argument("--categories", default="multi_turn,translation,summarization,qa,math_reasoning,rag,code",
                   metavar="A,B", help="where the prompts come from, as in `paradec bench` (default: %(default)s)")
    p.add_argument("--questions", metavar="PATH", help="prompts from a Spec-Bench question.jsonl file instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt subset and of the samples (default: %(default)s)")
    p.add_argument("--samples", type=int, default=4, metavar="N",
                   help="then every request with n = 1 and n = N, one at a time; 0 skips it (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature of the n-samples requests "
                                                                  "(default: %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take (default: %(default)s)")
    p.add_argument("--output", metavar="FILE", help="write every figure as JSON")
    p.set_defaults(func=cmd_bench_serve)
