"""``paradec extract`` and ``paradec reason``: branches of one prompt decoded together, from the command line.
(``paradec generate --n N [--first-finish]`` samples several answers; it lives with ``generate``.)"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ParadecError


def add_common(p: argparse.ArgumentParser) -> None:
    from ..cli import add_model_args

    add_model_args(p)
    p.add_argument("--method", default="auto", help="decoding method of every branch, see `paradec methods`; "
                                                    "'auto' picks the fastest lossless one step by step, 'plain' "
                                                    "drafts nothing (default: %(default)s)")
    p.add_argument("--method-options", metavar="JSON", help="method config as a JSON object")
    p.add_argument("--draft", metavar="MODEL", help="draft model for the `draft` method (and a candidate of `auto`)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="most tokens per branch (default: %(default)s)")
    p.add_argument("--chat", action="store_true", help="wrap the shared prefix in the model's chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object with every branch's text and stats")


def add_parser(subparsers) -> None:
    e = subparsers.add_parser(
        "extract", help="fields of a text, one branch per field decoded together (PaDeLLM-NER style)",
        description="Read TEXT once, then decode one branch per field (the shared prefix, then '<field>:') "
                    "together, one forward per step for all, up to a newline; print one 'field: value' line each.")
    e.add_argument("text", help="the text to extract from")
    e.add_argument("--fields", required=True, metavar="A,B,C",
                   help="field names, comma-separated (e.g. PER,LOC,ORG); each branch reads '<name>:'")
    e.add_argument("--instruction", help="what to extract, before the text (default: named entities by type)")
    e.add_argument("--sequential", action="store_true",
                   help="decode the branches one after another instead (the baseline; same fields when greedy)")
    add_common(e)
    e.set_defaults(func=cmd_extract)

    r = subparsers.add_parser(
        "reason", help="independent sub-questions answered as parallel branches, then one joined answer",
        description="Answer each --sub question as a branch after QUESTION (decoded together), then write a "
                    "final answer that reads every sub-question and its answer.")
    r.add_argument("question", help="the question (the shared prefix of every branch)")
    r.add_argument("--sub", action="append", required=True, metavar="QUESTION",
                   help="an independent sub-question (repeatable)")
    r.add_argument("--answer-tokens", type=int, default=128, help="most tokens of the final answer "
                                                                  "(default: %(default)s)")
    add_common(r)
    r.set_defaults(func=cmd_reason)


def _setup(args: argparse.Namespace):
    from ..model import load

    if args.max_new_tokens < 1:
        raise ParadecError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    options = json.loads(args.method_options) if args.method_options else {}
    if not isinstance(options, dict):
        raise ParadecError("--method-options must be a JSON object")
    if args.draft:
        options["draft"] = args.draft
    return load(args.model, args.dtype, args.runtime, args.quant), options


def cmd_extract(args: argparse.Namespace) -> int:
    from .branches import EXTRACT_INSTRUCTION, extract

    model, options = _setup(args)
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    out = extract(model, args.text, fields, args.method, instruction=args.instruction or EXTRACT_INSTRUCTION,
                  parallel=not args.sequential, max_new_tokens=args.max_new_tokens, chat=args.chat,
                  method_options=options)
    if args.json:
        print(json.dumps({"fields": out.fields, "results": {k: r.to_dict() for k, r in out.results.items()}}))
        return 0
    for name, value in out.fields.items():
        print(f"{name}: {value}")
    steps = max(r.stats.forward_passes for r in out.results.values())
    how = "one after another" if args.sequential else "together"
    print(f"[extract] {len(fields)} branches decoded {how}: {out.forward_passes} branch forwards, "
          f"{steps} steps for the longest", file=sys.stderr)
    return 0


def cmd_reason(args: argparse.Namespace) -> int:
    from .branches import reason

    model, options = _setup(args)
    out = reason(model, args.question, args.sub, args.method, max_new_tokens=args.max_new_tokens,
                 answer_tokens=args.answer_tokens, chat=args.chat, method_options=options)
    if args.json:
        print(json.dumps({"answers": [{"question": q, **a.to_dict()} for q, a in zip(args.sub, out.answers)],
                          "final": out.final.to_dict()}))
        return 0
    for q, a in zip(args.sub, out.answers):
        print(f"- {q}\n  {a.text.strip()}")
    print(out.final.text.strip())
    print(out.final.stats.summary(), file=sys.stderr)
    return 0
