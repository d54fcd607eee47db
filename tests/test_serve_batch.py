"""The server's continuous batch: concurrent requests decoded together, each exactly as alone; ``n``
choices; clients that leave mid-stream; the batch bound; shared drafters; /metrics.

Every answer is compared with ``paradec.generate`` on the same tiny float64 model.
"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import openai
import pytest
from conftest import tiny_model
from serve_helpers import LiveServer, wait_until

import paradec
from paradec.bench.serving import parse_metrics
from paradec.serve.app import ServeConfig

TIMEOUT = 60.0
C, CHAT = "/v1/completions", "/v1/chat/completions"
METHODS = ["plain", "ngram", "jacobi", "lookahead", "recycling", "layerskip"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=3, max_positions=512)


@pytest.fixture(scope="module")
def server(tiny):
    with LiveServer(tiny, ServeConfig(method="plain", max_queue=32, max_batch=8)) as srv:  # as ``reference``
        yield srv


def reference(model, prompt, n, method="plain", **kw) -> paradec.Result:
    return paradec.generate(model, prompt, method, max_new_tokens=n, **kw)


class StepLog:
    """Records, at every batch step, the sequences in the batch (wraps ``Batch.step``)."""

    def __init__(self, worker):
        self.batch, self.steps = worker.batch, []
        self.step = self.batch.step
        self.batch.step = self.record

    def record(self):
        self.steps.append(list(self.batch.sequences))
        return self.step()

    def close(self):
        self.batch.step = self.step


def stream_all(url: str, bodies: list[dict], quit_after: dict[int, int] | None = None) -> list[str | None]:
    """Stream every body at once; client i in ``quit_after`` hangs up after that many text chunks."""
    quit_after = quit_after or {}

    async def one(client: httpx.AsyncClient, i: int, body: dict) -> str | None:
        text, chunks = "", 0
        async with client.stream("POST", C, json={**body, "stream": True}) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                chunks += bool(choice["text"])
                if i in quit_after and chunks >= quit_after[i]:
                    return None  # leaving the block closes the connection mid-stream
        return text

    async def main() -> list[str | None]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i, b) for i, b in enumerate(bodies))), 180)

    return asyncio.run(main())


def test_twenty_concurrent_streams_with_different_methods_are_decoded_together(tiny, server):
    prompts = [f"w{i + 3} w{(7 * i) % 90 + 3} w{(i * i) % 50 + 3} w{i + 3}" for i in range(20)]
    methods = [METHODS[i % len(METHODS)] for i in range(20)]
    expected = [reference(tiny, p, 12, m).text for p, m in zip(prompts, methods)]
    assert len(set(expected)) > 10
    before = server.worker.batch.counters.forwards, server.worker.batch.counters.sequence_steps
    log = StepLog(server.worker)
    try:
        bodies = [{"prompt": p, "max_tokens": 12, "temperature": 0, "paradec": {"method": m}}
                  for p, m in zip(prompts, methods)]
        assert stream_all(server.url, bodies) == expected
    finally:
        log.close()
    forwards = server.worker.batch.counters.forwards - before[0]
    sequence_steps = server.worker.batch.counters.sequence_steps - before[1]
    assert max(len(s) for s in log.steps) == 8  # the batch filled up to max_batch, never beyond
    assert sequence_steps > 3 * forwards  # most forwards served several sequences
    assert wait_until(lambda: server.worker.running == 0 and server.worker.queued == 0)


def test_clients_that_leave_mid_stream_leave_the_batch_without_disturbing_the_others(tiny, server):
    prompts = [f"w{i + 10} w{i + 20} w{i + 30}" for i in range(8)]
    methods = [METHODS[i % len(METHODS)] for i in range(8)]
    expected = [reference(tiny, p, 60, m).text for p, m in zip(prompts, methods)]
    stopped, completed = server.worker.stopped, server.worker.completed
    bodies = [{"prompt": p, "max_tokens": 60, "temperature": 0, "paradec": {"method": m}}
              for p, m in zip(prompts, methods)]
    got = stream_all(server.url, bodies, quit_after={1: 2, 4: 1, 6: 5})
    for i, (text, want) in enumerate(zip(got, expected)):
        assert text == (None if i in (1, 4, 6) else want), i
    assert wait_until(lambda: server.worker.running == 0 and server.worker.queued == 0, timeout=30)
    assert (server.worker.stopped - stopped, server.worker.completed - completed) == (3, 5)


def test_n_choices_are_the_seeded_single_samples(tiny, server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    refs = [reference(tiny, "w1 w2 w3", 10, temperature=1.0, seed=7 + i) for i in range(3)]
    r = client.completions.create(model="tiny-llama", prompt="w1 w2 w3", max_tokens=10, temperature=1.0, seed=7, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == [ref.text for ref in refs]
    assert r.usage.completion_tokens == sum(len(ref.token_ids) for ref in refs)
    extra = r.model_extra["paradec"]
    assert [c["new_tokens"] for c in extra["choices"]] == [len(ref.token_ids) for ref in refs]

    chunks = list(client.completions.create(model="tiny-llama", prompt="w1 w2 w3", max_tokens=10, temperature=1.0,
                                            seed=7, n=3, stream=True))
    texts = ["", "", ""]
    for c in chunks:
        texts[c.choices[0].index] += c.choices[0].text
    assert texts == [ref.text for ref in refs]
    finals = sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason)
    assert finals == [0, 1, 2]

    messages = [{"role": "user", "content": "w5 w6"}]
    chat_refs = [reference(tiny, messages, 6, "ngram", temperature=0.8, seed=3 + i) for i in range(2)]
    chat = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=6, temperature=0.8,
                                          seed=3, n=2, extra_body={"paradec": {"method": "ngram"}})
    assert [c.message.content for c in chat.choices] == [ref.text for ref in chat_refs]


def test_the_batch_holds_at_most_max_batch_sequences_and_n_counts(tiny):
    with LiveServer(tiny, ServeConfig(method="plain", max_batch=3, cost_curve="off")) as srv:
        log = StepLog(srv.worker)
        bodies = [{"prompt": f"w{i + 4} w9", "max_tokens": 8, "temperature": 1.0, "seed": i, "n": 2}
                  for i in range(4)]

        def post(body, out, i):
            with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
                out[i] = http.post(C, json=body).json()

        out: list = [None] * 4
        threads = [threading.Thread(target=post, args=(b, out, i)) for i, b in enumerate(bodies)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        log.close()
        assert max(len(s) for s in log.steps) <= 3  # a request brings its 2 choices whole: 2 fit, 4 do not
        for i, body in enumerate(out):
            want = [reference(tiny, f"w{i + 4} w9", 8, temperature=1.0, seed=i + j).text for j in range(2)]
            assert [c["text"] for c in body["choices"]] == want


def test_shared_drafters_never_serve_two_requests_at_once(tiny):
    with LiveServer(tiny, ServeConfig(share_drafter_state=True)) as srv:
        log = StepLog(srv.worker)
        prompts = [f"w{i + 4} w9 w{i + 4} w9" for i in range(4)]
        bodies = [{"prompt": p, "max_tokens": 10, "temperature": 0, "paradec": {"method": "recycling"}}
                  for p in prompts]
        assert stream_all(srv.url, bodies) == [reference(tiny, p, 10, "recycling").text for p in prompts]
        log.close()
        for seqs in log.steps:
            drafters = [id(s.drafter) for s in seqs]
            assert len(drafters) == len(set(drafters))



def test_metrics_in_prometheus_format(tiny, server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        before = parse_metrics(http.get("/metrics").text)
        r = http.post(C, json={"prompt": "w1 w2", "max_tokens": 7, "temperature": 0})
        assert r.status_code == 200
        page = http.get("/metrics")
    assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = page.text.splitlines()
    for name in ("paradec_queue_length", "paradec_running_sequences", "paradec_tokens_per_second",
                 "paradec_tokens_per_forward", "paradec_generated_tokens_total"):
        assert f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge'}" in lines
    after = parse_metrics(page.text)
    assert after["paradec_generated_tokens_total"] - before["paradec_generated_tokens_total"] == 7
    assert after["paradec_forwards_total"] - before["paradec_forwards_total"] == 7  # prefill + 6 plain steps
    assert after["paradec_sequence_steps_total"] - before["paradec_sequence_steps_total"] == 6
    assert after['paradec_requests_total{outcome="completed"}'] == before['paradec_requests_total{outcome="completed"}'] + 1
    assert after["paradec_queue_length"] == 0 and after["paradec_running_sequences"] == 0
    assert after["paradec_tokens_per_second"] > 0 and after["paradec_tokens_per_forward"] >= 1
    assert after["paradec_drafting"] in (0, 1)


def test_metrics_need_the_api_key_when_one_is_set(tiny):
    with LiveServer(tiny, ServeConfig(api_key="k", cost_curve="off")) as srv, httpx.Client(base_url=srv.url) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200


def test_a_tiny_temperature_neither_fails_nor_stops_the_worker(tiny, server):
    """Review II item 1: ``"temperature": 1e-320`` made softmax NaN inside the batch's first-token draw,
    outside its per-sequence guards: the worker thread died, /health said "stopped" and every later
    request hung. Such a temperature samples its limit (the argmax), and the server goes on."""
    with httpx.Client(base_url=server.url, timeout=20) as http:
        r = http.post(C, json={"prompt": "w3 w4", "max_tokens": 8, "temperature": 1e-320, "seed": 1})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == reference(tiny, "w3 w4", 8).text
        r = http.post(C, json={"prompt": "w5 w6", "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference(tiny, "w5 w6", 8).text
        assert http.get("/health").json()["status"] == "ok"


def test_the_worker_outlives_a_step_that_raises(tiny):
    """Review II item 1: whatever a step raises, the requests in it end with a 500 and the worker goes on."""
    with LiveServer(tiny, ServeConfig(method="plain")) as srv, httpx.Client(base_url=srv.url, timeout=20) as http:
        step, calls = srv.worker.batch.step, []

        def fails_once():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a step fell over")
            return step()

        srv.worker.batch.step = fails_once
        r = http.post(C, json={"prompt": "w3 w4", "max_tokens": 8, "temperature": 0})
        assert r.status_code == 500 and "fell over" not in r.text
        assert http.get("/health").json()["status"] == "ok"
        r = http.post(C, json={"prompt": "w3 w4", "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference(tiny, "w3 w4", 8).text
        assert wait_until(lambda: srv.worker.running == 0 and srv.worker.queued == 0)


def test_seeded_sampling_under_load_is_the_sampling_alone(tiny, monkeypatch):
    """Review II item 3: six sampled requests (the default method, seeds 1000-1005) sent one at a time,
    then all at once to a server whose draft switch finds drafting too dear at any batch size: each
    answer is the same both times (the switch used to hold them all to plain steps under load)."""
    from concurrent.futures import ThreadPoolExecutor

    from paradec.costs import CostCurve

    monkeypatch.setattr("paradec.serve.engine.cost_curve", lambda model: CostCurve.of({1: 1.0, 2: 2.0}))
    bodies = [{"prompt": f"w{i + 4} w9 w{i + 4} w9 w{i + 4}", "max_tokens": 16, "temperature": 0.8, "seed": 1000 + i}
              for i in range(6)]
    with LiveServer(tiny, ServeConfig()) as srv:
        assert srv.worker.batch.switch is not None

        def ask(body: dict) -> str:
            with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
                r = http.post(C, json=body)
                assert r.status_code == 200, r.text
                return r.json()["choices"][0]["text"]

        alone = [ask(b) for b in bodies]
        log = StepLog(srv.worker)
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(ask, bodies))
        log.close()
    assert max(len(s) for s in log.steps) > 1  # they did share forwards
    assert together == alone
