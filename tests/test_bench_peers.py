"""The benchmark's extra contenders: llama.cpp peers and the cost-curve command."""

from __future__ import annotations

import importlib.util

import pytest

from paradec.bench import llamacpp
from paradec.costs import measure
from paradec.cli import main
from paradec.errors import ParadecError

from conftest import tiny_model


def test_llamacpp_peers_say_why_they_cannot_run(monkeypatch):
    model = tiny_model("llama")
    if importlib.util.find_spec("llama_cpp") is not None:
        assert "needs a GGUF model" in llamacpp.unavailable_reason(model)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    peers, missing = llamacpp.make_llamacpp(model)
    assert peers == [] and "pip install llama-cpp-python" in missing["llamacpp"]


def test_llamacpp_spec_parsing():
    assert llamacpp.parse_spec("q4_0:2") == ("Q4_0", 2)
    assert llamacpp.parse_spec("file") == ("file", 1)
    for bad in ("Q4_0:x", "Q4_0:0"):
        with pytest.raises(ParadecError):
            llamacpp.parse_spec(bad)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is optional (pip install llama-cpp-python)")
def test_llamacpp_decodes_the_embedded_model_greedily():
    import paradec

    model = paradec.load("smollm2-135m")
    peers, missing = llamacpp.make_llamacpp(model, "file:1")
    assert not missing
    ids = model.tokenizer("The capital of France is").input_ids
    plain, lookup = (p.run(ids, 12) for p in peers)
    assert len(plain.token_ids) == 12 and plain.forward_passes == 11
    assert lookup.token_ids == plain.token_ids  # its prompt lookup is lossless too
    # a repeated prompt is prefilled again (llama-cpp-python would reuse its cached prefix: a timed run
    # after the warm-up skipped the prefill), and prompt lookup runs on prompts longer than a batch row
    evaluated: list[int] = []
    llm = peers[0].llm
    real_eval = llm.eval
    llm.eval = lambda tokens: (evaluated.append(len(tokens)), real_eval(tokens))[1]
    peers[0].run(ids, 3)
    assert evaluated[0] == len(ids)
    long_ids = model.tokenizer("Repeat after me: the old lighthouse keeper painted the tower. " * 12).input_ids
    assert len(peers[1].run(long_ids, 8).token_ids) == 8


def test_llamacpp_at_its_best_is_measured_once_and_cached(monkeypatch, tmp_path):
    """``--llamacpp auto``: the fastest of the file and Q4_0 (a 4-bit file) at 1 .. cores threads, timed once."""
    from types import SimpleNamespace

    from paradec.model.builtins import BUILTIN_MODELS

    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path))
    model = SimpleNamespace(path=BUILTIN_MODELS["smollm2-135m"].locate())  # the shipped Q4_1 file
    assert llamacpp.file_type(model.path) == "Q4_1" and llamacpp.file_class(model.path) == "4-bit"
    assert llamacpp.candidates(model, 2) == ["file:1", "file:2", "Q4_0:1", "Q4_0:2"]
    timed = []
    speeds = {"file:1": 50.0, "file:2": 61.0, "Q4_0:1": 55.0, "Q4_0:2": 70.0}
    fake = lambda m, spec, tokens: timed.append(spec) or speeds[spec]  # noqa: E731
    assert llamacpp.best_spec(model, cores=2, measure=fake) == "Q4_0:2"
    assert llamacpp.best_spec(model, cores=2, measure=fake) == "Q4_0:2" and len(timed) == 4  # cached
    assert llamacpp.best_spec(model, cores=1, measure=fake) == "Q4_0:1"  # another machine shape: measured anew


def test_cost_curve_measures_every_k_and_the_command_prints_it(capsys):
    curve = measure(tiny_model("llama"), ks=(1, 3), context=8, rounds=2, warmup=1)
    assert set(curve) == {1, 3} and all(v > 0 for v in curve.values())
    assert main(["cost-curve", "--ks", "x"]) == 2
    assert "--ks must be comma-separated" in capsys.readouterr().err
