"""The server's decoding views: a request that asks gets the URL of its page; the page is the one
`paradec generate --html` writes, kept for the last --max-views requests, shown only with the
requesting API key, and (in headless Chromium) shows the step count and accepted tokens of the stats."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from conftest import tiny_model
from serve_helpers import LiveServer
from test_viz import assert_page_shows, headless

import paradec
from paradec.serve.app import ServeConfig
from paradec.serve.views import Views, owner_of
from paradec.stats import Stats

C, CHAT = "/v1/completions", "/v1/chat/completions"
TIMEOUT = 60.0
FLAT = {"16": 1.0}
VIEW = {"view": True, "options": {"costs": FLAT}}  # auto on a flat curve: drafts, so the page has trees
ASK = {"prompt": "w3 w4 w5 w3 w4 w5 w3 w4", "max_tokens": 24, "temperature": 0, "paradec": VIEW}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=3, max_positions=1024)


def page_data(html: str) -> dict:
    return json.loads(html.split('type="application/json">')[1].split("</script>")[0])


def test_a_request_gets_its_view(tiny, tmp_path):
    config = ServeConfig(request_options=frozenset({"auto.costs"}), cost_curve="off")  # auto drafts as it decides
    with LiveServer(tiny, config) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        plain = http.post(C, json={**ASK, "paradec": {"options": {"costs": FLAT}}}).json()
        assert "view" not in plain["paradec"]  # nothing recorded unless asked
        body = http.post(C, json=ASK).json()
        url, stats = body["paradec"]["view"], body["paradec"]["stats"]
        assert re.fullmatch(r"/v1/paradec/view/[0-9a-f]{32}", url) and stats["accepted_tokens"] > 0
        page = http.get(url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        data = page_data(page.text)
        assert "".join(t["text"] for t in data["tokens"]) == body["choices"][0]["text"]
        assert len(data["steps"]) == stats["forward_passes"] and data["stats"]["methods"] == stats["methods"]

        # streamed: the last chunk names the view
        with http.stream("POST", CHAT, json={"messages": [{"role": "user", "content": "w3 w4 w5 w3 w4"}],
                                             "max_tokens": 12, "temperature": 0, "stream": True,
                                             "paradec": VIEW}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        streamed = chunks[-1]["paradec"]["view"]
        assert http.get(streamed).status_code == 200

        # in a real browser: the served page shows what the stats say
        dom = headless(srv.url + url, tmp_path, "--dump-dom").stdout
        assert_page_shows(dom, Stats(**{k: v for k, v in stats.items() if k in Stats.__dataclass_fields__}))


def test_a_request_with_n_choices_gets_the_view_of_its_first(tiny):
    """Batched choices: the first choice's steps are recorded, the paradec field that reports its
    stats names the view (in a stream: choice 0's last chunk, not the others')."""
    config = ServeConfig(request_options=frozenset({"auto.costs"}), cost_curve="off")
    ask = {**ASK, "n": 2, "temperature": 1.0, "seed": 5}
    with LiveServer(tiny, config) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        body = http.post(C, json=ask).json()
        data = page_data(http.get(body["paradec"]["view"]).text)
        assert "".join(t["text"] for t in data["tokens"]) == body["choices"][0]["text"]
        assert len(data["steps"]) == body["paradec"]["choices"][0]["forward_passes"] == body["paradec"]["stats"]["forward_passes"]
        with http.stream("POST", C, json={**ask, "stream": True}) as r:
            ends = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {") and '"paradec"' in line]
        by_choice = {e["choices"][0]["index"]: e["paradec"] for e in ends}
        assert "view" in by_choice[0] and "view" not in by_choice[1]
        assert http.get(by_choice[0]["view"]).status_code == 200


def test_views_are_bounded_and_need_the_key(tiny):
    config = ServeConfig(api_key="s3cret", max_views=2, request_options=frozenset({"auto.costs"}), cost_curve="off")
    key = {"Authorization": "Bearer s3cret"}
    with LiveServer(tiny, config) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        urls = [http.post(C, json=ASK, headers=key).json()["paradec"]["view"] for _ in range(3)]
        assert http.get(urls[1], headers=key).status_code == 200
        assert http.get(urls[2]).status_code == 401  # no key
        assert http.get(urls[2], headers={"Authorization": "Bearer wrong"}).status_code == 401
        gone = http.get(urls[0], headers=key)  # the oldest of three, with room for two
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "view_not_found"
        assert http.get("/v1/paradec/view/" + "0" * 32, headers=key).status_code == 404


def test_views_only_for_their_owner(tiny):
    """A view remembers the key that asked for it: another key is told there is no such view."""
    views = Views(4)
    rec = views.record([3, 4], owner_of("Bearer a"))
    views.add(rec, paradec.generate(tiny, [3, 4], "plain", max_new_tokens=3, on_step=rec.trace.step))
    assert views.page(rec.id, owner_of("Bearer a"), tiny.tokenizer, "tiny") is not None
    assert views.page(rec.id, owner_of("Bearer b"), tiny.tokenizer, "tiny") is None
    assert views.page(rec.id, None, tiny.tokenizer, "tiny") is None


def test_view_refused_when_the_server_keeps_none(tiny):
    with LiveServer(tiny, ServeConfig(max_views=0)) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        r = http.post(C, json={"prompt": "w1", "max_tokens": 2, "paradec": {"view": True}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "paradec.view"
        r = http.post(C, json={"prompt": "w1", "max_tokens": 2, "paradec": {"view": "yes"}})
        assert r.status_code == 400


def test_views_answer_from_every_process_of_a_server(tiny, tmp_path):
    """Review II item 5: under `paradec serve --replicas 2` a view lived in one replica's memory, and its
    URL answered 404 about half the time. Replicas keep their views in one folder (``views_dir``,
    which --replicas sets): here two servers stand for two replicas behind one address."""
    config = ServeConfig(api_key="k", max_views=2, request_options=frozenset({"auto.costs"}), cost_curve="off",
                         views_dir=str(tmp_path))
    key = {"Authorization": "Bearer k"}
    with LiveServer(tiny, config) as a, LiveServer(tiny, config) as b, \
            httpx.Client(base_url=a.url, timeout=TIMEOUT) as at_a, httpx.Client(base_url=b.url, timeout=TIMEOUT) as at_b:
        body = at_a.post(C, json=ASK, headers=key).json()
        url = body["paradec"]["view"]
        page = at_b.get(url, headers=key)  # made by a, read from b
        assert page.status_code == 200, page.text
        assert "".join(t["text"] for t in page_data(page.text)["tokens"]) == body["choices"][0]["text"]
        assert at_b.get(url, headers={"Authorization": "Bearer other"}).status_code == 401
        later = [at_b.post(C, json=ASK, headers=key).json()["paradec"]["view"] for _ in range(2)]
        assert at_a.get(url, headers=key).status_code == 404  # the oldest of three, with room for two
        assert all(at_a.get(u, headers=key).status_code == 200 for u in later)
        for probe in ("../" + "0" * 30, "0" * 32, "x" * 32):
            assert at_b.get("/v1/paradec/view/" + probe, headers=key).status_code == 404
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".view", ".view"]  # nothing else left behind
