"""The demo dLLM's pipeline: the synthetic tasks, training and export in the LLaDA format, the learned
commit filter trained on its traces, the parallel benchmark, the built-in's checksums, the server."""

from __future__ import annotations

import json
import random
import shutil

import httpx
import pytest
from serve_helpers import LiveServer

import paradec
from paradec.api import encode_prompt
from paradec.bench import diffusion as suite
from paradec.diffusion import learned, tasks
from paradec.train import commit_filter
from paradec.train import dllm as train
from paradec.diffusion.decoders import make_decoder
from paradec.errors import ParadecError
from paradec.model.builtins import DLLM_DEMO, DLLM_DEMO_MANIFEST_SHA256, verified_directory

pytestmark = pytest.mark.usefixtures("one_thread_module")
TINY = train.TrainConfig(d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, steps=2, batch=4, warmup=1,
                         long_canvas=24, long_every=2, long_batch=2)


def test_tasks_are_seeded_and_every_check_accepts_its_reference():
    a, b = tasks.sample_examples(80, seed=3), tasks.sample_examples(80, seed=3)
    assert [(x.prompt, x.answer) for x in a] == [(x.prompt, x.answer) for x in b]
    assert {x.task for x in a} == set(tasks.TASKS)
    tok = train.build_tokenizer()
    for x in a:
        assert x.check(x.answer), x
        assert not x.check(x.answer + " a a"), x
        ids = tok(x.prompt).input_ids + tok(x.answer, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids, x  # the tokenizer covers every task word


def test_benchmark_examples_are_never_trained_on():
    """The benchmark reads held-out prompts only; training batches and filter traces never do."""
    test = tasks.sample_examples(160, seed=0)
    assert all(tasks.held_out(e.prompt) for e in test) and {e.task for e in test} == set(tasks.TASKS)
    train_split = tasks.sample_examples(800, seed=0, split="train")
    assert not any(tasks.held_out(e.prompt) for e in train_split)
    rng = random.Random(2)
    share = sum(tasks.held_out(tasks.copy(rng).prompt) for _ in range(4000)) / 4000
    assert abs(share - 1 / tasks.HELD_OUT) < 0.02  # one prompt in HELD_OUT
    tok = train.build_tokenizer()
    batches = train.Batches(TINY, tok, random.Random(0))
    answer = tok.convert_tokens_to_ids(tasks.ANSWER)
    seen = 0
    for step in range(4):
        for row in batches.next(step)[0].tolist():
            prompt = tok.decode(row[: row.index(answer)])
            assert prompt.split()[0] in {"copy", "reverse", "sort", "shuffle", "line", "fill", "latin"}, prompt
            assert not tasks.held_out(prompt), prompt
            seen += 1
    assert seen == 2 * TINY.batch + 2 * TINY.long_batch
    with pytest.raises(ValueError, match="split"):
        tasks.draw("copy", random.Random(0), "dev")


def test_dependent_tasks_accept_every_valid_answer():
    rng = random.Random(0)
    shuffled = tasks.shuffle(rng)
    items = shuffled.prompt.split(" : ")[1].split()
    assert shuffled.check(" ".join(reversed(items))) and shuffled.check(" ".join(sorted(items)))
    assert not shuffled.check(" ".join(items[:-1]))
    for _ in range(20):
        ex = tasks.line_anywhere(rng)
        if "join" in ex.prompt:
            break
    line, who = ex.prompt.split(" : ")[1].split(" ; ")[0].split(), ex.prompt.split()[-2]
    assert all(ex.check(" ".join(line[:i] + [who] + line[i:])) for i in range(len(line) + 1))
    assert not ex.check(" ".join(line))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny model trained two steps by the real training command's code, with a filter from its traces."""
    out = tmp_path_factory.mktemp("demo") / "dllm"
    summary = train.train(TINY, out, eval_every=1000, checkpoint_every=1000, command="test", eval_per_task=1)
    model = paradec.load(str(out), dtype="float32")
    x, y = commit_filter.collect(model, [encode_prompt(model, e.prompt) for e in tasks.sample_examples(4, 1, split="train")], 8, 8)
    commit_filter.train_filter(x, y, epochs=3).save(out / learned.FILENAME, {"test": True})
    train.write_manifest(out)
    return out, summary


def test_training_exports_a_llada_checkpoint_with_checksums(demo):
    out, summary = demo
    assert json.loads((out / "config.json").read_text())["model_type"] == "llada"
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert set(manifest["files"]) >= {"model.safetensors", "config.json", "tokenizer.json", learned.FILENAME}
    assert manifest["command"] == "test" and manifest["config"]["seed"] == 0 and "train_seconds" in manifest
    assert summary["history"][-1]["step"] == 2  # evaluated at the end
    model = paradec.load(str(out), dtype="float32")
    assert model.diffusion.format == "llada" and model.diffusion.mask_token_id == model.tokenizer.mask_token_id
    r = paradec.generate(model, "copy : a b c", "threshold", max_new_tokens=8, method_options={"block_length": 8})
    assert r.stats.forward_passes >= 1


def test_checksums_refuse_a_changed_file(demo, tmp_path):
    out, _ = demo
    copy = shutil.copytree(out, tmp_path / "copy")
    import hashlib

    pinned = hashlib.sha256((copy / "MANIFEST.json").read_bytes()).hexdigest()
    assert verified_directory(copy, pinned) == copy
    with pytest.raises(ParadecError, match="pinned SHA-256"):
        verified_directory(copy, "0" * 64)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ParadecError, match="model.safetensors"):
        verified_directory(copy, pinned)


@pytest.mark.skipif(not (DLLM_DEMO / "MANIFEST.json").is_file(), reason="the demo dLLM is not in this checkout")
def test_the_builtin_demo_loads_verified():
    assert verified_directory(DLLM_DEMO, DLLM_DEMO_MANIFEST_SHA256) == DLLM_DEMO
    model = paradec.load("dllm-demo", dtype="float32")
    assert model.diffusion is not None and (DLLM_DEMO / learned.FILENAME).is_file()
    r = paradec.generate(model, "copy : a b c", "lossless", max_new_tokens=8)
    assert r.text == paradec.generate(model, "copy : a b c", "plain", max_new_tokens=8).text


def test_learned_filter_decodes(demo):
    out, _ = demo
    model = paradec.load(str(out), dtype="float32")
    decoder = make_decoder("learned", model, block_length=8, threshold=0.5)
    r = paradec.generate(model, "sort : c b a", decoder, max_new_tokens=8)
    assert r.stats.forward_passes >= 1


def test_parallel_suite_counts_and_reports(demo, tmp_path):
    out, _ = demo
    model = paradec.load(str(out), dtype="float32")
    contenders = suite.resolve("threshold-0.5,lossless,learned", {"threshold-0.5": {"threshold": 0.4}})
    assert [c.label for c in contenders] == ["one-per-step", "threshold-0.5", "lossless", "learned"]
    assert contenders[1].options == {"threshold": 0.4}
    records, unavailable = suite.run(model, contenders, 1, 0, 8, 8, ["copy", "shuffle"])
    assert not unavailable and len(records) == 2 * 4
    summary = suite.summarize(records, [c.label for c in contenders])
    assert summary["lossless"]["overall"]["same_as_baseline"] == 1.0
    assert summary["one-per-step"]["overall"]["forward_ratio"] == 1.0
    base = sum(r["forwards"] for r in records if r["contender"] == "one-per-step")
    fast = sum(r["forwards"] for r in records if r["contender"] == "threshold-0.5")
    assert summary["threshold-0.5"]["overall"]["forward_ratio"] == pytest.approx(base / fast)
    base_s = sum(r["seconds"] for r in records if r["contender"] == "one-per-step")
    fast_s = sum(r["seconds"] for r in records if r["contender"] == "threshold-0.5")
    assert summary["threshold-0.5"]["overall"]["time_ratio"] == pytest.approx(base_s / fast_s)
    paths = suite.write_all(tmp_path, records, summary, ["copy", "shuffle"], {"model": "m", "command": "c",
                            "per_task": 1, "gen_length": 8, "block_length": 8}, unavailable)
    assert "shuffle*" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 0 and paths["time_png"].stat().st_size > 0
    assert json.loads(paths["json"].read_text())["summary"]["lossless"]["overall"]["examples"] == 2
    with pytest.raises(ParadecError, match="unknown contender"):
        suite.resolve("nope", {})


def test_bench_suite_parallel_command(demo, tmp_path):
    out, _ = demo
    from paradec.cli import main

    code = main(["bench", "--suite", "parallel", "--model", str(out), "--dtype", "float32", "--limit", "1",
                 "--categories", "copy,reverse", "--methods", "threshold-0.9,lossless", "--max-new-tokens", "8",
                 "--block-length", "8", "--output", str(tmp_path), "--threads", "1"])
    assert code == 0
    data = json.loads((tmp_path / "parallel.json").read_text())
    assert list(data["summary"]) == ["one-per-step", "threshold-0.9", "lossless"]
    assert data["meta"]["command"].startswith("paradec bench --suite parallel")
    assert len(data["meta"]["load_before"]) == 3 and "load average" in (tmp_path / "parallel.md").read_text()


def test_server_serves_a_diffusion_lm(demo):
    out, _ = demo
    model = paradec.load(str(out), dtype="float32")
    want = paradec.generate(model, "reverse : a b c", "threshold", max_new_tokens=8)
    with LiveServer(model) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        body = {"prompt": "reverse : a b c", "max_tokens": 8, "temperature": 0, "paradec": {"method": "threshold"}}
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want.text
        assert r.json()["paradec"]["stats"]["forward_passes"] == want.stats.forward_passes
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
            chunks = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert chunks[-1] == "[DONE]"
        assert "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1]) == want.text
        r = http.post("/v1/completions", json={**body, "paradec": {"method": "ngram"}})
        assert r.status_code == 400 and "lossless" in r.text  # its methods are the diffusion decoders
    from paradec.serve.app import ServeConfig

    messages = set()
    with LiveServer(model, ServeConfig(request_options=frozenset({"all"}))) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:  # Review II item 4: no file named by a request
        for path in ("/etc/passwd", "/nonexistent", str(out / "commit_filter.safetensors")):
            r = http.post("/v1/completions", json={**body, "paradec": {"method": "learned", "options": {"filter": path}}})
            assert r.status_code == 400 and path not in r.text, r.text
            messages.add(r.json()["error"]["message"])
    assert len(messages) == 1 and "cannot name a file" in messages.pop()


def test_every_decoder_is_listed_in_methods():
    from paradec.diffusion import lossless  # noqa: F401 (registers itself; learned is imported above)
    from paradec.diffusion.decoders import DECODERS
    from paradec.methods import DIFFUSION_DECODERS

    assert set(DIFFUSION_DECODERS) == set(DECODERS)
