"""Smoke run of `paradec bench --suite structured` on a tiny saved model over a byte-level BPE."""

from __future__ import annotations

import json

import pytest
import torch

from paradec.bench.structured import SCHEMAS, TASKS, examples, valid
from paradec.cli import main

from test_constraints import bpe_model


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    model = bpe_model(seed=2, dtype=torch.float32, chat=True, max_positions=1024)
    path = tmp_path_factory.mktemp("tiny-bpe")
    model.hf_model.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


def test_tasks_read_the_shipped_records():
    cases = examples(list(TASKS), 2, 0)
    assert [c.task for c in cases] == ["ner", "ner", "boolq", "boolq", "asdiv", "asdiv"]
    assert all(", ".join(SCHEMAS[c.task]["required"]) in c.prompt for c in cases)
    assert valid('```json\n{"answer": true, "evidence": "It is."}\n```', SCHEMAS["boolq"])
    assert not valid('{"answer": "yes", "evidence": "It is."}', SCHEMAS["boolq"])


def test_structured_suite_smoke_run(bpe_dir, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["bench", "--suite", "structured", "--model", str(bpe_dir), "--dtype", "float32", "--quant", "none",
                 "--categories", "boolq,asdiv", "--limit", "1", "--methods", "forced,ngram,auto", "--max-new-tokens", "40",
                 "--method-options", '{"auto": {"costs": {"16": 1.5}}}', "--threads", "1", "--output", str(out)])
    assert code == 0  # every method equals plain, with and without the schema
    saved = json.loads((out / "structured.json").read_text())
    summary = saved["summary"]
    assert set(summary) == {"plain", "plain+schema", "forced+schema", "ngram+schema", "auto+schema", "ngram", "auto"}
    assert all(t["runs"] == 2 and not t["mismatches"] for t in summary.values())
    assert summary["forced+schema"]["forced"] > 0 and summary["plain+schema"]["forced"] == 0
    for r in saved["records"]:  # what ends by itself under the schema validates
        if r["contender"].endswith("+schema") and r["stats"]["constraint"] == "complete":
            assert valid(r["text"], SCHEMAS[r["task"]])
    assert "| auto+schema |" in capsys.readouterr().out
