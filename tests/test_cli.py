"""The CLI through a subprocess, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FIXED_COSTS

# The default method is auto; on the real model it gets a cost curve by hand (tests never time the real model).
COSTS = ["--method-options", json.dumps({"costs": FIXED_COSTS})]


def paradec(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paradec.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_generate_streams_text_and_prints_stats():
    out = paradec("generate", "Say hello.", "--chat", "--max-new-tokens", "8", "--dtype", "float32", *COSTS)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "[auto]" in out.stderr and "tokens/forward" in out.stderr
    # nothing a user cannot act on: no library warnings (the summary is the last line)
    assert "Warning" not in out.stderr and out.stderr.strip().splitlines()[-1].startswith("[auto]"), out.stderr


def test_generate_json_schema():
    out = paradec("generate", "The capital of France is", "--max-new-tokens", "6", "--dtype", "float32", "--json", *COSTS)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"text", "token_ids", "stats"}
    assert isinstance(data["text"], str) and all(isinstance(t, int) for t in data["token_ids"])
    stats = data["stats"]
    for key in ("new_tokens", "forward_passes", "mean_accepted_length", "drafted", "accepted",
                "prefill_time", "decode_time", "tokens_per_second", "stop_reason", "method", "methods"):
        assert key in stats
    assert stats["new_tokens"] == len(data["token_ids"]) <= 6
    assert stats["method"] == "auto" and sum(stats["methods"].values()) == stats["forward_passes"]


def test_methods_lists_plain_and_auto():
    out = paradec("methods")
    assert out.returncode == 0 and "plain" in out.stdout and "auto" in out.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--model", "/nonexistent/model.gguf"], "no such file"),
        (["--temperature", "-0.5"], "temperature"),
        (["--top-p", "1.5"], "top_p"),
        (["--method", "nope"], "unknown method"),
        (["--method-options", "{oops"], "not valid JSON"),
    ],
)
def test_bad_input_is_one_line_error(args, message):
    out = paradec("generate", "hi", *args)
    assert out.returncode == 2
    lines = [l for l in out.stderr.strip().splitlines() if l.startswith("paradec: error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_unreadable_gguf_is_one_line_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    out = paradec("generate", "hi", "--model", str(bad))
    assert out.returncode == 2 and "cannot load the GGUF file" in out.stderr and "Traceback" not in out.stderr


def test_prompt_longer_than_context_is_one_line_error():
    out = paradec("generate", "word " * 9000, "--max-new-tokens", "4")
    assert out.returncode == 2 and "context window" in out.stderr and "Traceback" not in out.stderr
