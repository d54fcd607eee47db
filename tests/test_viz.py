"""The decoding view: what it records, the page it writes, and that page opened in a real headless
browser (Debian's chromium), showing the step count and the accepted tokens the stats report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import paradec
from paradec.cli import main
from paradec.viz import StepRecord, Trace, page_data, provenance, render, write_view

from conftest import FIXED_COSTS, tiny_model

FLAT = {"16": 1.0}
PROMPT = [3, 4, 5, 3, 4, 5, 3, 4]  # repetitive: ngram and recycling drafts get accepted
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    path = next((p for name in BROWSERS if (p := shutil.which(name))), None)
    if path is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it): "
                    "the decoding view is tested in a real headless browser")
    return path


def headless(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium, headless, offline, with a profile of its own; ``args`` say what to do (dump, screenshot)."""
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args, url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def rendered(dom: str) -> tuple[dict, dict]:
    """What the page's script wrote: its figures, and how many output tokens of each kind it shows."""
    assert 'data-ready="true"' in dom, "the page's script did not run to its end"
    figures = {key: int(re.search(f'id="{key}">([^<]*)<', dom).group(1)) for key in ("steps", "accepted", "tokens")}
    kinds = {kind: len(re.findall(f'class="tok {kind}[ "]', dom)) for kind in ("prefill", "accepted", "bonus", "plain")}
    return figures, kinds


def generate_page(model, prompt, path: Path, **kwargs):
    trace = Trace()
    result = paradec.generate(model, prompt, on_step=trace.step, **kwargs)
    write_view(path, trace, result, model.tokenizer, prompt, model.name)
    return result, trace


def assert_page_shows(dom: str, stats) -> None:
    figures, kinds = rendered(dom)
    assert figures == {"steps": stats.forward_passes, "accepted": stats.accepted_tokens, "tokens": stats.new_tokens}
    assert kinds["accepted"] == stats.accepted_tokens and kinds["prefill"] == 1
    assert sum(kinds.values()) == stats.new_tokens


# ---------- the record and the page, without a browser ----------


def test_provenance_of_every_token():
    steps = [StepRecord("ngram", 1, (7, 8, 9), (-1, 0, 1), 0, (0, 1), (7, 8, 4), 3),
             StepRecord("plain", 4, (), (), 0, (), (5,), 1),
             StepRecord("recycling", 5, (2,), (-1,), 0, (), (6,), 1)]
    assert provenance(steps, 6) == [("prefill", -1), ("accepted", 0), ("accepted", 0), ("bonus", 0), ("plain", 1),
                                    ("bonus", 2)]
    assert provenance(steps, 3) == provenance(steps, 6)[:3]  # a stop string cut the text


def test_page_data_matches_the_result():
    model = tiny_model("llama", seed=3)
    trace = Trace()
    result = paradec.generate(model, PROMPT, "auto", max_new_tokens=40, method_options={"costs": FLAT}, on_step=trace.step)
    data = page_data(trace, result, model.tokenizer, PROMPT, model.name)
    assert "".join(t["text"] for t in data["tokens"]) == result.text
    assert len(data["steps"]) == result.stats.forward_passes and result.stats.accepted_tokens > 0
    assert sum(t["kind"] == "accepted" for t in data["tokens"]) == result.stats.accepted_tokens
    assert sum(s["delivered"] for s in data["steps"]) + 1 == result.stats.new_tokens
    assert {s["method"] for s in data["steps"]} == set(result.stats.methods)
    json.dumps(data)  # plain JSON, no tensors


def test_recording_costs_nothing_unless_asked():
    """Without a hook the decoder builds no step records."""
    model = tiny_model("llama", seed=3)
    calls = []
    a = paradec.generate(model, PROMPT, "ngram", max_new_tokens=20, on_step=calls.append)
    b = paradec.generate(model, PROMPT, "ngram", max_new_tokens=20)
    assert len(calls) == a.stats.forward_passes and a.token_ids == b.token_ids


def test_page_is_self_contained_and_text_cannot_break_out():
    data = {"model": "m", "prompt": "</script><script>alert(1)</script>", "stats": {"method": "plain", "methods": {}},
            "tokens": [{"text": "</script>", "kind": "prefill", "step": -1}], "steps": []}
    page = render(data)
    script = page.split('<script id="paradec-data" type="application/json">')[1].split("</script>")[0]
    assert json.loads(script) == data  # the whole payload, not cut at a "</script>" in the text
    assert "http://" not in page and "https://" not in page and "src=" not in page  # nothing to fetch
    assert "default-src 'none'" in page


def test_cli_writes_the_view(tmp_path):
    model = tiny_model("llama", seed=3)
    directory = tmp_path / "tiny"
    model.hf_model.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    page = tmp_path / "view.html"
    code = main(["generate", "w3 w4 w5 w3 w4 w5 w3", "--model", str(directory), "--dtype", "float64",
                 "--max-new-tokens", "20", "--html", str(page), "--method-options", json.dumps({"costs": FLAT})])
    assert code == 0 and page.exists()
    data = json.loads(page.read_text().split('type="application/json">')[1].split("</script>")[0])
    assert len(data["tokens"]) == 20 and data["stats"]["method"] == "auto"
    assert main(["generate", "w1", "--model", str(directory), "--dtype", "float64", "--max-new-tokens", "2",
                 "--html", str(tmp_path / "no" / "such" / "dir.html")]) == 2
    assert main(["generate", "w1", "--model", str(directory), "--n", "2", "--html", str(page)]) == 2  # one generation


# ---------- in a real browser ----------


@pytest.mark.parametrize("method", ["auto", "plain"])
def test_page_in_headless_chromium_shows_the_stats(tmp_path, method):
    model = tiny_model("llama", seed=3)
    result, _ = generate_page(model, PROMPT, tmp_path / "view.html", method=method, max_new_tokens=40,
                              method_options={"costs": FLAT} if method == "auto" else None)
    assert (result.stats.accepted_tokens > 0) == (method == "auto")
    dom = headless((tmp_path / "view.html").as_uri(), tmp_path, "--dump-dom").stdout
    assert_page_shows(dom, result.stats)


@pytest.mark.slow
def test_real_model_page_in_headless_chromium(smollm2, tmp_path):
    """SmolLM2 with auto (a cost curve by hand: tests never time the real model), a screenshot too."""
    prompt = paradec.encode_prompt(smollm2, "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
                                   chat=True)
    result, _ = generate_page(smollm2, prompt, tmp_path / "view.html", max_new_tokens=48,
                              method_options={"costs": FIXED_COSTS})
    url = (tmp_path / "view.html").as_uri()
    assert_page_shows(headless(url, tmp_path, "--dump-dom").stdout, result.stats)
    headless(url, tmp_path, f"--screenshot={tmp_path / 'view.png'}", "--window-size=1100,900", "--hide-scrollbars")
    assert (tmp_path / "view.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
