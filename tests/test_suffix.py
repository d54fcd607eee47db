"""`suffix`: the suffix automaton against brute force, the match it follows, drafts that are lossless,
a corpus that remembers earlier conversations within its budget."""

from __future__ import annotations

import random

import pytest

import paradec
from paradec.drafters.base import make_drafter
from paradec.drafters.suffix import SuffixCorpus
from paradec.drafters.suffix_automaton import Match, SuffixAutomaton

from conftest import RUNTIMES, assert_lossless, plain_greedy, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread_module")


def occurrences(docs, w):
    """End positions (doc, i) of w in the documents."""
    n = len(w)
    return [(d, i) for d, doc in enumerate(docs) for i in range(n - 1, len(doc)) if doc[i - n + 1 : i + 1] == w]


def walk(sam, w):
    s = 0
    for t in w:
        s = sam.next[s].get(t)
        if s is None:
            return None
    return s


@pytest.mark.parametrize("seed", range(4))
def test_automaton_states_counts_and_continuations_are_the_substrings(seed):
    rng = random.Random(seed)
    docs = [[rng.randrange(3) for _ in range(rng.randrange(1, 25))] for _ in range(3)]
    sam = SuffixAutomaton()
    for doc in docs:
        sam.add(doc)
    assert len(sam) <= 2 * sum(map(len, docs)) + 1
    for n in range(1, 6):
        for w in {tuple(doc[i : i + n]) for doc in docs for i in range(len(doc) - n + 1)} | {(0,) * n, (1, 2) * n}:
            w = list(w)
            ends = occurrences(docs, w)
            s = walk(sam, w)
            assert (s is not None) == bool(ends), w
            if s is not None:
                assert sam.count[s] == len(ends), w
                follow = {docs[d][i + 1] for d, i in ends if i + 1 < len(docs[d])}
                assert set(sam.next[s]) == follow, w


@pytest.mark.parametrize("seed", range(3))
def test_the_match_is_the_longest_earlier_suffix(seed):
    """Stepping before extending: the longest suffix of text[:t + 1] that occurs in the corpus or in text[:t]."""
    rng = random.Random(seed)
    corpus_doc = [rng.randrange(4) for _ in range(30)]
    corpus = SuffixAutomaton()
    corpus.add(corpus_doc)
    context = SuffixAutomaton()
    in_context, in_corpus = Match(context), Match(corpus)
    text = []
    for _ in range(60):
        token = rng.randrange(4)
        in_context.step(token)
        in_corpus.step(token)
        earlier = list(text)
        text.append(token)
        in_context.moved(context.extend(token))

        def longest(docs):
            return max((n for n in range(1, len(text) + 1) if occurrences(docs, text[-n:])), default=0)

        assert in_context.length == longest([earlier]) and in_corpus.length == longest([corpus_doc])
        assert walk(context, text[-in_context.length :]) == in_context.state or in_context.length == 0


def test_corpus_keeps_the_newest_conversations_within_its_budget():
    corpus = SuffixCorpus(max_tokens=100)
    before = corpus.snapshot()
    for i in range(30):
        corpus.add([i] * 3 + list(range(7)))
        assert corpus.tokens <= 100
    assert before.tokens == 0  # a snapshot is never changed afterwards
    sam = corpus.snapshot()
    assert walk(sam, [29, 29, 29, 0]) is not None and walk(sam, [0, 0, 0, 0]) is None  # the oldest went first


PROMPTS = [[5, 9, 17, 33, 5, 9, 17, 40, 5, 9], [40, 41, 42, 43, 44, 40, 41, 42], [7, 8] * 8, [11, 12, 13]]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_greedy_equals_plain(runtime):
    model = tiny_model("llama", seed=3, runtime=runtime)
    assert assert_lossless(model, PROMPTS, "suffix", 40) > 0
    assert assert_lossless(model, PROMPTS, "suffix", 40, min_match=1, alpha=8.0, min_prob=0.0, max_nodes=32) > 0


def test_the_corpus_remembers_earlier_conversations():
    """The model's earlier answer to a prompt drafts its answer to the same prompt next time (persist),
    and a document given at start drafts from the first generation on."""
    model = tiny_model("llama", seed=3)
    prompt = [11, 12, 13, 14]
    plain = plain_greedy(model, prompt, 30)
    keeps = make_drafter("suffix", model)
    first = paradec.generate(model, prompt, keeps, max_new_tokens=30)
    second = paradec.generate(model, prompt, keeps, max_new_tokens=30)
    assert first.token_ids == second.token_ids == plain.token_ids
    assert second.stats.forward_passes < first.stats.forward_passes and second.stats.forward_passes <= 8
    forgets = make_drafter("suffix", model, persist=False)
    runs = [paradec.generate(model, prompt, forgets, max_new_tokens=30) for _ in range(2)]
    assert runs[1].stats.forward_passes == runs[0].stats.forward_passes == first.stats.forward_passes
    text = model.tokenizer.decode(prompt + plain.token_ids)
    given = paradec.generate(model, prompt, "suffix", max_new_tokens=30, method_options={"documents": [text]})
    assert given.token_ids == plain.token_ids and given.stats.forward_passes <= 8


def test_options_are_checked():
    model = tiny_model("llama", seed=3)
    for options, message in [({"alpha": 0}, "alpha"), ({"documents": "text"}, "documents"), ({"min_match": 0}, "min_match"),
                             ({"corpus_tokens": 1 << 30}, "corpus_tokens")]:
        with pytest.raises(paradec.ParadecError, match=message):
            make_drafter("suffix", model, **options)


def test_the_server_keeps_one_corpus_per_api_key():
    """With an API key, a suffix drafter reads and grows that key's corpus: the same request a second
    time is drafted from the first answer; the corpus of one key is never another's."""
    import httpx
    from serve_helpers import LiveServer

    from paradec.serve.app import ServeConfig

    model = tiny_model("llama", seed=3)
    body = {"model": model.name, "prompt": "w11 w12 w13 w14", "max_tokens": 24, "temperature": 0}
    with LiveServer(model, ServeConfig(api_key="k", method="suffix", cost_curve="off")) as srv, \
            httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer k"}) as http:
        first, second = (http.post("/v1/completions", json=body).json() for _ in range(2))
        assert first["choices"][0]["text"] == second["choices"][0]["text"]
        forwards = [r["paradec"]["stats"]["forward_passes"] for r in (first, second)]
        assert forwards[1] < forwards[0]
        engine = srv.app.state.engine
        assert len(engine._corpora) == 1 and next(iter(engine._corpora.values())).tokens > 0
        assert engine.corpus("another key") is not engine.corpus(next(iter(engine._corpora)))
