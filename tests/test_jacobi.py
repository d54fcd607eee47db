"""Jacobi decoding: convergence on scripted models, exactness vs plain greedy, sampling distribution."""

from __future__ import annotations

import math
import random

import pytest
import torch

import paradec
from paradec.drafters.base import StepContext, make_drafter
from paradec.drafters.jacobi import JacobiConfig, JacobiDrafter
from paradec.errors import ParadecError
from paradec.sampling import SamplingParams, target_probs
from paradec.tree import Block, Draft, block_mask
from paradec.verify import verify_greedy

from conftest import assert_lossless, tiny_model

V = 50  # vocabulary of the scripted models


# --- a scripted target: the "model" is a Python function of the visible sequence -------------------

def scripted_logits(context: list[int], block: Block, next_token) -> torch.Tensor:
    """Logits (block, V) of a fake model: each block row sees the committed context and the block rows
    its mask allows (in row order, which is position order for chains and lookahead columns)."""
    ids, mask = block.tokens, block_mask(block)
    rows = []
    for r in range(len(ids)):
        seen = context[:-1] + [ids[c] for c in range(len(ids)) if mask[r, c]]
        row = torch.full((V,), -1.0, dtype=torch.float64)
        row[next_token(seen)] = 1.0
        rows.append(row)
    return torch.stack(rows)


def scripted_run(drafter, next_token, prompt: list[int], n: int) -> tuple[list[int], list[Block], list[int]]:
    """Greedy decoding of n tokens through propose → fake forward → verify → observe, as decode.py.

    Returns (generated tokens, blocks, accepted length per step)."""
    params = SamplingParams()
    tokens = list(prompt) + [next_token(list(prompt))]  # the prefill's token
    drafter.begin(list(prompt), params)
    blocks, accepted = [], []
    while len(tokens) - len(prompt) < n:
        draft = drafter.propose(StepContext(tokens, len(prompt), 10**6, params, None))
        block = Block(tokens[-1], draft, drafter.aux_rows())
        logits = scripted_logits(tokens, block, next_token)
        verdict = verify_greedy(draft, logits)
        drafter.observe(block, logits, verdict)
        tokens += verdict.tokens
        blocks.append(block)
        accepted.append(len(verdict.accepted))
    return tokens[len(prompt) :][:n], blocks, accepted


def autoregressive(next_token, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(next_token(seq))
    return seq[len(prompt) :]


def markov(seq):  # the next token depends on the previous one only
    return (seq[-1] * 7 + 3) % V


def by_position(seq):  # the next token depends on its position only: Jacobi's best case
    return (len(seq) * 13) % V


def whole_prefix(seq):  # the next token depends on everything: Jacobi rarely converges
    return hash(tuple(seq)) % V


# --- pure parts -------------------------------------------------------------------------------------

def NO_GATE_K(k: int) -> JacobiConfig:
    """Window tests without the cost gate (a model of unknown dtype gets float32's gate)."""
    return JacobiConfig(window=k, min_accept=0)


@pytest.mark.parametrize("bad", [dict(window=0), dict(window=65), dict(window=2.5), dict(min_accept=-1),
                                 dict(probe_every=0), dict(accept_decay=1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        JacobiConfig(**bad)
    with pytest.raises(ParadecError):
        make_drafter("jacobi", None, **bad)


@pytest.mark.parametrize("fn", [markov, by_position, whole_prefix])
@pytest.mark.parametrize("window", [1, 3, 6])
def test_scripted_output_equals_autoregressive(fn, window):
    prompt = [3, 17, 8]
    out, _, _ = scripted_run(JacobiDrafter(None, JacobiConfig(window=window)), fn, prompt, 40)
    assert out == autoregressive(fn, prompt, 40)


def test_converges_in_one_iteration_when_tokens_depend_on_position_only():
    """Every guess is refined to its fixed point in one pass, so the next pass accepts the whole
    window; after a full acceptance the window restarts from padding (nothing lies beyond it)."""
    k = 5
    _, blocks, accepted = scripted_run(JacobiDrafter(None, NO_GATE_K(k)), by_position, [1, 2], 60)
    assert accepted[1::2] == [k] * len(accepted[1::2])  # refined windows: fully converged
    assert all(len(b.draft) == k for b in blocks)


def test_refined_window_is_the_rows_after_the_bonus():
    """Step 2's window = the step-1 predictions of the rows after the accepted prefix and bonus."""
    k = 4
    drafter = JacobiDrafter(None, NO_GATE_K(k))
    prompt = [5, 6]
    tokens = prompt + [markov(prompt)]
    params = SamplingParams()
    drafter.begin(prompt, params)
    d1 = drafter.propose(StepContext(tokens, 2, 100, params, None))
    assert d1.tokens == [tokens[-1]] * k  # no iterate yet: padding repeats the root
    logits = scripted_logits(tokens, Block(tokens[-1], d1), markov)
    verdict = verify_greedy(d1, logits)
    drafter.observe(Block(tokens[-1], d1), logits, verdict)
    m = len(verdict.accepted)
    d2 = drafter.propose(StepContext(tokens + verdict.tokens, 2, 100, params, None))
    refined = logits[m + 1 : k + 1].argmax(-1).tolist()
    assert d2.tokens[: len(refined)] == refined and len(d2) == k


def test_gate_takes_plain_steps_after_a_miss_then_probes():
    """The float32 default's shape: a step that accepts nothing is followed by probe_every - 1 plain steps."""
    drafter = JacobiDrafter(None, JacobiConfig(window=3, min_accept=1, accept_decay=0, probe_every=4))
    _, blocks, accepted = scripted_run(drafter, whole_prefix, [9, 4, 11], 30)
    sizes = [len(b.draft) for b in blocks]
    assert accepted[:10] == [0] * 10  # the premise: this model defeats Jacobi
    assert sizes[:10] == [3, 0, 0, 0, 3, 0, 0, 0, 3, 0]


# --- exactness against plain greedy -----------------------------------------------------------------

@pytest.mark.parametrize("arch,seed", [("llama", 3), ("qwen2", 4)])
def test_greedy_matches_plain_on_tiny_models(arch, seed, single_thread):
    model = tiny_model(arch, seed=seed)
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, 96) for _ in range(rng.randrange(1, 12))] for _ in range(2)]
    for options in (dict(window=1), dict(window=5), dict(window=3, min_accept=1, accept_decay=0, probe_every=3)):
        assert_lossless(model, prompts, "jacobi", 40, **options)


@pytest.mark.parametrize("prompt", ["The capital of France is", "def fibonacci(n):"])
def test_greedy_matches_plain_on_smollm2(smollm2, prompt):
    plain = paradec.generate(smollm2, prompt, "plain", max_new_tokens=24)
    out = paradec.generate(smollm2, prompt, "jacobi", max_new_tokens=24, method_options=dict(window=4))
    assert out.token_ids == plain.token_ids
    assert out.stats.forward_passes <= plain.stats.forward_passes


# --- sampling keeps the distribution ----------------------------------------------------------------

SV = 16  # vocabulary of the sampling model
PROMPT = [4, 9, 7]
RUNS = 1000
PARAMS = SamplingParams(temperature=0.8, top_k=6)
NO_GATE = JacobiConfig(window=3, min_accept=0)  # float64 would pause the window after a miss


@pytest.fixture(scope="module")
def small_model():
    m = tiny_model("llama", seed=5, vocab=SV, init_range=0.3)  # some confident and some flat rows
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny forwards: a second thread only adds sync overhead
    yield m
    torch.set_num_threads(threads)


class UniformQJacobi(JacobiDrafter):
    """Negative control: draws its guesses like SJD but tells verification they came from a uniform
    distribution, so acceptance uses the wrong ratio p/q and the output must be biased.
    (Declaring no q at all would *not* be a bug: a point-mass verification of a token drawn
    independently of the verifier's coins is exact, only less often accepted.)"""

    def propose(self, ctx):
        d = super().propose(ctx)
        uniform = torch.full((SV,), 1.0 / SV, dtype=torch.float64)
        return d if d.q is None else Draft.chain(d.tokens, q=[None if x is None else uniform for x in d.q])


def exact_pair(model, params) -> torch.Tensor:
    """p(t2, t3): the 2nd and 3rd generated tokens, the first two decided by verification, (SV, SV)."""
    with torch.inference_mode():
        hf = model.hf_model
        p1 = target_probs(hf(torch.tensor([PROMPT])).logits[0, -1], params)  # (SV,)
        firsts = torch.tensor([PROMPT + [a] for a in range(SV)])
        p2 = target_probs(hf(firsts).logits[:, -1], params)  # (SV, SV): t1 → t2
        pairs = torch.tensor([PROMPT + [a, b] for a in range(SV) for b in range(SV)])
        p3 = target_probs(hf(pairs).logits[:, -1], params).view(SV, SV, SV)  # t1, t2 → t3
    return (p1[:, None, None] * p2[:, :, None] * p3).sum(0)


def empirical_pair(model, drafter, params) -> tuple[torch.Tensor, int]:
    """Empirical p(t2, t3) over RUNS seeds, and the number of draft tokens accepted in all runs."""
    counts = torch.zeros(SV, SV, dtype=torch.float64)
    accepted = 0
    for seed in range(RUNS):
        # 6 tokens wanted: the first step may verify its whole window of 3 (drafts never go deeper
        # than the tokens still wanted); only t2, t3 are compared
        r = paradec.generate(model, PROMPT, drafter, max_new_tokens=6, temperature=params.temperature,
                             top_k=params.top_k, seed=seed)
        counts[r.token_ids[1], r.token_ids[2]] += 1
        accepted += r.stats.accepted_tokens
    return counts / RUNS, accepted


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * (a - b).abs().sum().item()


def tv_threshold(p: torch.Tensor) -> float:
    """Twice the expected TV distance between p and the empirical distribution of RUNS draws."""
    return 2 * 0.5 * sum(math.sqrt(2 * x * (1 - x) / (math.pi * RUNS)) for x in p.flatten().tolist())


def test_sampling_keeps_the_distribution(small_model):
    """Step 1 verifies padding guesses (point masses); step 2 verifies guesses drawn from step-1 rows
    with their q (SJD). Tokens 2-3 therefore go through both acceptance rules. Checked on the pair
    (t2, t3) and, more sharply, on the marginal of t3."""
    p = exact_pair(small_model, PARAMS)
    e, accepted = empirical_pair(small_model, JacobiDrafter(small_model, NO_GATE), PARAMS)
    assert accepted > RUNS // 10  # guesses were really accepted, not just rejected
    assert tv(e, p) < tv_threshold(p), f"pair TV {tv(e, p):.4f} vs threshold {tv_threshold(p):.4f}"
    assert tv(e.sum(0), p.sum(0)) < tv_threshold(p.sum(0))


def test_negative_control_detects_a_wrong_q(small_model):
    p = exact_pair(small_model, PARAMS)
    e, _ = empirical_pair(small_model, UniformQJacobi(small_model, NO_GATE), PARAMS)
    assert tv(e.sum(0), p.sum(0)) > tv_threshold(p.sum(0)), "the t3 marginal should expose the wrong q"
    assert tv(e, p) > tv_threshold(p)
