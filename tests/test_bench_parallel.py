"""``paradec bench-serve`` (concurrent clients against a live server) and ``paradec bench-extract``
(parallel vs sequential extraction) at tiny sizes: the figures they print are there and the
exactness counts they report are right. No timing is asserted."""

from __future__ import annotations

import json
import pytest
from serve_helpers import LiveServer
from test_bench_data import FIXTURES, ROOTS

from paradec.bench import data
from paradec.bench.extraction import predicted, score
from paradec.bench.serving import percentile
from paradec.cli import main
from paradec.serve.app import ServeConfig

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_bench_serve_reports_every_level_and_the_n_samples_run(tiny_llama, tmp_path, capsys):
    out = tmp_path / "serve.json"
    with LiveServer(tiny_llama, ServeConfig(max_batch=4, cost_curve="off")) as srv:
        code = main(["bench-serve", "--url", srv.url, "--questions", str(FIXTURES / "question.jsonl"),
                     "--clients", "1,3", "--methods", "ngram", "--requests", "4", "--max-tokens", "6",
                     "--samples", "2", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.read_text())
    levels = result["levels"]
    assert [(r["method"], r["clients"]) for r in levels] == [("plain", 1), ("ngram", 1), ("plain", 3), ("ngram", 3)]
    for r in levels:
        assert (r["ok"], r["same_as_lowest"], r["same_as_plain"]) == (4, 4, 4), r  # none lost, none mixed, lossless
        assert r["tokens"] > 0 and r["forwards"] > 0 and r["tokens_per_forward"] > 0 and r["sequences_per_forward"] > 0
        assert r["latency_p50"] <= r["latency_p95"]
    for s in result["samples"]:
        assert s["lost"] == 0 and s["forwards_ratio"] >= 1  # sample 0 of n = 2 is the n = 1 answer
    assert "| plain | 3 | 4/4 |" in printed and "identical to the 1-client ones: 4/4" in printed
    assert "n = 2 samples:" in printed


def test_bench_extract_gives_identical_fields_in_fewer_forwards(tiny_llama, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("paradec.model.load", lambda *args, **kw: tiny_llama)
    real = data.ner_sentences
    monkeypatch.setattr(data, "ner_sentences", lambda limit, seed: real(limit, seed, ROOTS))  # the fixture file
    out = tmp_path / "extract.json"
    code = main(["bench-extract", "--limit", "2", "--max-new-tokens", "5", "--method", "ngram", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "identical greedy fields: 8/8" in printed
    rows = json.loads(out.read_text())["sentences"]
    assert len(rows) == 2
    for r in rows:
        assert r["parallel"] == r["sequential"] and r["forwards_parallel"] < r["forwards_sequential"]


def test_scoring_helpers():
    assert predicted("Japan; Syria, none") == {"japan", "syria"} and predicted(" none.") == set()
    assert score({"LOC": "Japan; Asia", "PER": "none"}, {"LOC": ("Japan",), "PER": ("Takagi",)}) == (1, 2, 2)
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([1.0, 2.0], 0.95) == pytest.approx(1.95)
