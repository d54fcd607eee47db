"""The server keeps clients apart and in bounds: no state learnt from one client's text reaches
another, per-request options only as the operator allows, no file opened for a request, cancel and
time limits checked between decoding steps, a /health that tells a wedged worker, and 4xx (not 500,
and never internals) for bad text, bad templates, foreign Host headers and oversized bodies.

Live servers on loopback with a tiny float64 model, as in test_serve.py.
"""

from __future__ import annotations

import pytest
from conftest import tiny_model

import paradec

CONTEXT = 1024


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=3, max_positions=CONTEXT)


def test_interrupt_hook_ends_a_generation_between_steps(tiny):
    asked = []

    def interrupt():
        asked.append(1)
        return "cancelled" if len(asked) == 3 else None

    r = paradec.generate(tiny, "w1 w2", "ngram", max_new_tokens=50, interrupt=interrupt)
    full = paradec.generate(tiny, "w1 w2", "plain", max_new_tokens=50)
    assert r.stats.stop_reason == "cancelled" and len(asked) == 3
    assert 0 < len(r.token_ids) < 50 and r.token_ids == full.token_ids[: len(r.token_ids)]
