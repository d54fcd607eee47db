"""Every drafter option is bounded: a value past its bound is a ParadecError naming the option, before
any model work (issue 10 item 8: layerskip max_draft=1e6 held a server for 551 s, tree_nodes=1e6 for
134 s, recycling k=1e20 gave a 500)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from paradec.drafters import METHODS, StepContext, make_drafter
from paradec.drafters.base import MAX_NODES
from paradec.drafters.lookahead import LookaheadConfig
from paradec.errors import ParadecError
from paradec.sampling import SamplingParams

from conftest import tiny_model

HUGE = 10**30


def numeric_options():
    for method, cls in sorted(METHODS.items()):
        for f in dataclasses.fields(cls.Config):
            if f.type in ("int", "float", "int | None", "float | None"):
                yield method, f.name


def test_every_method_has_numeric_options_to_check():
    assert {m for m, _ in numeric_options()} == set(METHODS) - {"plain", "forced"}  # the two without options


@pytest.mark.parametrize("method,option", list(numeric_options()))
@pytest.mark.parametrize("value", [HUGE, float(HUGE), -HUGE])
def test_every_numeric_option_has_bounds(method, option, value):
    with pytest.raises(ParadecError, match=f"'{method}'.*{option} must be"):
        make_drafter(method, None, **{option: value})


# (method, option, its upper bound, other options that make the bound itself a valid config)
BOUNDS = [
    ("ngram", "max_n", 16, {}), ("ngram", "max_depth", 32, {}), ("ngram", "min_depth", 32, {}),
    ("ngram", "max_branches", 128, {}), ("ngram", "max_nodes", 128, {}), ("ngram", "min_accept", 32, {}),
    ("recycling", "k", 64, {}), ("recycling", "tree_size", 128, {}), ("recycling", "max_depth", 32, {}),
    ("recycling", "lookup_branches", 16, {}), ("recycling", "lookup_depth", 32, {}),
    ("recycling", "min_accept", 32, {}),
    ("draft", "max_draft", 32, {"draft": "m"}), ("draft", "tree_nodes", 128, {"draft": "m"}),
    ("draft", "branch", 16, {"draft": "m"}), ("draft", "min_confidence", 1, {"draft": "m"}),
    ("draft", "branch_below", 1, {"draft": "m"}),
    ("layerskip", "max_draft", 32, {}), ("layerskip", "tree_nodes", 128, {}), ("layerskip", "branch", 16, {}),
    ("layerskip", "layers", 256, {}),
    ("pearl", "max_draft", 32, {"draft": "m"}), ("pearl", "layers", 256, {"draft": "m"}),
    ("pearl", "min_confidence", 1, {"draft": "m"}),
    ("jacobi", "window", 64, {}),
    ("lookahead", "window", 64, {"guesses": 64, "ngram": 2}), ("lookahead", "guesses", 64, {"window": 64, "ngram": 2}),
    ("lookahead", "ngram", 16, {"window": 4, "guesses": 4}), ("lookahead", "seed", 2**63 - 1, {}),
]


@pytest.mark.parametrize("method,option,limit,others", BOUNDS)
def test_each_upper_bound(method, option, limit, others):
    with pytest.raises(ParadecError, match=rf"bad option for method '{method}': {option} must be .* {limit}\]"):
        make_drafter(method, None, **others, **{option: limit + 1})
    METHODS[method].Config(**others, **{option: limit})  # the bound itself is allowed


def test_the_reported_requests_are_refused():
    with pytest.raises(ParadecError, match=r"max_draft must be an integer in \[1, 32\], got 1000000"):
        make_drafter("layerskip", None, max_draft=1_000_000, min_confidence=0)
    with pytest.raises(ParadecError, match=r"tree_nodes must be an integer in \[0, 128\], got 1000000"):
        make_drafter("layerskip", None, tree_nodes=1_000_000)
    with pytest.raises(ParadecError, match=r"k must be an integer in \[1, 64\]"):
        make_drafter("recycling", None, k=2 * 10**20)
    with pytest.raises(ParadecError, match="k must be an integer"):
        make_drafter("recycling", None, k=2e20)


def test_lookahead_bounds_its_whole_block():
    """W, N and G are each bounded, and so is the block they make together: (W + G)(N - 1) rows."""
    LookaheadConfig(window=15, ngram=5, guesses=15)  # the paper's largest GPU setting: 120 rows
    with pytest.raises(ParadecError, match=r"\(window \+ guesses\) x \(ngram - 1\) must be at most 128"):
        make_drafter("lookahead", None, window=64, ngram=16, guesses=64)


def test_recycling_tree_never_exceeds_the_node_cap():
    """tree_size 128 plus 16 n-gram branches of 32 tokens could make 640 rows: the tree stops at 128."""
    drafter = make_drafter("recycling", tiny_model(), k=4, tree_size=128, max_depth=32, lookup_branches=16,
                           lookup_depth=32, min_accept=0)
    rng = random.Random(0)
    tokens = [rng.randrange(3, 9) for _ in range(300)]  # small alphabet: many matches, many continuations
    drafter.begin(tokens, SamplingParams())
    drafter.table.update(list(range(96)), torch.randn(96, 96))  # every token has 4 known successors
    draft = drafter.propose(StepContext(tokens, len(tokens), 10**6, SamplingParams(), None))
    assert len(draft) == MAX_NODES
