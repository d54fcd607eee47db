"""Merged trees (`merge`): the merge rule on hand-made drafts, lossless greedy output with every member,
and the sampling distribution with a sampled head draft merged with deterministic proposals."""

from __future__ import annotations

import pytest
import torch

import paradec
from paradec.costs import CostCurve, StepCost
from paradec.drafters import head_file
from paradec.drafters.base import Drafter, StepContext
from paradec.drafters.merge import MergeConfig, MergeDrafter, Proposal, merge
from paradec.sampling import SamplingParams
from paradec.tree import Block, Draft
from paradec.verify import Verdict

from conftest import RUNTIMES, assert_lossless, tiny_model
from test_trained_heads import random_head

pytestmark = pytest.mark.usefixtures("one_thread_module")

FREE = StepCost(CostCurve.of({64: 1.0}))


def test_merge_joins_prefixes_and_grows_best_first():
    a = Proposal(Draft.chain([1, 2, 3]), [0.8, 0.7, 0.6], 0)
    b = Proposal(Draft(tokens=[1, 4, 5], parents=[-1, 0, -1]), [0.5, 0.2, 0.3], 1)
    draft, sources = merge([a, b], FREE, 8)
    assert draft.tokens == [1, 2, 3, 5, 4] and draft.parents == [-1, 0, 1, -1, 0]
    assert sources[0] == [(0, 0), (1, 0)] and sources[4] == [(1, 1)]
    small, _ = merge([a, b], FREE, 3)
    assert small.tokens == [1, 2, 3]  # the budget goes to the most valuable nodes
    steep = StepCost(CostCurve.of({2: 1.3, 3: 1.6, 4: 1.9, 5: 2.2, 6: 2.5}))
    cut, _ = merge([a, b], steep, 8)
    assert cut.tokens == [1, 2, 3]  # each row costs 0.3: the branch of value .3 would lower tokens per cost


def test_a_sampled_draft_goes_first_and_whole():
    q = torch.full((8,), 1 / 8, dtype=torch.float64)
    sampled = Proposal(Draft(tokens=[3, 5], parents=[-1, -1], q=[q, q]), [0.1, 0.1], 0)
    proposal = Proposal(Draft.chain([5, 6]), [0.9, 0.9], 1)
    other = Proposal(Draft.chain([7]), [0.8], 2)
    draft, _ = merge([proposal, sampled, other], FREE, 8)
    # sampled siblings 3, 5 keep their draw order; 6 joins under the sampled 5; 7 after them, deterministic
    assert draft.tokens == [3, 5, 6, 7] and draft.parents == [-1, -1, 1, -1]
    assert draft.q[0] is q and draft.q[1] is q and draft.q[2] is None and draft.q[3] is None


@pytest.fixture(scope="module")
def eagle_file(tmp_path_factory):
    model = tiny_model("llama", seed=3)
    path = tmp_path_factory.mktemp("head") / "eagle.safetensors"
    head_file.save(path, random_head(model, "eagle", subset=64), model, {"note": "random, for tests"})
    return str(path)


PROMPTS = [[5, 9, 17, 33, 5, 9, 17, 40, 5, 9], [40, 41, 42, 43, 44, 40, 41, 42], [7, 8] * 8]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_greedy_equals_plain(runtime, eagle_file):
    model = tiny_model("llama", seed=3, runtime=runtime)
    options = dict(members=["suffix", "recycling", "ngram", "eagle"], costs={"64": 1.0},
                   options={"eagle": {"head": eagle_file, "cost_aware": False}})
    assert assert_lossless(model, PROMPTS, "merge", 40, **options) > 0
    assert assert_lossless(model, PROMPTS, "merge", 40, members=["suffix", "recycling"]) >= 0  # measured curve


def test_sampling_distribution_with_a_sampled_head_and_deterministic_members():
    from test_sampling_distribution import VOCAB, empirical_joint, exact_joint, tv_threshold
    from paradec.drafters import make_drafter
    from paradec.sampling import SamplingParams

    model = tiny_model("llama", seed=5, vocab=VOCAB, init_range=0.3)
    import pathlib
    import tempfile

    folder = pathlib.Path(tempfile.mkdtemp())
    head_file.save(folder / "e.safetensors", random_head(model, "eagle"), model, {"note": "random"})
    drafter = make_drafter("merge", model, members=["eagle", "suffix", "recycling"], costs={"64": 1.0},
                           options={"eagle": {"head": str(folder / "e.safetensors"), "cost_aware": False,
                                              "tree_nodes": 4, "branch": 2, "max_draft": 2},
                                    "suffix": {"min_match": 1, "min_prob": 0.0, "corpus_tokens": 4000}})
    mixed = []  # per drafted step: whether its tree mixed sampled nodes (q) with deterministic proposals
    propose = drafter.propose

    def counting(ctx):
        draft = propose(ctx)
        if len(draft):
            mixed.append(draft.q is not None and any(q is None for q in draft.q))
        return draft

    drafter.propose = counting
    params = SamplingParams(temperature=1.0)
    p = exact_joint(model, params)
    tv = 0.5 * (empirical_joint(model, drafter, params) - p).abs().sum().item()
    assert tv < tv_threshold(p), f"TV {tv:.4f} vs threshold {tv_threshold(p):.4f}"
    assert sum(mixed) > 200  # the merged trees did mix both kinds (340 of 2,500 runs when written)


class Chain(Drafter):
    """Always proposes the same chain, valued ``values`` (as a member's own estimates)."""

    name = "chain"

    def __init__(self, model, tokens, values):
        super().__init__(model, None)
        self.tokens, self.values = tokens, values

    def propose(self, ctx):
        return Draft.chain(self.tokens)


def test_a_member_that_stopped_paying_is_sent_again_later():
    """Its calibration fades toward 1 while it sends nothing; with a plain fade it would stay silent for
    good (nothing sent, nothing learnt), which kept `merge` at 1.00 tokens per forward for most of a
    benchmark whose drafter is kept across prompts."""
    model = tiny_model("llama", seed=3)
    costs = {2: 1.3, 3: 1.6, 4: 1.9}  # a row costs 0.3: a node must be worth more
    member = Chain(model, [5, 6], [0.9, 0.8])
    d = MergeDrafter(model, MergeConfig(costs=costs), members=[member])
    d.begin([1, 2, 3], SamplingParams())
    ctx = StepContext([1, 2, 3], 3, 16, SamplingParams(), None)
    assert d.propose(ctx).tokens == [5, 6]
    d.members[0].claimed, d.members[0].accepted = 20.0, 1.0  # its nodes were mostly rejected lately
    assert len(d.propose(ctx)) == 0  # 0.9 × 0.05 does not pay for a row
    logits = torch.zeros(1, model.vocab_size)
    for _ in range(60):  # steps where nothing was sent (the counts fade with a half-life of ~14)
        d.propose(ctx)
        d.observe(Block(3, Draft()), logits, Verdict([], [7]))
    assert d.members[0].calibration > 0.5 and d.propose(ctx).tokens == [5, 6]
