"""The `ngram` drafter: pure matching parts on hand-built contexts, then exactness vs plain greedy."""

from __future__ import annotations

import random

import pytest

import paradec
from paradec.drafters import make_drafter
from paradec.drafters.base import StepContext
from paradec.drafters.ngram import NgramConfig, NgramDrafter
from paradec.drafters.ngram_store import INDEX_CAPACITY, NgramIndex, NgramStore, continuation, lookup
from paradec.drafters.trie import TokenTrie
from paradec.errors import ParadecError
from paradec.sampling import SamplingParams
from paradec.tree import Block, Draft
from paradec.verify import Verdict

from conftest import assert_lossless, tiny_model


def indexed(tokens, min_n=1, max_n=3):
    index = NgramIndex(min_n, max_n)
    index.update(tokens)
    return index


def test_index_lists_continuation_starts_and_never_the_suffix_itself():
    index = indexed([7, 8, 9, 7, 8])
    assert index.starts((7, 8)) == [2]  # the suffix (7, 8) ending at 5 has no continuation yet
    assert index.starts((8,)) == [2]
    assert index.starts((9,)) == [3]
    assert index.starts((8, 9, 7)) == [4]
    assert index.starts((1,)) == []


def test_index_grows_incrementally_like_a_fresh_one():
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    grown = NgramIndex(1, 3)
    for end in range(1, len(tokens) + 1):
        grown.update(tokens[:end])
    fresh = indexed(tokens)
    assert grown.store._table == fresh.store._table and len(fresh.store._table) > 10


def test_overlapping_matches_all_found_and_continued_as_a_repetition():
    tokens = [1, 2, 1, 2, 1, 2]
    index = indexed(tokens, 2, 2)
    assert index.starts((1, 2)) == [4, 2]  # overlapping occurrences at 2..4 and 0..2, newest first
    assert continuation(tokens, 4, 5) == [1, 2, 1, 2, 1]  # runs past the end: period 2
    assert continuation(tokens, 2, 3) == [1, 2, 1]
    trie = lookup(index, tokens, depth=4, max_branches=3, trie=TokenTrie(16))
    # both occurrences continue identically, so they merge into one chain
    assert trie.tokens == [1, 2, 1, 2] and trie.parents == [-1, 0, 1, 2]


def test_no_match_gives_an_empty_draft():
    tokens = [10, 11, 12, 13, 14]
    trie = lookup(indexed(tokens, 1, 3), tokens, depth=4, max_branches=3, trie=TokenTrie(16))
    assert len(trie) == 0 and trie.draft() == Draft()


def test_different_continuations_become_branches_most_recent_first():
    tokens = [5, 6, 7, 9, 5, 6, 8, 9, 5, 6]
    trie = lookup(indexed(tokens, 2, 2), tokens, depth=3, max_branches=3, trie=TokenTrie(16))
    assert trie.tokens == [8, 9, 5, 7, 9, 5]
    assert trie.parents == [-1, 0, 1, -1, 3, 4]
    one = lookup(indexed(tokens, 2, 2), tokens, depth=3, max_branches=1, trie=TokenTrie(16))
    assert one.tokens == [8, 9, 5]


def test_longest_suffix_first_then_shorter_ones_add_branches():
    # suffix (4, 5, 6) occurred once (-> 7); the shorter (5, 6) also occurred before 1
    tokens = [5, 6, 1, 4, 5, 6, 7, 0, 4, 5, 6]
    trie = lookup(indexed(tokens, 1, 3), tokens, depth=2, max_branches=2, trie=TokenTrie(16))
    assert trie.tokens[:2] == [7, 0]  # the 3-gram's continuation comes first
    assert trie.tokens[2:] == [1, 4] and trie.parents == [-1, 0, -1, 2]


def test_index_keeps_the_newest_occurrences_of_each_ngram():
    """A gram that occurs thousands of times (repetitive text) keeps only its newest occurrences,
    so one lookup costs at most INDEX_CAPACITY continuations per suffix length."""
    tokens = [7] * 1000 + [8]
    index = indexed(tokens, 1, 2)
    assert index.starts((7, 7)) == list(range(1000, 1000 - INDEX_CAPACITY, -1))
    assert index.starts((8,)) == []  # the suffix has no continuation yet


def test_store_is_newest_first_deduplicated_and_bounded():
    pool = NgramStore(capacity=2)
    for gram in ([5, 6, 7], [6, 7, 5], [7, 5, 6], [5, 6, 8]):
        pool.add((gram[0],), tuple(gram[1:]))
    assert pool.get((5,)) == [(6, 8), (6, 7)]
    assert pool.get((6,)) == [(7, 5)] and pool.get((9,)) == []
    pool.add((5,), (6, 7))  # seen again: back to the front
    assert pool.get((5,)) == [(6, 7), (6, 8)]
    pool.add((5,), (1, 1))  # capacity 2: the least recently seen (6, 8) is forgotten
    assert pool.get((5,)) == [(1, 1), (6, 7)]
    assert pool.get((5,), limit=1) == [(1, 1)]


def test_trie_merges_prefixes_and_respects_the_node_budget():
    trie = TokenTrie(max_nodes=4)
    assert trie.add([1, 2, 3]) == 3
    assert trie.add([1, 2, 4]) == 1  # shares 1 2
    assert trie.add([5, 6]) == 0  # budget reached
    assert trie.tokens == [1, 2, 3, 4] and trie.parents == [-1, 0, 1, 1]


@pytest.mark.parametrize("bad", [dict(max_n=0), dict(min_n=3, max_n=2), dict(max_depth=1, min_depth=2),
                                 dict(max_nodes=-1), dict(adaptive="yes"), dict(max_branches=1.5),
                                 dict(min_accept=-1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        NgramConfig(**bad)
    with pytest.raises(ParadecError):
        make_drafter("ngram", None, **bad)


def test_adaptive_depth_follows_acceptance():
    drafter = NgramDrafter(None, NgramConfig(max_depth=8, min_depth=2, max_nodes=16))
    drafter.begin([1], SamplingParams())
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2]
    draft = drafter.propose(StepContext(tokens, 3, 100, SamplingParams(), None))
    assert draft.tokens == [3, 4, 5, 6, 7, 8, 9, 1]  # full max_depth at the start
    drafter.observe(Block(2, draft), None, Verdict(accepted=[0], tokens=[3, 0]))
    assert drafter.depth == 3  # one accepted: go just past it
    drafter.observe(Block(0, Draft.chain([3, 4, 5])), None, Verdict(accepted=[0, 1, 2], tokens=[3, 4, 5, 6]))
    assert drafter.depth == 5  # all accepted: look further


def test_cost_gate_skips_failing_matches_but_probes_again():
    drafter = NgramDrafter(None, NgramConfig(min_accept=0.5, max_depth=4, max_nodes=8, adaptive=False))
    drafter.begin([1], SamplingParams())
    ctx = StepContext([1, 2, 3, 1, 2], 2, 100, SamplingParams(), None)
    sizes = []
    for _ in range(12):
        draft = drafter.propose(ctx)
        sizes.append(len(draft))
        drafter.observe(Block(2, draft), None, Verdict(accepted=[], tokens=[9]))  # every draft rejected
    assert sizes[:4] == [4, 4, 4, 4]  # 1.0 -> 0.8 -> 0.64 -> 0.51 -> 0.41: then gated
    assert sizes[4:] == [0, 0, 0, 4, 0, 0, 0, 4]  # every 4th step still probes


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("options", [{}, {"max_branches": 1, "adaptive": False}, {"min_n": 1, "max_nodes": 5, "min_accept": 0.5}])
def test_greedy_matches_plain_on_tiny_models(arch, options):
    model = tiny_model(arch, seed=3)
    rng = random.Random(1)
    accepted = 0
    for _ in range(3):
        prompt = [rng.randrange(3, 20) for _ in range(rng.randrange(6, 40))]  # small alphabet: many repeats
        plain = paradec.generate(model, prompt, "plain", max_new_tokens=40)
        ours = paradec.generate(model, prompt, "ngram", max_new_tokens=40, method_options=options)
        assert ours.token_ids == plain.token_ids
        accepted += ours.stats.accepted_tokens
    assert accepted > 0


REAL_PROMPTS = [
    "Summarize this passage in two sentences.\n\nThe river town of Ashford grew around a stone bridge built in "
    "1642. For two centuries the bridge carried wool carts to the coast, and the town's mills spun that wool "
    "into cloth. When the railway arrived in 1871 the mills closed one by one, and the bridge became a quiet "
    "footpath. Today the old mill buildings hold a museum, a bakery and a school of music.",
    "Write a short poem about the sea.",
    "List the days of the week.",
]


def test_greedy_matches_plain_on_smollm2(smollm2):
    prompts = [[{"role": "user", "content": text}] for text in REAL_PROMPTS]
    assert assert_lossless(smollm2, prompts, "ngram", 32) > 0
