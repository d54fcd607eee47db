"""Smoke run of `paradec bench` on a tiny saved model: one category, one (two-turn) prompt, two methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paradec.bench import report
from paradec.cli import build_parser, main

from conftest import tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "bench"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + word tokenizer (with a chat template) saved as a model directory."""
    model = tiny_model("llama", seed=5)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.hf_model.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--dtype", "--methods", "--categories", "--limit", "--max-new-tokens", "--repeats",
                   "--questions", "--output", "--peers", "--no-peers", "--threads", "--draft", "--method-options"):
        assert option in text


def test_bench_smoke_run_writes_consistent_files(tiny_dir, tmp_path, capsys):
    out = tmp_path / "results"
    questions = tmp_path / "question.jsonl"  # in the tiny model's words, so that answers are real tokens
    questions.write_text('{"question_id": 1, "category": "chat", "turns": ["w5 w9 w17 w33 w40", "w7 w8"]}\n'
                         '{"question_id": 2, "category": "chat", "turns": ["w6"]}\n'
                         '{"question_id": 3, "category": "other", "turns": ["w11 w12"]}\n')
    code = main(["bench", "--model", str(tiny_dir), "--dtype", "float64", "--questions", str(questions),
                 "--categories", "chat", "--limit", "1", "--methods", "plain,ngram,auto", "--max-new-tokens", "12",
                 "--repeats", "2", "--threads", "1", "--peers", "all", "--output", str(out)])
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    records = saved["records"]
    ran = {r["method"] for r in records}
    assert {"plain", "ngram", "auto", "hf-generate", "hf-prompt-lookup", "hf-early-exit"} <= ran
    assert {"lade", "hf-assisted", "llamacpp", "llamacpp-lookup"} <= set(saved["unavailable"])  # no draft, not a GGUF
    # one prompt with two turns, two repeats, every contender
    assert {(r["turn"], r["repeat"]) for r in records if r["method"] == "ngram"} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(r["new_tokens"] == 12 and r["prompt_tokens"] > 0 for r in records)  # no EOS in the tiny model
    assert {r["prompt_id"] for r in records} == {"chat-1"}
    # the second turn's prompt holds the first turn, plain decoding's 12-token answer, and the second turn
    assert {r["prompt_tokens"] for r in records if r["turn"] == 1} == {5 + 12 + 2}
    # lossless in float64: every method equals plain and transformers' generate on both turns
    summary = saved["summary"]
    for m in ("ngram", "auto", "hf-generate", "hf-prompt-lookup", "hf-early-exit"):
        assert summary[m]["overall"]["exact_plain"] == {"checked": 4, "mismatches": 0, "first_divergence": []}
    assert summary["plain"]["overall"]["exact_hf"]["mismatches"] == 0
    # the JSON alone reproduces the summary
    assert report.summarize(records, list(summary)) == json.loads(json.dumps(summary))
    meta = saved["meta"]
    assert meta["dtype"] == "float64" and meta["threads"] == 1 and len(meta["load_before"]) == 3
    assert meta["others_before"] >= 0 and meta["others_during"] >= 0  # /proc/stat: read after set-up and over the run
    assert "--methods plain,ngram,auto" in meta["command"]
    md = (out / "report.md").read_text()
    assert "| ngram | " in md and meta["command"] in md
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert "speedup over plain" in capsys.readouterr().out


def test_peers_option_picks_the_peers():
    def names(*argv):
        from paradec.bench.cli import peer_names

        return peer_names(build_parser().parse_args(["bench", *argv]))

    assert names() == ["hf-generate", "hf-prompt-lookup", "llamacpp", "llamacpp-lookup", "lade"]
    assert "hf-assisted" in names("--draft", "x") and "hf-early-exit" not in names("--draft", "x")
    assert names("--peers", "all")[2] == "hf-early-exit" and len(names("--peers", "all")) == 7
    assert names("--no-peers") == names("--peers", "none") == []
    assert names("--peers", "llamacpp,hf-generate") == ["hf-generate", "llamacpp"]


def test_bench_rejects_bad_options_before_loading(tmp_path, capsys):
    assert main(["bench", "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    assert main(["bench", "--methods", "plain,nope", "--questions", str(FIXTURES / "question.jsonl")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["bench", "--peers", "hf-generate,vllm"]) == 2
    assert "unknown peer(s) vllm" in capsys.readouterr().err


def test_the_load_warning_reads_other_processes_after_set_up():
    """Review II item 11: `make run` built the kernels, loaded the model and measured the cost curve, then
    warned that "the machine was busy before the run": the 1-min load average counted its own set-up.
    The warning reads how busy other processes kept the CPUs, in a quiet moment after set-up."""
    from paradec.bench.cli import load_warnings
    from paradec.machine import others_busy

    after_setup = {"cpu_count": 2, "threads": 2, "load_before": [3.4, 1.9, 0.8], "load_max_1min": 3.9,
                   "others_before": 0.05, "others_during": 0.1}
    assert load_warnings(after_setup) == []
    busy = load_warnings({**after_setup, "others_before": 1.6, "others_during": 1.2})
    assert len(busy) == 2 and "1.6 of 2 CPUs busy just before the run" in busy[0] and "after its set-up" in busy[0]
    assert "1.2 of 2 CPUs" in busy[1]
    assert others_busy((10.0, 100.0, 5.0), (12.0, 104.0, 7.0)) == 1.0  # 4 CPU-seconds in 2 s, 2 of them ours
    assert others_busy((10.0, 100.0, 5.0), (12.0, 102.0, 7.0)) == 0.0
    assert others_busy(None, (12.0, 102.0, 7.0)) is None
