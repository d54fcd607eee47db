"""The server keeps clients apart and in bounds: no state learnt from one client's text reaches
another, per-request options only as the operator allows, no file opened for a request, cancel and
time limits checked between decoding steps, a /health that tells a wedged worker, and 4xx (not 500,
and never internals) for bad text, bad templates, foreign Host headers and oversized bodies.

Live servers on loopback with a tiny float64 model, as in test_serve.py.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from conftest import tiny_model
from serve_helpers import LiveServer, wait_until

import paradec
from paradec.errors import ParadecError
from paradec.serve.app import ServeConfig
from paradec.serve.guards import host_name

CONTEXT = 1024
TIMEOUT = 60.0
C, CHAT = "/v1/completions", "/v1/chat/completions"


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=3, max_positions=CONTEXT)


@pytest.fixture(scope="module")
def server(tiny):
    """The defaults: closed request options, isolated drafters, loopback host names only."""
    with LiveServer(tiny) as srv:
        yield srv


@pytest.fixture(scope="module")
def open_server(tiny):
    """Every method option open to requests, a draft model from the operator, a 5 s maximum time limit."""
    with LiveServer(tiny, ServeConfig(request_options=frozenset({"all"}), draft=tiny, max_timeout=5.0)) as srv:
        yield srv


def client(srv) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=TIMEOUT)


def reference(model, prompt, n) -> str:
    return paradec.generate(model, prompt, "plain", max_new_tokens=n).text


def error_of(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    assert param is None or err["param"] == param, err
    assert code is None or err["code"] == code, err
    return err


# ---------- item 7: no state from one client's text in another client's requests ----------

B = {"prompt": "w5 w6", "max_tokens": 12, "temperature": 0, "paradec": {"method": "recycling"}}
A = {**B, "prompt": "w40 w77 w9 w40 w77 w9 w5 w6 w7"}  # teaches a recycling table successors of w5, w6, ...
DRAFT_STATS = ("draft_nodes", "drafted", "accepted", "accepted_tokens", "forward_passes")


def draft_stats(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    stats = r.json()["paradec"]["stats"]
    return {k: stats[k] for k in DRAFT_STATS}


def test_a_request_drafts_the_same_whatever_other_clients_sent(server):
    """Token Recycling learns from every prompt and forward; by default that stays in the request."""
    with client(server) as http:
        alone = draft_stats(http.post(C, json=B))
        http.post(C, json=A).raise_for_status()
        after = draft_stats(http.post(C, json=B))
    assert after == alone


def test_shared_drafter_state_is_the_operators_choice(tiny):
    """With --share-drafter-state the table carries over (so the test above can tell the difference)."""
    with LiveServer(tiny, ServeConfig(share_drafter_state=True)) as srv, client(srv) as http:
        alone = draft_stats(http.post(C, json=B))
        http.post(C, json=A).raise_for_status()
        after = draft_stats(http.post(C, json=B))
        texts = {http.post(C, json=body).json()["choices"][0]["text"] for body in (B, B)}
    assert after != alone
    assert texts == {reference(tiny, "w5 w6", 12)}  # what it learnt changes drafts, never the text


def test_a_kept_drafter_is_lent_to_one_request_at_a_time(tiny):
    """Review II item 2: with --share-drafter-state, preparing a request began the kept drafter again
    while an earlier request still ran with it (EAGLE lost its features, two threads wrote one table).
    A kept drafter is lent: a request prepared while another holds it gets another drafter, and the
    kept one serves the next request once its own has ended (so what it learnt carries over)."""
    import asyncio

    from paradec.serve.engine import Engine
    from paradec.serve.schemas import CompletionRequest

    engine = Engine(tiny, ServeConfig(share_drafter_state=True))
    try:
        def prepare(prompt: str):
            req = CompletionRequest(prompt=prompt, max_tokens=6, temperature=0, paradec={"method": "recycling"})
            return engine.prepare(req, prompt, False, None)

        async def run(prepared) -> list[str]:
            return await engine.start(prepared).texts()

        first = prepare("w5 w6 w5 w6")
        second = prepare("w7 w8")  # the first is still to run: its drafter is not free
        assert first.seqs[0].drafter is not second.seqs[0].drafter
        assert asyncio.run(run(first)) == [reference(tiny, "w5 w6 w5 w6", 6)]
        third = prepare("w9 w10")  # the first has ended: its drafter, table and all, serves this one
        assert third.seqs[0].drafter is first.seqs[0].drafter
        assert asyncio.run(run(second)) == [reference(tiny, "w7 w8", 6)]
        assert asyncio.run(run(third)) == [reference(tiny, "w9 w10", 6)]
        assert wait_until(lambda: engine.shelf.lent() == 0)
    finally:
        engine.close()


# ---------- item 8: method options only as the operator allows, bounded; bodies limited ----------


def test_method_options_are_closed_by_default(server):
    with client(server) as http:
        for method, options in (("ngram", {"max_depth": 4}), ("recycling", {"k": 2_000_000}), ("plain", {"x": 1})):
            body = {"prompt": "w1", "max_tokens": 2, "paradec": {"method": method, "options": options}}
            err = error_of(http.post(C, json=body), 400, "paradec.options", "unsupported_parameter")
            assert f"{method}.{next(iter(options))}" in err["message"] and "--request-options" in err["message"]
        # choosing a method with its defaults stays open
        assert http.post(C, json={"prompt": "w1", "max_tokens": 2, "paradec": {"method": "ngram"}}).status_code == 200


def test_allowed_options_are_bounded_and_the_rest_refused_naming_the_allowed(tiny):
    config = ServeConfig(request_options=frozenset({"jacobi.window", "ngram.max_depth"}))
    with LiveServer(tiny, config) as srv, client(srv) as http:

        def ask(method, **options):
            return http.post(
                C,
                json={"prompt": "w5 w6 w5 w6", "max_tokens": 8, "temperature": 0,
                      "paradec": {"method": method, "options": options}},
            )

        ok = ask("jacobi", window=8)
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == reference(tiny, "w5 w6 w5 w6", 8)
        assert "window" in error_of(ask("jacobi", window=65), 400, "paradec.options")["message"]  # the config's bound
        err = error_of(ask("ngram", max_depth=3, max_n=99), 400, "paradec.options", "unsupported_parameter")
        assert "ngram.max_n" in err["message"] and "jacobi.window, ngram.max_depth" in err["message"]
        assert ask("ngram", max_depth=3).status_code == 200


def test_request_option_allowlist_is_checked_when_the_server_starts():
    assert ServeConfig(request_options=frozenset({"all"})).allows("recycling", "k")
    assert not ServeConfig(request_options=frozenset({"all"})).allows("draft", "draft")
    assert not ServeConfig().allows("ngram", "max_depth")
    for bad in ("telepathy.x", "ngram.nope", "ngram", "draft.draft"):
        with pytest.raises(ParadecError):
            ServeConfig(request_options=frozenset({bad}))


def test_an_oversized_body_is_refused_before_it_is_parsed(tiny, monkeypatch):
    with LiveServer(tiny, ServeConfig(max_body_bytes=4000)) as srv, client(srv) as http:
        seen = []
        real = srv.app.state.engine.encode
        monkeypatch.setattr(srv.app.state.engine, "encode", lambda *a: seen.append(a) or real(*a))
        big = {"prompt": "w1 " * 2000, "max_tokens": 1}  # ~6 kB
        error_of(http.post(C, json=big), 413, code="request_too_large")

        def chunked():  # no Content-Length: counted as it arrives
            data = json.dumps(big).encode()
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        error_of(http.post(C, content=chunked(), headers={"content-type": "application/json"}), 413)
        assert seen == []  # never tokenized
        small = http.post(C, json={"prompt": "w1 w2", "max_tokens": 3, "temperature": 0})
        assert small.status_code == 200 and small.json()["choices"][0]["text"] == reference(tiny, "w1 w2", 3)


def test_the_default_body_limit_refuses_megabytes(server):
    assert ServeConfig().max_body_bytes == 1 << 20
    with client(server) as http:
        error_of(http.post(C, json={"prompt": "w1 " * 700_000}), 413, code="request_too_large")  # ~2 MB


# ---------- item 9: a request never makes the server open a file ----------


def test_requests_cannot_name_a_draft_model_and_learn_nothing_from_trying(open_server, tmp_path, monkeypatch):
    import paradec.drafters.draft_model as draft_module

    opened = []
    monkeypatch.setattr(draft_module, "load", lambda *a, **k: opened.append(a))
    (tmp_path / "weights.gguf").write_bytes(b"not a gguf")
    paths = ["/nonexistent/model", str(tmp_path), str(tmp_path / "weights.gguf"), "smollm2-135m", "/etc/passwd"]
    messages = set()
    with client(open_server) as http:
        for method in ("draft", "ngram"):
            for path in paths:
                body = {"prompt": "w1", "max_tokens": 2, "paradec": {"method": method, "options": {"draft": path}}}
                err = error_of(http.post(C, json=body), 400, "paradec.options")
                assert path not in err["message"]
                messages.add(err["message"])
    assert len(messages) == 1 and opened == []


def test_requests_cannot_name_any_file_and_learn_nothing_from_trying(open_server, tmp_path, monkeypatch):
    """Review II item 4: with --request-options all, eagle.head and medusa.head were open: "does not exist"
    and "no manifest" told a client which files exist, and a present file was hashed whole. Every option
    that names a file (a head, a draft model, a diffusion LM's commit filter) gets one message, and the
    server opens nothing."""
    import paradec.drafters.draft_model as draft_module
    import paradec.drafters.head_file as head_file

    opened = []
    monkeypatch.setattr(head_file, "load", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(draft_module, "load", lambda *a, **k: opened.append(a))
    (tmp_path / "head.safetensors").write_bytes(b"not a head")
    (tmp_path / "head.json").write_text("{}")
    paths = ["/etc/passwd", "/nonexistent/head.safetensors", str(tmp_path / "head.safetensors"), str(tmp_path), ""]
    messages = set()
    with client(open_server) as http:
        for method, option in (("eagle", "head"), ("medusa", "head"), ("draft", "draft"), ("ngram", "head")):
            for path in paths:
                body = {"prompt": "w1", "max_tokens": 2, "paradec": {"method": method, "options": {option: path}}}
                err = error_of(http.post(C, json=body), 400, "paradec.options", "unsupported_parameter")
                assert path not in err["message"] or not path
                messages.add(err["message"])
    assert len(messages) == 1 and opened == []
    from paradec.serve.config import file_options

    assert {"draft", "head", "filter"} <= file_options()
    for entry in ("eagle.head", "medusa.head", "draft.draft"):
        with pytest.raises(ParadecError, match="never name a file"):
            ServeConfig(request_options=frozenset({entry}))


def test_the_draft_model_comes_from_the_operator(tiny, open_server):
    ref = reference(tiny, "w5 w6 w5 w6", 10)
    with client(open_server) as http:
        body = {"prompt": "w5 w6 w5 w6", "max_tokens": 10, "temperature": 0, "paradec": {"method": "draft"}}
        r = http.post(C, json=body)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == ref
        assert r.json()["paradec"]["stats"]["accepted_tokens"] > 0  # the same model drafts: all accepted
    with LiveServer(tiny) as srv, client(srv) as http:  # no --draft: the method is unavailable
        body = {"prompt": "w1", "max_tokens": 2, "paradec": {"method": "draft"}}
        assert "--draft" in error_of(http.post(C, json=body), 400, "paradec.method")["message"]
    with pytest.raises(ParadecError):
        ServeConfig(method="draft", method_options={"draft": "smollm2-135m"})


# ---------- item 10: cancel between steps, time limits, a /health that sees a wedged worker ----------


def test_a_client_gone_while_a_long_stop_string_holds_text_back_is_noticed(server, monkeypatch):
    """No text piece is emitted (it could still become the stop string), yet the generation stops."""
    import paradec.serve.engine as engine_module

    steps = []

    def counting_drafter(*args, **kwargs):  # counts the request's decoding steps, each made >= 2 ms long
        drafter = paradec.make_drafter(*args, **kwargs)
        propose = drafter.propose
        drafter.propose = lambda ctx: steps.append(1) or time.sleep(0.002) or propose(ctx)
        return drafter

    monkeypatch.setattr(engine_module, "make_drafter", counting_drafter)
    worker = server.worker
    body = {"messages": [{"role": "user", "content": "w1 w2 w3"}], "max_tokens": CONTEXT - 10,
            "temperature": 0, "stream": True, "stop": ["w1" * 3000]}
    with client(server) as quitter, quitter.stream("POST", CHAT, json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["choices"][0]["delta"]["role"] == "assistant"
                break  # only the role delta has come; leaving closes the connection
    assert wait_until(lambda: worker.running == 0 and worker.queued == 0, timeout=60)
    assert len(steps) < CONTEXT - 20  # stopped soon after the client left, not run to max_tokens for nobody


def test_interrupt_hook_ends_a_generation_between_steps(tiny):
    asked = []

    def interrupt():
        asked.append(1)
        return "cancelled" if len(asked) == 3 else None

    r = paradec.generate(tiny, "w1 w2", "ngram", max_new_tokens=50, interrupt=interrupt)
    full = paradec.generate(tiny, "w1 w2", "plain", max_new_tokens=50)
    assert r.stats.stop_reason == "cancelled" and len(asked) == 3
    assert 0 < len(r.token_ids) < 50 and r.token_ids == full.token_ids[: len(r.token_ids)]


def test_a_request_time_limit_ends_its_answer(tiny, open_server):
    ref = reference(tiny, "w1 w2 w3", CONTEXT - 10)
    with client(open_server) as http:
        body = {"prompt": "w1 w2 w3", "max_tokens": CONTEXT - 10, "temperature": 0}
        r = http.post(C, json={**body, "paradec": {"timeout": 0.05}})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["paradec"]["stats"]["stop_reason"] == "deadline" and got["choices"][0]["finish_reason"] == "length"
        assert got["usage"]["completion_tokens"] < CONTEXT - 10 and ref.startswith(got["choices"][0]["text"])
        error_of(http.post(C, json={**body, "paradec": {"timeout": 6}}), 400, "paradec.timeout")  # over the 5 s maximum
        error_of(http.post(C, json={**body, "paradec": {"timeout": 0}}), 400, "paradec.timeout")
    with LiveServer(tiny, ServeConfig(timeout=0.05)) as srv, client(srv) as http:  # the server's default
        assert http.post(C, json=body).json()["paradec"]["stats"]["stop_reason"] == "deadline"
    with pytest.raises(ValueError):
        ServeConfig(timeout=10, max_timeout=5)


def test_health_tells_a_wedged_worker_from_a_busy_one(tiny):
    with LiveServer(tiny, ServeConfig(stall_after=1.0)) as srv, client(srv) as http:
        release = threading.Event()

        def busy(job):  # reports a step every 10 ms, as a generation does between its steps
            while not release.wait(0.01):
                job.interrupt()
            return True

        try:
            srv.worker.submit(busy)
            assert wait_until(lambda: srv.worker.running == 1)
            time.sleep(1.5)  # busy for longer than stall_after, making progress all along
            health = http.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["running"] == 1
            assert health.json()["seconds_since_step"] < 1.0
        finally:
            release.set()
        assert wait_until(lambda: srv.worker.running == 0)
        release = threading.Event()
        try:
            srv.worker.submit(lambda job: release.wait(30))  # a job that never reports a step
            assert wait_until(lambda: http.get("/health").status_code == 503)
            health = http.get("/health").json()
            assert health["status"] == "stalled" and health["seconds_since_step"] > 1.0
        finally:
            release.set()
        assert wait_until(lambda: http.get("/health").status_code == 200)
        assert http.get("/health").json()["status"] == "ok"
        srv.app.state.engine.close()  # the worker thread ends
        assert wait_until(lambda: http.get("/health").json()["status"] == "stopped")
        assert http.get("/health").status_code == 503


# ---------- item 11: bad text and templates are 400s; 500s tell nothing; Host header ----------

SURROGATE = "\ud800"
# fmt: off
SURROGATES = [
    (C, {"prompt": f"w1 {SURROGATE}"}, "prompt"),
    (C, {"prompt": [f"w1{SURROGATE}"]}, "prompt"),
    (C, {"prompt": "w1", "model": SURROGATE}, "model"),
    (C, {"prompt": "w1", "stop": [SURROGATE]}, "stop"),
    (C, {"prompt": "w1", "paradec": {"method": "plain", "options": {SURROGATE: 1}}}, "paradec.options"),
    (C, {"prompt": "w1", "paradec": {"method": SURROGATE}}, "paradec.method"),
    (CHAT, {"messages": [{"role": "user", "content": SURROGATE}]}, "messages.0.content"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]}, "messages.0.content"),
]
# fmt: on


@pytest.mark.parametrize("path, body, param", SURROGATES, ids=[p for _, _, p in SURROGATES])
def test_lone_surrogates_are_a_400(server, path, body, param):
    with client(server) as http:
        r = http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        err = error_of(r, 400)
        assert err["param"].startswith(param) and "surrogate" in err["message"]
        assert http.get("/health").json()["status"] == "ok"


def test_a_chat_template_that_raises_is_a_400():
    model = tiny_model("llama", seed=3, max_positions=CONTEXT)
    model.tokenizer.chat_template = (
        "{% if messages|length > 1 %}{{ raise_exception('one message only, please') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    )
    with LiveServer(model) as srv, client(srv) as http:
        two = [{"role": "user", "content": "w1"}, {"role": "user", "content": "w2"}]
        err = error_of(http.post(CHAT, json={"messages": two, "max_tokens": 2}), 400, "messages")
        assert "one message only" in err["message"]
        assert http.post(CHAT, json={"messages": two[:1], "max_tokens": 2}).status_code == 200


def test_an_unexpected_error_answers_500_without_its_details(server, monkeypatch):
    def broken(*args):
        raise RuntimeError("cannot read /srv/secret/tokenizer.json")

    monkeypatch.setattr(server.app.state.engine, "encode", broken)
    with client(server) as http:
        err = error_of(http.post(C, json={"prompt": "w1", "max_tokens": 2}), 500)
    assert err["type"] == "server_error"
    assert "secret" not in err["message"] and "RuntimeError" not in err["message"]


def test_only_the_servers_own_host_names_are_answered(server):
    port = server.port
    with client(server) as http:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "localhost"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", "", "[::1"):
            error_of(http.get("/health", headers={"Host": host}), 400, code="invalid_host")
            r = http.post(C, json={"prompt": "w1", "max_tokens": 2}, headers={"Host": host})
            error_of(r, 400, code="invalid_host")


def test_allowed_hosts_are_configurable(tiny):
    with LiveServer(tiny, ServeConfig(allowed_hosts=("api.example",))) as srv, client(srv) as http:
        assert http.get("/health", headers={"Host": "api.example:8000"}).status_code == 200
        error_of(http.get("/health", headers={"Host": "localhost"}), 400, code="invalid_host")
    with LiveServer(tiny, ServeConfig(allowed_hosts=("*",))) as srv, client(srv) as http:
        assert http.get("/health", headers={"Host": "anything.example"}).status_code == 200


def test_host_name():
    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("[::1]:8000") == host_name("::1") == host_name("[::1]") == "::1"
    assert host_name("localhost.") == "localhost" and host_name("10.0.0.2:80") == "10.0.0.2"


# ---------- the command line builds these settings ----------


def test_command_line_settings(monkeypatch):
    from paradec.cli import build_parser
    from paradec.serve.cli import server_config

    monkeypatch.delenv("PARADEC_API_KEY", raising=False)
    default = server_config(build_parser().parse_args(["serve"]))
    assert default.request_options == frozenset() and not default.share_drafter_state
    assert set(default.allowed_hosts) == {"127.0.0.1", "localhost", "::1"}
    assert (default.timeout, default.max_timeout, default.max_body_bytes) == (None, None, 1 << 20)
    args = build_parser().parse_args(
        ["serve", "--request-options", "ngram.max_depth, recycling.k", "--share-drafter-state", "--host", "0.0.0.0",
         "--timeout", "30", "--max-timeout", "120", "--max-body-bytes", "5000", "--stall-after", "9"]
    )
    config = server_config(args)
    assert config.request_options == {"ngram.max_depth", "recycling.k"} and config.share_drafter_state
    assert "0.0.0.0" in config.allowed_hosts and (config.timeout, config.max_timeout) == (30, 120)
    assert (config.max_body_bytes, config.stall_after) == (5000, 9)
    hosts = server_config(build_parser().parse_args(["serve", "--allowed-hosts", "a.example,b.example"]))
    assert hosts.allowed_hosts == ("a.example", "b.example")
    for bad in (["--request-options", "draft.draft"], ["--timeout", "60", "--max-timeout", "30"], ["--method", "nope"]):
        with pytest.raises(ParadecError):
            server_config(build_parser().parse_args(["serve", *bad]))
