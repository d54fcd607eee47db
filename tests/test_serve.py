"""The OpenAI-compatible server, tested live on loopback: the official ``openai`` client for the happy
paths, raw HTTP for every bad input, concurrency, disconnects, the bounded queue and the API key.

Every server answer is compared with ``paradec.generate`` on the same tiny float64 model (greedy,
or sampling with a seed), so a mixed-up or truncated response fails.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading

import httpx
import openai
import pytest
from conftest import FIXED_COSTS, tiny_model
from serve_helpers import LiveServer, ServeCommand, wait_until

import paradec
from paradec.serve.app import ServeConfig
from paradec.serve.worker import QueueFull, Worker

CONTEXT = 1024  # the tiny model's context window: room for a long generation that a test interrupts
TIMEOUT = 60.0  # upper bound on any single HTTP exchange in this file


@pytest.fixture(scope="module", autouse=True)
def serve_command(request):
    """The real command starts with the module (if its test is selected), so that its slow start
    (importing torch, loading the model) overlaps the other tests."""
    if not any(item.name == "test_paradec_serve_command_with_the_default_model" for item in request.session.items):
        yield None
        return
    # tests never time the real model: auto gets a curve by hand, the batch no draft switch (whose curve
    # would be measured now and cached for later runs, load and all)
    command = ServeCommand("--log-level", "warning", "--method-options", json.dumps({"costs": FIXED_COSTS}),
                           "--cost-curve", "off")
    yield command
    command.stop()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=3, max_positions=CONTEXT)


@pytest.fixture(scope="module")
def server(tiny):
    # no draft switch: a request decodes with the server's default method (auto) exactly as alone,
    # seeded samples included (the switch's effect is tested in test_draft_switch / test_serve_batch)
    with LiveServer(tiny, ServeConfig(max_queue=32, cost_curve="off")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


def reference(model, prompt, n, **kw) -> paradec.Result:
    """A single in-process run, the ground truth for the server's answer."""
    return paradec.generate(model, prompt, "plain", max_new_tokens=n, **kw)


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


# ---------- the worker on its own ----------


def test_worker_runs_exclusive_jobs_one_at_a_time_in_order_and_bounds_admission():
    worker = Worker(max_queue=2, max_batch=1)  # admits max_batch + max_queue = 3
    release, order, overlap, active = threading.Event(), [], [], []

    def job(i):
        def run(cancelled):
            active.append(i)
            overlap.append(len(active))
            if i == 0:
                release.wait(10)
            order.append(i)
            active.remove(i)
            return True

        return run

    jobs = [worker.submit(job(i)) for i in range(3)]  # one running + two waiting fill it
    assert wait_until(lambda: worker.running == 1)
    with pytest.raises(QueueFull):
        worker.submit(job(3))
    jobs[2].cancel()  # cancelled while waiting: its function still runs (and may return at once)
    release.set()
    assert all(j.finished.wait(10) for j in jobs)
    assert order == [0, 1, 2] and max(overlap) == 1
    assert worker.completed == 3 and worker.running == 0 and worker.queued == 0
    worker.close()


# ---------- happy paths with the official client ----------


def test_health_and_models(server, client, http):
    health = {"status": "ok", "model": "tiny-llama", "running": 0, "queued": 0, "seconds_since_step": None}
    assert http.get("/health").json() == health
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-llama"]
    assert "plain" in models[0].model_extra["paradec"]["methods"]
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"


@pytest.mark.parametrize("prompt", ["w1 w2 w3", "w40 w7 w7 w19 w2", [5, 9, 11]])
def test_completion_matches_single_run(tiny, client, prompt):
    ref = reference(tiny, prompt, 12)
    r = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=12, temperature=0)
    assert r.choices[0].text == ref.text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(paradec.encode_prompt(tiny, prompt))
    assert r.usage.completion_tokens == len(ref.token_ids) == 12
    stats = r.model_extra["paradec"]["stats"]
    assert (
        r.model_extra["paradec"]["method"] == "auto" and stats["new_tokens"] == 12 and stats["stop_reason"] == "length"
    )
    assert sum(stats["methods"].values()) == stats["forward_passes"]


def test_chat_matches_single_run(tiny, client):
    messages = [{"role": "system", "content": "w3 w4"}, {"role": "user", "content": "w10 w11 w12"}]
    ref = reference(tiny, messages, 10)
    r = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=10, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == len(paradec.encode_prompt(tiny, messages))
    assert r.usage.completion_tokens == len(ref.token_ids)
    # max_completion_tokens (the newer name) works too, and text content parts are joined
    parts = [{"role": "user", "content": [{"type": "text", "text": "w10 w11"}, {"type": "text", "text": " w12"}]}]
    r2 = client.chat.completions.create(model="tiny-llama", messages=parts, max_completion_tokens=10, temperature=0)
    assert r2.choices[0].message.content == reference(tiny, [{"role": "user", "content": "w10 w11 w12"}], 10).text


def test_streaming_matches_single_run(tiny, client):
    ref = reference(tiny, "w8 w9", 9)
    chunks = list(
        client.completions.create(
            model="tiny-llama",
            prompt="w8 w9",
            max_tokens=9,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # really streamed, piece by piece
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert finals[0].model_extra["paradec"]["stats"]["new_tokens"] == 9
    assert chunks[-1].usage.completion_tokens == 9 and not chunks[-1].choices

    messages = [{"role": "user", "content": "w20 w21"}]
    chat_ref = reference(tiny, messages, 7)
    chat = list(
        client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=7, temperature=0, stream=True)
    )
    assert chat[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chat) == chat_ref.text
    assert chat[-1].choices[0].finish_reason == "length"


def test_stream_ends_with_done(http):
    with http.stream(
        "POST", "/v1/completions", json={"prompt": "w1", "max_tokens": 3, "temperature": 0, "stream": True}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_stop_seed_and_method_field(tiny, client):
    ref = reference(tiny, "w1 w2 w3", 12)
    words = ref.text.split()
    stop_word = next(w for w in words[2:] if w not in words[:2])
    r = client.completions.create(model="tiny-llama", prompt="w1 w2 w3", max_tokens=12, temperature=0, stop=[stop_word])
    assert r.choices[0].text == ref.text[: ref.text.index(stop_word)] and r.choices[0].finish_reason == "stop"

    # the server's default method is auto, whose choices (on the same cached curve) repeat with the seed
    sampled = paradec.generate(tiny, "w1 w2 w3", "auto", max_new_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    outs = [
        client.completions.create(
            model="tiny-llama", prompt="w1 w2 w3", max_tokens=10, temperature=1.0, top_p=0.9, seed=123
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert outs == [sampled.text, sampled.text]

    r = client.completions.create(
        model="tiny-llama",
        prompt="w1 w2 w3",
        max_tokens=12,
        temperature=0,
        extra_body={"paradec": {"method": "plain", "options": {}}},
    )
    assert r.choices[0].text == ref.text and r.model_extra["paradec"]["stats"]["method"] == "plain"


def test_every_registered_method_can_be_chosen_per_request(tiny, http):
    """Each method that runs with its default options answers with plain greedy's text (they are
    lossless), twice (each request with a fresh drafter)."""
    ref = reference(tiny, "w5 w6 w5 w6 w5", 16).text
    for method in sorted(paradec.METHODS):
        for _ in range(2):
            r = http.post(
                C, json={"prompt": "w5 w6 w5 w6 w5", "max_tokens": 16, "temperature": 0, "paradec": {"method": method}}
            )
            if r.status_code == 400 and r.json()["error"]["param"] == "paradec.method":
                break  # this method needs a draft model from the operator; test_serve_guards.py covers it
            if r.status_code == 400 and "no trained" in r.json()["error"]["message"]:
                assert method in ("eagle", "medusa")  # no head ships for the tiny model; tests/test_trained_heads.py
                break
            assert r.status_code == 200, (method, r.text)
            body = r.json()
            assert body["paradec"]["method"] == body["paradec"]["stats"]["method"] == method
            assert body["choices"][0]["text"] == ref, method


# ---------- every bad input: raw HTTP, OpenAI error shape, the right status ----------

LONG = "w1 " * (CONTEXT + 10)
C, CHAT = "/v1/completions", "/v1/chat/completions"
MSG = [{"role": "user", "content": "w1"}]
# fmt: off
BAD = [
    # (id, path, body: dict | raw str, status, param, code)
    ("malformed-json", C, '{"prompt": "w1", ', 400, None, None),
    ("malformed-json-chat", CHAT, "{messages: [}", 400, None, None),
    ("body-not-object", C, "[1, 2]", 400, None, None),
    ("empty-body", C, "", 400, None, None),
    ("unknown-model", C, {"model": "gpt-9", "prompt": "w1"}, 404, "model", "model_not_found"),
    ("unknown-model-chat", CHAT, {"model": "gpt-9", "messages": MSG}, 404, "model", "model_not_found"),
    ("unknown-method", C, {"prompt": "w1", "paradec": {"method": "telepathy"}}, 400, "paradec.method", "method_not_found"),
    ("unknown-method-option", C, {"prompt": "w1", "paradec": {"method": "plain", "options": {"k": 3}}}, 400, "paradec.options", None),
    ("paradec-field-not-object", C, {"prompt": "w1", "paradec": "plain"}, 400, "paradec", None),
    ("negative-max-tokens", C, {"prompt": "w1", "max_tokens": -5}, 400, "max_tokens", None),
    ("zero-max-tokens", CHAT, {"messages": MSG, "max_tokens": 0}, 400, "max_tokens", None),
    ("absurd-max-tokens", C, {"prompt": "w1", "max_tokens": 10**12}, 400, "max_tokens", "context_length_exceeded"),
    ("absurd-max-tokens-chat", CHAT, {"messages": MSG, "max_tokens": CONTEXT}, 400, "max_tokens", "context_length_exceeded"),
    ("prompt-too-long", C, {"prompt": LONG, "max_tokens": 1}, 400, "prompt", "context_length_exceeded"),
    ("messages-too-long", CHAT, {"messages": [{"role": "user", "content": LONG}]}, 400, "messages", "context_length_exceeded"),
    ("max-tokens-string", C, {"prompt": "w1", "max_tokens": "16"}, 400, "max_tokens", None),
    ("max-tokens-float", C, {"prompt": "w1", "max_tokens": 4.5}, 400, "max_tokens", None),
    ("temperature-string", C, {"prompt": "w1", "temperature": "hot"}, 400, "temperature", None),
    ("temperature-too-high", C, {"prompt": "w1", "temperature": 7}, 400, "temperature", None),
    ("top-p-zero", C, {"prompt": "w1", "top_p": 0}, 400, "top_p", None),
    ("seed-float", C, {"prompt": "w1", "seed": 1.5}, 400, "seed", None),
    ("stream-string", C, {"prompt": "w1", "stream": "yes"}, 400, "stream", None),
    ("stop-number", C, {"prompt": "w1", "stop": 5}, 400, "stop", None),
    ("prompt-number", C, {"prompt": 5}, 400, "prompt", None),
    ("prompt-missing", C, {"max_tokens": 3}, 400, "prompt", None),
    ("prompt-empty", C, {"prompt": ""}, 400, "prompt", None),
    ("token-id-out-of-range", C, {"prompt": [1, 10**6]}, 400, "prompt", None),
    ("several-prompts", C, {"prompt": ["w1", "w2"]}, 400, "prompt", None),
    ("messages-string", CHAT, {"messages": "hello"}, 400, "messages", None),
    ("messages-empty", CHAT, {"messages": []}, 400, "messages", None),
    ("bad-role", CHAT, {"messages": [{"role": "wizard", "content": "w1"}]}, 400, "messages.0.role", None),
    ("image-part", CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, None, None),
    ("n-0", C, {"prompt": "w1", "n": 0}, 400, "n", None),
    ("n-string", CHAT, {"messages": MSG, "n": "2"}, 400, "n", None),
    ("n-over-the-batch", C, {"prompt": "w1", "n": 9}, 400, "n", None),
    ("logprobs", C, {"prompt": "w1", "logprobs": 2}, 400, "logprobs", None),
    ("tools", CHAT, {"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", None),
    ("penalty", CHAT, {"messages": MSG, "frequency_penalty": 0.5}, 400, "frequency_penalty", None),
]
# fmt: on


@pytest.mark.parametrize("path, body, status, param, code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_openai_error(server, http, path, body, status, param, code):
    if isinstance(body, str):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert_error(r, status, param, code)


def test_unknown_route_and_wrong_verb(http):
    assert_error(http.get("/v1/nothing"), 404, code="not_found")
    assert_error(http.get(C), 405)
    assert_error(http.get("/v1/models/gpt-9"), 404, code="model_not_found")


def test_still_serving_after_bad_inputs(tiny, server, client, http):
    for body in ('{"prompt": ', "[]", json.dumps({"prompt": LONG})):
        assert http.post(C, content=body, headers={"content-type": "application/json"}).status_code == 400
    assert http.get("/health").json()["status"] == "ok"
    r = client.completions.create(model="tiny-llama", prompt="w1 w2", max_tokens=5, temperature=0)
    assert r.choices[0].text == reference(tiny, "w1 w2", 5).text


def test_failure_during_generation_is_reported_and_server_keeps_serving(tiny, server, http, monkeypatch):
    import paradec.serve.engine as engine_module

    def broken(*args, **kwargs):  # a drafter that fails at its second step, after the first piece
        drafter = paradec.make_drafter(*args, **kwargs)
        steps = []

        def propose(ctx):
            steps.append(1)
            if len(steps) == 2:
                raise RuntimeError("the model fell over")
            return paradec.Draft()

        drafter.propose = propose
        return drafter

    monkeypatch.setattr(engine_module, "make_drafter", broken)
    err = assert_error(http.post(C, json={"prompt": "w1", "max_tokens": 3}), 500)
    # the exception's class and message go to the server log, not to the client
    assert err["type"] == "server_error" and "fell over" not in err["message"] and "RuntimeError" not in err["message"]
    with http.stream("POST", C, json={"prompt": "w1", "max_tokens": 3, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    streamed = json.loads(lines[-2][6:])["error"]
    assert streamed["type"] == "server_error" and "fell over" not in streamed["message"] and lines[-1] == "data: [DONE]"
    monkeypatch.undo()
    r = http.post(C, json={"prompt": "w2", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference(tiny, "w2", 4).text


# ---------- concurrency, disconnects, the bounded queue ----------


def test_twenty_concurrent_streams_each_get_their_own_output(tiny, server):
    prompts = [f"w{i + 3} w{(7 * i) % 90 + 3} w{(i * i) % 50 + 3}" for i in range(20)]
    expected = [reference(tiny, p, 8).text for p in prompts]  # single runs, before the server is busy
    assert len(set(expected)) > 10  # the comparison can tell the answers apart
    done_before = server.worker.completed

    async def one(client: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await client.completions.create(
            model="tiny-llama", prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
        return "".join([c.choices[0].text async for c in stream if c.choices])

    async def all_of_them() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT
        ) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, p) for p in prompts)), 120)

    assert asyncio.run(all_of_them()) == expected
    assert server.worker.completed - done_before == 20


def test_disconnect_mid_stream_stops_generation_and_frees_model(tiny, server, http):
    stopped_before = server.worker.stopped
    body = {"prompt": "w1 w2 w3", "max_tokens": CONTEXT - 10, "temperature": 0, "stream": True}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as quitter, quitter.stream("POST", C, json=body) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got == 3:
                break  # leaving the block closes the connection before the stream is read
    assert wait_until(lambda: server.worker.running == 0 and server.worker.queued == 0, timeout=20)
    assert server.worker.stopped == stopped_before + 1  # stopped early, not run to the end
    r = http.post(C, json={"prompt": "w4 w5", "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference(tiny, "w4 w5", 6).text


def test_disconnect_while_queued_for_a_whole_response(server):
    """A non-streamed request whose client gives up while it waits in the queue never runs."""
    stopped_before, completed_before = server.worker.stopped, server.worker.completed
    release = threading.Event()
    try:
        server.worker.submit(lambda cancelled: release.wait(30))  # occupy the model
        body = {"prompt": "w1 w2 w3", "max_tokens": CONTEXT - 10, "temperature": 0}
        with (
            httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=1.0)) as impatient,
            pytest.raises(httpx.ReadTimeout),
        ):
            impatient.post(C, json=body)  # queued behind the blocker; the client hangs up after 1 s
        assert wait_until(lambda: server.worker.queued == 1)
    finally:
        release.set()
    assert wait_until(lambda: server.worker.running == 0 and server.worker.queued == 0, timeout=20)
    # the blocker completed; the abandoned request was skipped, not run for ~1000 tokens
    assert (server.worker.completed, server.worker.stopped) == (completed_before + 1, stopped_before + 1)


def test_full_queue_answers_429(tiny):
    with LiveServer(tiny, ServeConfig(max_queue=1, max_batch=1)) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        release = threading.Event()
        try:
            srv.worker.submit(lambda cancelled: release.wait(30))  # occupy the model
            assert wait_until(lambda: srv.worker.running == 1)
            answers: queue.Queue = queue.Queue()
            waiting = threading.Thread(
                target=lambda: answers.put(http.post(C, json={"prompt": "w6", "max_tokens": 4, "temperature": 0}))
            )
            waiting.start()
            assert wait_until(lambda: srv.worker.queued == 1)  # the only queue slot is taken
            full = http.post(C, json={"prompt": "w7", "max_tokens": 4})
            assert_error(full, 429, code="queue_full")
            assert full.headers["retry-after"] == "1"
            assert_error(http.post(CHAT, json={"messages": MSG, "stream": True}), 429, code="queue_full")
        finally:
            release.set()
        waiting.join(TIMEOUT)
        r = answers.get(timeout=1)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference(tiny, "w6", 4).text


def test_shutdown_ends_open_streams_and_refuses_new_requests(tiny):
    """What `paradec serve` does on Ctrl-C before uvicorn waits for connections: close the engine."""
    with LiveServer(tiny) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        body = {"prompt": "w1 w2 w3", "max_tokens": CONTEXT - 10, "temperature": 0, "stream": True}
        with http.stream("POST", C, json=body) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if len(lines) == 3:
                    srv.app.state.engine.close()
            lines = [line for line in lines if line]
        assert json.loads(lines[-2][6:])["error"]["code"] == "shutting_down" and lines[-1] == "data: [DONE]"
        assert srv.worker.stopped == 1 and srv.worker.completed == 0
        # a new connection: the server may close the stream's keep-alive connection as the client reuses it
        assert_error(httpx.post(srv.url + C, json={"prompt": "w1", "max_tokens": 2}, timeout=TIMEOUT), 503,
                     code="shutting_down")


# ---------- API key ----------


def test_api_key_required_on_all_but_health(tiny):
    with (
        LiveServer(tiny, ServeConfig(api_key="s3cret")) as srv,
        httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http,
    ):
        assert http.get("/health").status_code == 200
        assert_error(http.get("/v1/models"), 401, code="invalid_api_key")
        assert_error(http.post(C, json={"prompt": "w1", "max_tokens": 2}), 401, code="invalid_api_key")
        assert_error(http.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(http.get("/docs"), 401)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="s3cret", max_retries=0, timeout=TIMEOUT)
        r = good.completions.create(model="tiny-llama", prompt="w1 w2", max_tokens=4, temperature=0)
        assert r.choices[0].text == reference(tiny, "w1 w2", 4).text
        # method options in requests are closed by default
        refused = http.post(
            C,
            headers={"Authorization": "Bearer s3cret"},
            json={"prompt": "w1", "paradec": {"method": "plain", "options": {"x": 1}}},
        )
        assert_error(refused, 400, "paradec.options", "unsupported_parameter")


def test_cli_defaults_loopback_and_key_from_environment(monkeypatch):
    from paradec.cli import build_parser

    monkeypatch.delenv("PARADEC_API_KEY", raising=False)
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.api_key, args.method, args.request_options, args.share_drafter_state) == (
        "127.0.0.1",
        8000,
        None,
        "auto",
        "",
        False,
    )
    monkeypatch.setenv("PARADEC_API_KEY", "from-env")
    assert build_parser().parse_args(["serve"]).api_key == "from-env"
    assert build_parser().parse_args(["serve", "--api-key", "flag"]).api_key == "flag"


# ---------- the real command ----------


@pytest.mark.slow
def test_paradec_serve_command_with_the_default_model(serve_command):
    """`paradec serve --port 0` loads the embedded model, prints its address, answers /health and a completion."""
    # a fresh checkout converts the embedded GGUF file first (~20 s alone, minutes beside the rest of the
    # suite and Ray's replicas on two cores)
    url = serve_command.url(timeout=360)
    assert url and url.startswith("http://127.0.0.1:"), "".join(serve_command.stderr)
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        assert http.get("/health").json()["model"] == "smollm2-135m"
        r = http.post(
            C, json={"model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert 1 <= body["usage"]["completion_tokens"] <= 3 and body["choices"][0]["text"].strip()
        assert body["paradec"]["stats"]["new_tokens"] == body["usage"]["completion_tokens"]
        assert body["paradec"]["method"] == "auto"
