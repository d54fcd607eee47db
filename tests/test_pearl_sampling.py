"""Invariant 2 for `pearl`: sampling follows the target distribution, through its drafting thread.

As ``test_sampling_distribution.py`` does, on a tiny float64 model with a 16-token vocabulary. On its
drafting thread pearl's first step is a pre-verify (the draft is still reading the prompt: the target
samples the 2nd token alone while the draft guesses it), so there the joint distribution of the 2nd and
3rd tokens is measured: the 3rd is verified against a block the draft drew with its q (when its guess was
right) or sampled alone again (when it was not); both paths, and the guess, are in it. Inline (one core)
the first step drafts, and the first two tokens' joint tests the q that travels with the tokens.
"""

from __future__ import annotations

import pytest
import torch

import paradec
from paradec.drafters import make_drafter
from paradec.sampling import SamplingParams, target_probs

from conftest import perturbed, tiny_model
from test_pearl import permuted_copy
from test_sampling_distribution import PROMPT, RUNS, VOCAB, tv_threshold

pytestmark = pytest.mark.usefixtures("one_thread_module")


def exact_second_third(model, params: SamplingParams) -> torch.Tensor:
    """p(t2, t3) = sum over t1 of p(t1) p(t2 | t1) p(t3 | t1, t2), shape (VOCAB, VOCAB)."""
    hf = model.hf_model
    with torch.inference_mode():
        p1 = target_probs(hf(torch.tensor([PROMPT])).logits[0, -1], params)  # (V,)
        p2 = target_probs(hf(torch.tensor([PROMPT + [a] for a in range(VOCAB)])).logits[:, -1], params)  # (V, V)
        rows = torch.tensor([PROMPT + [a, b] for a in range(VOCAB) for b in range(VOCAB)])
        p3 = target_probs(hf(rows).logits[:, -1], params).view(VOCAB, VOCAB, VOCAB)
    return (p1[:, None, None] * p2[:, :, None] * p3).sum(0)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=5, vocab=VOCAB, init_range=0.3)  # confident and flat rows


def sampled(model, drafter, positions: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """The empirical joint of two generated positions over RUNS seeded generations, and the draft
    tokens accepted in all of them."""
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    accepted = 0
    for seed in range(RUNS):
        r = paradec.generate(model, PROMPT, drafter, max_new_tokens=4, temperature=1.0, seed=seed)
        counts[r.token_ids[positions[0]], r.token_ids[positions[1]]] += 1
        accepted += r.stats.accepted_tokens
    return counts / RUNS, accepted


@pytest.mark.parametrize("kind", ["same-vocab", "other-tokenizer"])
def test_pearl_samples_the_target_distribution(model, kind):
    """On its drafting thread, with a draft close to the target (so that its guesses are often right)."""
    draft = perturbed(model, 0.1, seed=2) if kind == "same-vocab" else permuted_copy(model, 3)
    drafter = make_drafter("pearl", model, draft=draft, cost_aware=False, min_confidence=0.0, max_draft=3,
                           overlap=True)
    empirical, accepted = sampled(model, drafter, (1, 2))
    p = exact_second_third(model, SamplingParams(temperature=1.0))
    tv = 0.5 * (empirical - p).abs().sum().item()
    assert accepted > RUNS // 10, accepted  # drafted blocks were verified, not only pre-verify steps
    assert tv < tv_threshold(p), f"TV {tv:.4f} vs threshold {tv_threshold(p):.4f}"


def test_q_travels_with_the_tokens(model):
    """Inline, with a draft far from the target: the first step verifies a block the draft drew with its
    q (no pre-verify), so the first two tokens' joint depends on that q being the right one."""
    from test_sampling_distribution import exact_joint

    draft = perturbed(model, 1.5, seed=4)
    drafter = make_drafter("pearl", model, draft=draft, cost_aware=False, min_confidence=0.0, max_draft=3,
                           overlap=False)
    empirical, accepted = sampled(model, drafter, (0, 1))
    p = exact_joint(model, SamplingParams(temperature=1.0))
    tv = 0.5 * (empirical - p).abs().sum().item()
    assert accepted > RUNS // 10, accepted
    assert tv < tv_threshold(p), f"TV {tv:.4f} vs threshold {tv_threshold(p):.4f}"


def test_committed_tokens_let_go_of_their_q(model):
    """A drafted token's q (a float64 vector over the vocabulary) is needed only until it is verified:
    the chain kept every accepted token's, ~0.4 MB a token on a 49k vocabulary, for good."""
    draft = perturbed(model, 0.1, seed=2)
    drafter = make_drafter("pearl", model, draft=draft, cost_aware=False, min_confidence=0.0, max_draft=3,
                           overlap=True)
    r = paradec.generate(model, PROMPT, drafter, max_new_tokens=24, temperature=1.0, seed=3)
    chain = drafter.chain
    assert r.stats.accepted_tokens > 0 and chain.base > len(PROMPT)
    assert all(q is None for q in chain.qs[: chain.base])
