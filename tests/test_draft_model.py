"""The `draft` method: exact greedy output, exact sampling distribution, a draft cache kept in step, clear errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import paradec
from paradec.drafters.base import make_drafter
from paradec.drafters.draft_model import DraftModelDrafter
from paradec.errors import ParadecError
from paradec.sampling import SamplingParams, target_probs

from conftest import perturbed, tiny_model

CONFIGS = {
    "chain-default": {},
    "chain-long": dict(min_confidence=0.0, adaptive=False, max_draft=6),
    "chain-adaptive": dict(min_confidence=0.0, adaptive=True, max_draft=8),
    "tree": dict(tree_nodes=10, branch=3, branch_below=1.0, min_confidence=0.0, max_draft=4),
    "tree-adaptive": dict(tree_nodes=12, branch=2, branch_below=0.9, min_confidence=0.01, max_draft=6, adaptive=True),
}


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one thread is fastest



def plain(model, prompt, n):
    return paradec.generate(model, prompt, "plain", max_new_tokens=n).token_ids


@pytest.fixture(scope="module")
def pair():
    target = tiny_model("llama", seed=3)
    return target, perturbed(target, 0.5, seed=1), tiny_model("qwen2", seed=4, layers=1)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_greedy_equals_plain(pair, config):
    target, near, far = pair
    accepted = 0
    for draft in (near, far):
        for seed, prompt in enumerate([[5, 9, 17, 33], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]):
            truth = plain(target, prompt, 24)
            result = paradec.generate(target, prompt, "draft", max_new_tokens=24, method_options=dict(draft=draft, **CONFIGS[config]))
            assert result.token_ids == truth, f"{config}, prompt {seed}: diverged from plain greedy"
            accepted += result.stats.accepted_tokens
    assert accepted > 0


def test_self_draft_accepts_every_token_so_the_draft_cache_stays_in_step(pair):
    """Draft == target: every drafted token must be accepted, which fails if the draft cache drifts."""
    target = pair[0]
    result = paradec.generate(target, [5, 9, 17], "draft", max_new_tokens=41,
                              method_options=dict(draft=target, max_draft=4, min_confidence=0.0, adaptive=False))
    steps = result.stats.forward_passes
    assert result.stats.accepted[:4] == [steps] * 4  # every step accepted its whole 4-token draft
    assert result.token_ids == plain(target, [5, 9, 17], 41)


def test_draft_cache_matches_a_fresh_read_of_the_committed_tokens(pair):
    """Invariant 3 for the drafter's own cache: after tree steps with partial acceptance, syncing to the
    committed tokens gives the same logits as a new cache reading them from scratch."""
    target, near, _ = pair
    drafter = make_drafter("draft", target, draft=near, tree_nodes=8, branch=2, branch_below=1.0, min_confidence=0.0, max_draft=4)
    runner = drafter.runner
    sync, checked = runner.sync, []

    def checked_sync(tokens):
        out = sync(tokens)
        fresh = drafter.make_runner().sync(tokens)
        assert torch.allclose(out, fresh, atol=1e-9), f"draft cache drifted after {len(tokens)} tokens"
        checked.append(len(runner.tokens))
        return out

    runner.sync = checked_sync
    result = paradec.generate(target, [3, 8, 13], drafter, max_new_tokens=30)
    assert len(checked) == result.stats.forward_passes and result.stats.accepted_tokens > 0


def test_vocabulary_mismatch_is_a_clear_error(pair):
    target = pair[0]
    other = dataclasses.replace(tiny_model("llama", seed=2, vocab=80), name="small-vocab-model")
    with pytest.raises(ParadecError) as err:
        make_drafter("draft", target, draft=other)
    message = str(err.value)
    assert "small-vocab-model" in message and "tiny-llama" in message and "different vocabularies" in message
    assert "80 tokens" in message and "96 tokens" in message


def test_missing_draft_and_bad_options_are_user_errors(pair):
    target = pair[0]
    with pytest.raises(ParadecError, match="--draft"):
        make_drafter("draft", target)
    for bad in (dict(max_draft=0), dict(min_confidence=1.5), dict(tree_nodes=-1), dict(branch=0), dict(adaptive="yes")):
        with pytest.raises(ParadecError, match=next(iter(bad))):
            make_drafter("draft", target, draft=target, **bad)


def test_draft_spec_string_loads_through_paradec_load(pair, monkeypatch):
    target = pair[0]
    seen = []
    monkeypatch.setattr("paradec.drafters.draft_model._load_cached", lambda *how: seen.append(how) or target)
    drafter = make_drafter("draft", target, draft="some-model-spec")
    # loaded like the target: its dtype, runtime and quantization
    assert isinstance(drafter, DraftModelDrafter) and seen == [("some-model-spec", torch.float64, "native", "none")]


def test_real_model_greedy_equals_plain(smollm2):
    """SmolLM2 drafting for itself in float32 (its only same-vocabulary draft), chain and tree."""
    prompt = "def add(a, b):\n"
    truth = paradec.generate(smollm2, prompt, "plain", max_new_tokens=10).token_ids
    for options in (dict(), dict(tree_nodes=8, branch_below=0.9)):
        result = paradec.generate(smollm2, prompt, "draft", max_new_tokens=10, method_options=dict(draft=smollm2, **options))
        assert result.token_ids == truth
        assert result.stats.mean_accepted_length > 2  # a perfect draft is accepted


# --- sampling: the output distribution is the target's, whatever the draft ---

VOCAB, PROMPT, RUNS = 5, [3, 4, 3], 300


def _sharp(seed: int, layers: int = 2):
    return tiny_model("llama", seed=seed, vocab=VOCAB, layers=layers, init_range=0.4)  # confident rows and flat rows


@pytest.fixture(scope="module")
def sampling_pair():
    return _sharp(5), dataclasses.replace(_sharp(11, layers=1), name="poor-draft")


def exact_joint_23(model, params):
    """p(t2, t3) of the 2nd and 3rd generated tokens (the first ones a draft decides), shape (V, V)."""
    hf = model.hf_model
    with torch.inference_mode():
        p1 = target_probs(hf(torch.tensor([PROMPT])).logits[0, -1], params)  # (V,)
        rows = torch.tensor([PROMPT + [a] for a in range(VOCAB)])
        p2 = target_probs(hf(rows).logits[:, -1], params)  # (V, V): [t1, t2]
        rows = torch.tensor([PROMPT + [a, b] for a in range(VOCAB) for b in range(VOCAB)])
        p3 = target_probs(hf(rows).logits[:, -1], params).view(VOCAB, VOCAB, VOCAB)  # [t1, t2, t3]
    return (p1[:, None, None] * p2[:, :, None] * p3).sum(0)


def chi2_pvalue(counts: torch.Tensor, p: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit; cells expected below 5 are pooled into one."""
    n = counts.sum()
    expected = (p * n).flatten()
    counts = counts.flatten()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = exp > 0
    stat = (((obs - exp) ** 2)[keep] / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


def empirical_joint_23(target, drafter, params) -> torch.Tensor:
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    for seed in range(RUNS):
        ids = paradec.generate(target, PROMPT, drafter, max_new_tokens=3, temperature=params.temperature,
                               top_k=params.top_k, top_p=params.top_p, seed=seed).token_ids
        counts[ids[1], ids[2]] += 1
    return counts


class LyingDrafter(DraftModelDrafter):
    """Negative control: claims its tokens were drawn from a uniform q, not from the draft's real q.

    (Forgetting q altogether would not do: a token with no q is verified as a deterministic guess,
    which is exact too.)
    """

    def propose(self, ctx):
        draft = super().propose(ctx)
        uniform = torch.full((VOCAB,), 1.0 / VOCAB, dtype=torch.float64)
        return dataclasses.replace(draft, q=[uniform] * len(draft))


SAMPLING_CASES = {
    "chain": (dict(max_draft=3, min_confidence=0.0, adaptive=False), SamplingParams(temperature=1.0)),
    "tree": (dict(tree_nodes=6, branch=3, branch_below=1.0, min_confidence=0.0, max_draft=2, adaptive=False),
             SamplingParams(temperature=1.0)),
    "tree-filtered": (dict(tree_nodes=5, branch=2, branch_below=0.8, min_confidence=0.05, max_draft=3),
                      SamplingParams(temperature=0.8, top_k=4, top_p=0.95)),
}


@pytest.mark.parametrize("case", list(SAMPLING_CASES))
def test_speculative_sampling_keeps_the_target_distribution(sampling_pair, case):
    target, poor = sampling_pair
    options, params = SAMPLING_CASES[case]
    drafter = make_drafter("draft", target, draft=poor, **options)
    p = exact_joint_23(target, params)
    counts = empirical_joint_23(target, drafter, params)
    pvalue = chi2_pvalue(counts, p)
    assert pvalue > 1e-3, f"{case}: chi-square p-value {pvalue:.2e}; the output does not follow the target"


def test_negative_control_is_detected(sampling_pair):
    """The same check must catch a drafter that hides its draft distribution (the test has power)."""
    target, poor = sampling_pair
    options, params = SAMPLING_CASES["tree"]
    drafter = LyingDrafter(target, DraftModelDrafter.Config(draft=poor, **options))
    pvalue = chi2_pvalue(empirical_joint_23(target, drafter, params), exact_joint_23(target, params))
    assert pvalue < 1e-3, f"a biased drafter passed the distribution check (p = {pvalue:.2e})"


def test_chi2_pvalue_helper_is_sane():
    p = torch.full((4,), 0.25, dtype=torch.float64)
    assert chi2_pvalue(torch.tensor([250.0, 250, 250, 250]), p) == pytest.approx(1.0)
    assert chi2_pvalue(torch.tensor([400.0, 200, 200, 200]), p) < 1e-10
    assert math.isclose(chi2_pvalue(torch.tensor([260.0, 240, 250, 250]), p), 0.84947, abs_tol=1e-4)  # scipy.stats.chi2.sf(0.8, 3)
