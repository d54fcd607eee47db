"""``paradec generate --n/--first-finish``, ``paradec extract`` and ``paradec reason`` in-process, on a tiny model."""

from __future__ import annotations

import json

import pytest

import paradec
from paradec.cli import main
from paradec.parallel.branches import extract, first_finish, generate_n, reason


@pytest.fixture()
def tiny(monkeypatch, tiny_llama):
    monkeypatch.setattr("paradec.model.load", lambda *args, **kw: tiny_llama)
    return tiny_llama


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_n_prints_every_sample(tiny, capsys):
    code, out, err = run(capsys, "generate", "w1 w2", "--n", "3", "--temperature", "1", "--seed", "5",
                         "--max-new-tokens", "6", "--json")
    assert code == 0
    want = generate_n(tiny, "w1 w2", 3, temperature=1.0, seed=5, max_new_tokens=6)
    assert [r["token_ids"] for r in json.loads(out)] == [r.token_ids for r in want]
    code, out, err = run(capsys, "generate", "w1 w2", "--n", "2", "--max-new-tokens", "4")
    assert code == 0 and out.count("--- sample") == 2 and err.count("[auto]") == 2  # the default method


def test_generate_first_finish(tiny, capsys):
    code, out, err = run(capsys, "generate", "w1 w2", "--n", "3", "--first-finish", "--temperature", "1",
                         "--seed", "2", "--max-new-tokens", "6", "--stop", "w7", "--json")
    want = first_finish(tiny, "w1 w2", 3, temperature=1.0, seed=2, max_new_tokens=6, stop=["w7"])
    data = json.loads(out)
    assert code == 0 and data["winner"] == want.winner
    assert [r["token_ids"] for r in data["results"]] == [r.token_ids for r in want.results]


def test_extract_and_reason(tiny, capsys):
    code, out, err = run(capsys, "extract", "w30 w31", "--fields", "w4,w5", "--max-new-tokens", "5")
    want = extract(tiny, "w30 w31", ["w4", "w5"], max_new_tokens=5)
    assert code == 0 and out.splitlines() == [f"{k}: {v}" for k, v in want.fields.items()]
    assert "decoded together" in err
    code, out, _ = run(capsys, "extract", "w30 w31", "--fields", "w4,w5", "--max-new-tokens", "5", "--sequential",
                       "--json")
    assert code == 0 and json.loads(out)["fields"] == want.fields
    code, out, _ = run(capsys, "reason", "w1 w2", "--sub", "w3", "--sub", "w4 w5", "--max-new-tokens", "4",
                       "--answer-tokens", "4", "--json")
    want = reason(tiny, "w1 w2", ["w3", "w4 w5"], max_new_tokens=4, answer_tokens=4)
    data = json.loads(out)
    assert code == 0 and [a["token_ids"] for a in data["answers"]] == [a.token_ids for a in want.answers]
    assert data["final"]["token_ids"] == want.final.token_ids


@pytest.mark.parametrize("argv, message", [
    (["generate", "w1", "--n", "0"], "--n must be"),
    (["extract", "w1", "--fields", "a", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["reason", "w1", "--sub", "a", "--method", "nope"], "unknown method"),
])
def test_bad_arguments_are_one_line_errors(tiny, capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err
