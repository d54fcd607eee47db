"""Invariant 2: speculative sampling draws from the same distribution as plain sampling.

On a tiny float64 model with a 16-token vocabulary we compute the exact joint distribution of the
first two generated tokens, p(t1) p(t2 | t1), and compare it with the empirical distribution of
many seeded generations. The threshold is twice the total-variation distance expected from sampling
noise alone; a negative control (a drafter that misstates its draft distribution) must exceed it.
"""

from __future__ import annotations

import math

import pytest
import torch

import paradec
from paradec.drafters import make_drafter
from paradec.drafters.auto import AutoConfig, AutoDrafter
from paradec.drafters.base import Drafter, StepContext
from paradec.sampling import SamplingParams, target_probs
from paradec.tree import Draft

from conftest import RUNTIMES, tiny_model

VOCAB = 16
PROMPT = [4, 9, 7]
RUNS = 2500
FLAT = {"16": 1.0}  # rows free: auto drafts whenever a draft might be accepted


class BadTreeDrafter(Drafter):
    """Two siblings drawn without replacement from a poor distribution q, each with one child from q.

    ``lie=True`` attaches a uniform q instead of the real one: verification is then fed a wrong
    draft distribution, which must bias the output (negative control).
    """

    name = "bad-tree"
    summary = "test drafter"

    def __init__(self, model, lie: bool = False, deterministic: bool = False):
        super().__init__(model, None)
        q = torch.arange(VOCAB, 0, -1, dtype=torch.float64) ** 3  # mass on low ids, unlike the model
        self.q = q / q.sum()
        self.lie, self.deterministic = lie, deterministic

    def propose(self, ctx: StepContext) -> Draft:
        if self.deterministic:
            return Draft(tokens=[3, 5, 4, 4], parents=[-1, 0, -1, 2])
        gen = ctx.generator
        first = torch.multinomial(self.q, 2, replacement=False, generator=gen).tolist()
        kids = torch.multinomial(self.q, 2, replacement=True, generator=gen).tolist()
        told = torch.full((VOCAB,), 1.0 / VOCAB, dtype=torch.float64) if self.lie else self.q
        return Draft(tokens=[first[0], kids[0], first[1], kids[1]], parents=[-1, 0, -1, 2], q=[told] * 4)


class EvenRootDrafter(Drafter):
    """A fixed deterministic tree after an even root, nothing after an odd one: ``auto`` then passes
    on to its next candidate, a choice made from the text so far, never from a draft's draws."""

    name = "even-root"

    def propose(self, ctx: StepContext) -> Draft:
        return Draft(tokens=[3, 5, 4, 4], parents=[-1, 0, -1, 2]) if ctx.tokens[-1] % 2 == 0 else Draft()


def auto_scripted(model) -> AutoDrafter:
    """``auto`` choosing between a deterministic drafter and one that samples its drafts (q)."""
    return AutoDrafter(model, AutoConfig(costs=FLAT), candidates=[EvenRootDrafter(model, None), BadTreeDrafter(model)])


def exact_joint(model, params: SamplingParams) -> torch.Tensor:
    """p(t1, t2) for the first two generated tokens, shape (VOCAB, VOCAB)."""
    hf = model.hf_model
    with torch.inference_mode():
        p1 = target_probs(hf(torch.tensor([PROMPT])).logits[0, -1], params)
        rows = torch.tensor([PROMPT + [t] for t in range(VOCAB)])
        p2 = target_probs(hf(rows).logits[:, -1], params)
    return p1[:, None] * p2


def empirical_joint(model, method, params: SamplingParams) -> torch.Tensor:
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    for seed in range(RUNS):
        # token 1 comes from the prefill, token 2 from the first step's depth-1 nodes: 3 tokens wanted,
        # so the loop leaves the draft's depth-1 level (never more than the tokens still wanted)
        ids = paradec.generate(model, PROMPT, method, max_new_tokens=3, temperature=params.temperature,
                               top_k=params.top_k, top_p=params.top_p, seed=seed).token_ids
        counts[ids[0], ids[1]] += 1
    return counts / RUNS


def tv_threshold(p: torch.Tensor) -> float:
    """Twice the expected TV distance of an empirical distribution from RUNS samples of p."""
    expected = 0.5 * sum(math.sqrt(2 * x * (1 - x) / (math.pi * RUNS)) for x in p.flatten().tolist())
    return 2 * expected


@pytest.fixture(scope="module", params=RUNTIMES)
def model(request):
    return tiny_model("llama", seed=5, vocab=VOCAB, init_range=0.3, runtime=request.param)  # confident and flat rows


@pytest.mark.parametrize(
    "method,params",
    [
        ("plain", SamplingParams(temperature=1.0)),
        ("bad-tree", SamplingParams(temperature=1.0)),
        ("bad-tree-deterministic", SamplingParams(temperature=0.7, top_k=10, top_p=0.9)),
        ("auto", SamplingParams(temperature=1.0)),
        ("auto-scripted", SamplingParams(temperature=1.0)),
        ("suffix", SamplingParams(temperature=1.0)),
    ],
)
def test_distribution_matches_model(model, method, params):
    drafter = {"plain": lambda: "plain", "bad-tree": lambda: BadTreeDrafter(model),
               "bad-tree-deterministic": lambda: BadTreeDrafter(model, deterministic=True),
               "auto": lambda: make_drafter("auto", model, costs=FLAT),  # one drafter: it learns over the runs
               "auto-scripted": lambda: auto_scripted(model),
               # one drafter over all the runs: its corpus (earlier samples) drafts deterministic proposals
               "suffix": lambda: make_drafter("suffix", model, min_match=1, min_prob=0.0, corpus_tokens=4000)}[method]()
    p = exact_joint(model, params)
    tv = 0.5 * (empirical_joint(model, drafter, params) - p).abs().sum().item()
    assert tv < tv_threshold(p), f"TV {tv:.4f} vs threshold {tv_threshold(p):.4f}"


def test_negative_control_detects_a_wrong_draft_distribution(model):
    params = SamplingParams(temperature=1.0)
    p = exact_joint(model, params)
    tv = 0.5 * (empirical_joint(model, BadTreeDrafter(model, lie=True), params) - p).abs().sum().item()
    assert tv > tv_threshold(p), f"TV {tv:.4f} should exceed {tv_threshold(p):.4f}"
