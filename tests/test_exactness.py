"""Invariant 1: with any draft, greedy output equals plain greedy output token for token."""

from __future__ import annotations

import random

import pytest
import torch

import paradec
from paradec.drafters.base import Drafter, StepContext
from paradec.tree import Draft

from conftest import RUNTIMES, tiny_model


class NoisyOracleDrafter(Drafter):
    """Proposes a random tree mixing the true continuation (when known) with random tokens.

    ``truth`` is the plain greedy output; node tokens follow it with probability ``p_right``,
    so drafts are accepted partly, fully or not at all, on first and on later branches.
    """

    name = "noisy-oracle"
    summary = "test drafter"

    def __init__(self, model, truth: list[int], prompt_len: int, seed: int, p_right: float = 0.6, tree: bool = True):
        super().__init__(model, None)
        self.truth, self.prompt_len, self.rng, self.p_right, self.tree = truth, prompt_len, random.Random(seed), p_right, tree
        self.vocab = model.vocab_size

    def guess(self, pos: int) -> int:
        if pos < len(self.truth) and self.rng.random() < self.p_right:
            return self.truth[pos]
        return self.rng.randrange(self.vocab)

    def propose(self, ctx: StepContext) -> Draft:
        done = len(ctx.tokens) - self.prompt_len  # generated so far; the next token is truth[done]
        tokens, parents, depth_of = [], [], []
        for _ in range(self.rng.randrange(0, 9)):
            if self.tree and tokens and self.rng.random() < 0.4:
                parent = self.rng.randrange(-1, len(tokens))
            else:
                parent = len(tokens) - 1
            depth = 1 if parent < 0 else depth_of[parent] + 1
            tokens.append(self.guess(done + depth - 1))
            parents.append(parent)
            depth_of.append(depth)
        return Draft(tokens=tokens, parents=parents)


def plain_greedy(model, prompt, n):
    return paradec.generate(model, prompt, "plain", max_new_tokens=n).token_ids


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("tree", [False, True])
def test_noisy_drafts_match_plain_greedy(arch, tree, runtime):
    model = tiny_model(arch, seed=3, runtime=runtime)
    rng = random.Random(0)
    accepted = 0
    for seed in range(6):
        prompt = [rng.randrange(3, 96) for _ in range(rng.randrange(1, 12))]
        truth = plain_greedy(model, prompt, 40)
        drafter = NoisyOracleDrafter(model, truth, len(prompt), seed, tree=tree)
        result = paradec.generate(model, prompt, drafter, max_new_tokens=40)
        assert result.token_ids == truth, f"seed {seed}: diverged"
        accepted += result.stats.accepted_tokens
    assert accepted > 0  # the drafts were right often enough to exercise acceptance


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_plain_matches_transformers_generate_on_tiny_model(runtime):
    tiny_llama = tiny_model("llama", runtime=runtime)
    prompt = [5, 9, 17, 33]
    ours = plain_greedy(tiny_llama, prompt, 25)
    ref = tiny_llama.hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=25, min_new_tokens=25)
    assert ours == ref[0, len(prompt):].tolist()
