"""Lookahead decoding: n-gram pool, trie, window layout, harvest on a scripted model, exactness."""

from __future__ import annotations

import random

import pytest

import paradec
from paradec.drafters.base import StepContext, make_drafter
from paradec.drafters.lookahead import LookaheadConfig, LookaheadDrafter, lookahead_layout
from paradec.drafters.trie import TokenTrie
from paradec.errors import ParadecError
from paradec.sampling import SamplingParams
from paradec.tree import AuxRows, Block, Draft, block_mask, block_positions

from conftest import assert_lossless, tiny_model
from test_jacobi import autoregressive, by_position, markov, scripted_run, whole_prefix  # noqa: F401


# --- the pool (one n-gram store) and the trie ----------------------------------------------------

def test_context_pool_keeps_the_newest_continuations_of_each_token():
    """The context's n-grams go into the pool keyed by their first token, G per key, newest first;
    the draft is their trie."""
    drafter = LookaheadDrafter(None, LookaheadConfig(window=2, ngram=3, guesses=2, min_accept=0))
    drafter.begin([5, 6, 7, 5, 6, 8, 5], None)
    draft = drafter.propose(StepContext([5, 6, 7, 5, 6, 8, 5], 7, 100, SamplingParams(), None))
    assert drafter.pool.get((5,)) == [(6, 8), (6, 7)] and drafter.pool.get((6,)) == [(8, 5), (7, 5)]
    assert draft.tokens == [6, 8, 7] and draft.parents == [-1, 0, 0]  # the shared 6 is drafted once
    drafter.propose(StepContext([5, 6, 7, 5, 6, 8, 5, 1, 1], 7, 100, SamplingParams(), None))
    assert drafter.pool.get((5,)) == [(1, 1), (6, 8)]  # only the new n-grams were added


def test_trie_merges_shared_prefixes_in_order():
    trie = TokenTrie(max_nodes=100)
    for cont in [(6, 8, 1), (6, 7, 2), (9, 9, 9), (6, 8, 3)]:
        trie.add(cont)
    assert trie.tokens == [6, 8, 1, 7, 2, 9, 9, 9, 3]
    assert trie.parents == [-1, 0, 1, 0, 3, -1, 5, 6, 1]
    assert TokenTrie(max_nodes=4).draft() == Draft()


# --- the lookahead branch's layout ------------------------------------------------------------------

def test_layout_w4_n3_matches_the_hand_drawn_window():
    cells, offsets, mask, top = lookahead_layout(4, 3)
    assert cells == ((0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3))
    assert offsets == (1, 2, 3, 1, 2, 3, 4)
    # columns of [root, a1, a2, a3, b0, b1, b2, b3]
    expected = [
        [1, 1, 0, 0, 0, 0, 0, 0],  # a1: root a1
        [1, 1, 1, 0, 0, 0, 0, 0],  # a2: root a1 a2
        [1, 1, 1, 1, 0, 0, 0, 0],  # a3
        [1, 0, 0, 0, 1, 0, 0, 0],  # b0: root b0
        [1, 1, 0, 0, 0, 1, 0, 0],  # b1: root a1 b1
        [1, 1, 1, 0, 0, 0, 1, 0],  # b2: root a1 a2 b2
        [1, 1, 1, 1, 0, 0, 0, 1],  # b3
    ]
    assert mask.int().tolist() == expected
    assert top == (3, 4, 5, 6)


@pytest.mark.parametrize("W,N", [(1, 2), (3, 2), (4, 3), (5, 4), (2, 5)])
def test_every_window_row_reads_one_contiguous_causal_sequence(W, N):
    """Each aux row sees exactly one token at each position 0..its own (root included)."""
    cells, offsets, mask, top = lookahead_layout(W, N)
    window = AuxRows(tokens=[0] * len(cells), offsets=list(offsets), mask=mask)
    block = Block(0, Draft(tokens=[7, 8], parents=[-1, 0]), window)
    full, pos = block_mask(block), block_positions(block)
    assert len(cells) == W * (N - 1) - 1
    for r in range(3, len(block)):
        seen = [pos[c] for c in range(len(block)) if full[r, c]]
        assert seen == list(range(pos[r] + 1)), (r, seen)
        assert not full[r, 1:3].any()  # the window never sees the verified tree
    assert all(offsets[t] == N - 2 + i for i, t in enumerate(top) if t >= 0)
    assert (top[0] == -1) == (N == 2)


@pytest.mark.parametrize("bad", [dict(window=0), dict(ngram=1), dict(ngram=17), dict(guesses=0), dict(pool_from_context=1),
                                 dict(min_accept=-1), dict(probe_every=1.5), dict(seed="x")])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LookaheadConfig(**bad)
    with pytest.raises(ParadecError):
        make_drafter("lookahead", None, **bad)


# --- behaviour on scripted models -------------------------------------------------------------------

@pytest.mark.parametrize("fn", [markov, by_position, whole_prefix])
@pytest.mark.parametrize("W,N,G", [(1, 2, 1), (4, 3, 2), (5, 4, 3)])
def test_scripted_output_equals_autoregressive(fn, W, N, G):
    prompt = [3, 17, 8]
    drafter = LookaheadDrafter(None, LookaheadConfig(window=W, ngram=N, guesses=G, pool_from_context=False))
    out, _, _ = scripted_run(drafter, fn, prompt, 50)
    assert out == autoregressive(fn, prompt, 50)


@pytest.mark.parametrize("W,N", [(5, 3), (4, 4)])
def test_window_harvests_true_ngrams_of_a_markov_model(W, N):
    """For a model whose next token depends on the previous one only, each column of the window
    becomes a chain of true predictions after N - 1 warm-up steps, so the harvested n-grams are
    true, and once the root's n-gram is pooled a step accepts all N - 1 drafted tokens. No context
    pooling: the window alone must find them. The prompt lies on one cycle of the model (8 9 16 15),
    so the window (initialised from the prompt) explores that cycle."""
    cycle = [8, 9, 16, 15]
    config = LookaheadConfig(window=W, ngram=N, guesses=2, pool_from_context=False, min_accept=0)
    drafter = LookaheadDrafter(None, config)
    _, blocks, accepted = scripted_run(drafter, markov, cycle, 60)
    assert accepted[-5:] == [N - 1] * 5
    for key in cycle:  # the newest n-gram of every key is true
        assert list(drafter.pool.get((key,))[0]) == autoregressive(markov, [key], N - 1)


def test_window_pauses_after_a_miss_then_probes():
    drafter = LookaheadDrafter(None, LookaheadConfig(window=3, ngram=3, guesses=2, min_accept=1, accept_decay=0,
                                                     probe_every=3, pool_from_context=False))
    _, blocks, accepted = scripted_run(drafter, whole_prefix, [9, 4, 11], 30)
    assert accepted[:8] == [0] * 8  # the premise: nothing is ever right
    assert [b.aux is not None for b in blocks[:8]] == [True, False, False, True, False, False, True, False]


def test_context_pool_drafts_a_repeated_phrase_without_the_window():
    """``pool_from_context`` pools the prompt's n-grams: a model that copies the prompt is drafted
    from the first step."""
    prompt = [5, 9, 2, 7, 4, 1, 3, 8]

    def copy_prompt(seq):  # continues by cycling through the prompt
        return prompt[(len(seq)) % len(prompt)]

    drafter = LookaheadDrafter(None, LookaheadConfig(window=2, ngram=4, guesses=1, pool_from_context=True))
    out, _, accepted = scripted_run(drafter, copy_prompt, prompt, 24)
    assert out == autoregressive(copy_prompt, prompt, 24)
    assert accepted[0] == 3


# --- exactness against plain greedy -----------------------------------------------------------------

@pytest.mark.parametrize("arch,seed", [("llama", 3), ("qwen2", 4)])
def test_greedy_matches_plain_on_tiny_models(arch, seed, single_thread):
    model = tiny_model(arch, seed=seed)
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, 96) for _ in range(rng.randrange(1, 12))] for _ in range(2)]
    for options in (dict(window=1, ngram=2, guesses=1, min_accept=1, accept_decay=0, probe_every=3), dict(),
                    dict(window=5, ngram=4, guesses=4, pool_from_context=False, min_accept=0)):
        assert_lossless(model, prompts, "lookahead", 48, **options)


@pytest.mark.parametrize("prompt", ["The capital of France is", "List the days of the week: Monday, Tuesday,"])
def test_greedy_matches_plain_on_smollm2(smollm2, prompt):
    plain = paradec.generate(smollm2, prompt, "plain", max_new_tokens=24)
    out = paradec.generate(smollm2, prompt, "lookahead", max_new_tokens=24)
    assert out.token_ids == plain.token_ids
    assert out.stats.forward_passes <= plain.stats.forward_passes


def test_window_dropped_whole_near_the_context_end_and_the_drafter_told(single_thread):
    """Near the end of the context window the loop drops the window's aux rows (never a part of
    them) and keeps the pooled draft; observe sees ``aux is None`` and leaves the window alone."""
    model = tiny_model("llama", seed=3, max_positions=48)
    prompt = [5, 9, 2, 7, 4, 1, 3, 8] * 3
    seen = []

    class Spy(LookaheadDrafter):
        def observe(self, block, logits, verdict):
            levels = [list(level) for level in self.levels]
            super().observe(block, logits, verdict)
            seen.append((self.window is not None, block.aux is not None and len(block.aux), levels == self.levels))

    drafter = Spy(model, LookaheadConfig(window=4, ngram=3, guesses=3, min_accept=0))
    out = paradec.generate(model, prompt, drafter, max_new_tokens=40)
    plain = paradec.generate(model, prompt, "plain", max_new_tokens=40)
    assert out.token_ids == plain.token_ids and out.stats.stop_reason == "context"
    assert (True, 7, False) in seen  # the whole window (W(N-1) - 1 = 7 rows) was sent and refined
    assert (True, False, True) in seen  # proposed but dropped: the window was left as it was
    assert {n for _, n, _ in seen} == {7, False}


# --- sampling keeps the distribution (pooled candidates are point masses) ---------------------------

from test_jacobi import PARAMS, RUNS, empirical_pair, exact_pair, small_model, tv, tv_threshold  # noqa: E402,F401


def test_sampling_keeps_the_distribution(small_model):  # noqa: F811
    p = exact_pair(small_model, PARAMS)
    drafter = LookaheadDrafter(small_model, LookaheadConfig(window=4, ngram=2, guesses=4, min_accept=0))
    e, accepted = empirical_pair(small_model, drafter, PARAMS)
    assert accepted > RUNS // 50  # pooled n-grams were really accepted (46 tokens in 1000 runs here)
    assert tv(e, p) < tv_threshold(p), f"pair TV {tv(e, p):.4f} vs threshold {tv_threshold(p):.4f}"
    assert tv(e.sum(0), p.sum(0)) < tv_threshold(p.sum(0))
