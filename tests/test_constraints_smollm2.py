"""Structured output on the embedded SmolLM2-135M (float32): its real byte-level BPE vocabulary, every method's
constrained greedy output equal to plain constrained greedy decoding on every example of the structured
benchmark, what ends by itself valid against its schema; the command line's --json-schema / --regex / --grammar."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import paradec
from paradec import Constraint
from paradec.bench.structured import SCHEMAS, TASKS, examples, valid
from paradec.constraints import compile_constraint
from paradec.constraints.vocab import token_bytes, vocabulary

from conftest import FIXED_COSTS

pytestmark = pytest.mark.slow

METHODS = ["forced", "ngram", "recycling", "lookahead", "jacobi", "eagle", "medusa", "auto"]


def test_our_vocabulary_reading_agrees_with_the_librarys(smollm2):
    """The fallback reader (vocab.py) and llguidance's own agree on every token that decodes to whole characters."""
    ours = token_bytes(smollm2.tokenizer, smollm2.vocab_size)
    library = vocabulary(smollm2).tokenizer
    special = set(smollm2.tokenizer.all_special_ids)
    checked = 0
    for i in range(0, smollm2.vocab_size, 7):
        if i in special or "\ufffd" in smollm2.tokenizer.decode([i]):
            continue
        assert ours[i] == library.decode_bytes([i]), i
        checked += 1
    assert checked > 5000


def test_every_method_equals_plain_constrained_greedy_on_the_benchmark_examples(smollm2):
    cases = examples(list(TASKS), 1, 0)  # the benchmark checks the same on every example it runs
    grammars = {t: compile_constraint(Constraint.json_schema(SCHEMAS[t]), smollm2) for t in TASKS}
    forced_seen = 0
    for case in cases:
        messages = [{"role": "user", "content": case.prompt}]
        plain = paradec.generate(smollm2, messages, "plain", max_new_tokens=48, constraint=grammars[case.task])
        if plain.stats.constraint == "complete":
            assert plain.stats.stop_reason == "eos" and valid(plain.text, SCHEMAS[case.task])
        for method in METHODS:
            options = {"costs": FIXED_COSTS} if method == "auto" else None
            ours = paradec.generate(smollm2, messages, method, max_new_tokens=48, constraint=grammars[case.task],
                                    method_options=options)
            assert ours.token_ids == plain.token_ids, (method, case.id)
            assert ours.stats.forward_passes <= plain.stats.forward_passes
            forced_seen += ours.stats.forced_tokens
    assert forced_seen > 0


def paradec_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paradec.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_constraints(tmp_path):
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                                  "required": ["city"], "additionalProperties": False}))
    costs = ["--method-options", json.dumps({"costs": FIXED_COSTS}), "--dtype", "float32"]
    out = paradec_cli("generate", "Where is the Eiffel Tower? Reply in JSON.", "--chat", "--json-schema", str(schema),
                      "--max-new-tokens", "40", "--json", *costs)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["stats"]["constraint"] == "complete" and list(json.loads(data["text"])) == ["city"]
    out = paradec_cli("generate", "A phone number:", "--regex", r"[0-9]{3}-[0-9]{4}", "--max-new-tokens", "12", *costs)
    assert out.returncode == 0 and out.stdout.strip()[:3].isdigit() and len(out.stdout.strip()) == 8, out.stderr
    grammar = tmp_path / "answer.gbnf"
    grammar.write_text('root ::= "yes" | "no"\n')
    out = paradec_cli("generate", "Is Paris in France?", "--chat", "--grammar", str(grammar), "--max-new-tokens", "4", *costs)
    assert out.returncode == 0 and out.stdout.strip() in ("yes", "no"), out.stderr
    out = paradec_cli("generate", "x", "--regex", "a(b", "--dtype", "float32")
    assert out.returncode == 2 and "invalid regular expression" in out.stderr and "unclosed group" in out.stderr
    out = paradec_cli("generate", "x", "--json-schema", str(tmp_path / "missing.json"))
    assert out.returncode == 2 and "cannot read" in out.stderr
    out = paradec_cli("generate", "Say a long story.", "--chat", "--json-schema", str(schema), "--max-new-tokens", "3", *costs)
    assert out.returncode == 0 and "does not complete the constraint" in out.stderr
