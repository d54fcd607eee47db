"""The commit rules against the papers' reference formulas, on hand-built confidences."""

from __future__ import annotations

import math

import pytest
import torch

from paradec.diffusion import rules

NEG = -math.inf


def llada_get_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's reference (generate.py), verbatim in behaviour."""
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num[i, : remainder[i]] += 1
    return num


@pytest.mark.parametrize("masked, steps", [(32, 32), (32, 8), (10, 4), (7, 3), (5, 5), (1, 1), (31, 4)])
def test_schedule_matches_llada(masked, steps):
    ref = llada_get_num_transfer_tokens(torch.ones(1, masked, dtype=torch.bool), steps)[0].tolist()
    assert rules.num_transfer_tokens(masked, steps) == ref
    assert sum(ref) == masked


def test_low_confidence_takes_the_k_most_confident_leftmost_on_ties():
    c = torch.tensor([NEG, 0.5, 0.9, 0.5, NEG, 0.7], dtype=torch.float64)
    assert rules.low_confidence(c, 1) == [2]
    assert rules.low_confidence(c, 3) == [2, 5, 1]
    assert rules.low_confidence(c, 10) == [2, 5, 1, 3]  # never a decided position


def test_threshold_commits_at_least_one_and_exactly_those_at_or_above_tau():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 12, (1,), generator=g))
        c = torch.rand(n, generator=g, dtype=torch.float64)
        c[torch.rand(n, generator=g) < 0.3] = NEG
        if not (c > NEG).any():
            continue
        tau = float(torch.rand(1, generator=g))
        if trial % 5 == 0:
            tau = float(c[c > NEG][0])  # exactly at tau counts
        got = rules.threshold(c, tau)
        above = {i for i in range(n) if c[i] >= tau}
        assert len(got) >= 1 and len(set(got)) == len(got)
        assert set(got) == (above or {rules.ranked(c)[0]})


def fast_dllm_dynamic(confidence: torch.Tensor, factor: float) -> list[int]:
    """Fast-dLLM's get_transfer_index_dynamic selection for one row (its loop, without the quirk that
    also commits the last candidate when only that one fails)."""
    mask = confidence > NEG
    sorted_conf = torch.sort(confidence[mask], descending=True)[0]
    threshs = [1 - factor / (n + 1) for n in range(1, int(mask.sum()) + 1)]
    threshs[0] = -1
    top_i = len(threshs)
    for i in range(len(threshs)):
        if sorted_conf[i] < threshs[i]:
            top_i = i
            break
    return rules.ranked(confidence)[:top_i]


def test_factor_matches_fast_dllm():
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        c = 1 - torch.rand(9, generator=g, dtype=torch.float64) ** 3 * 0.6
        c[torch.rand(9, generator=g) < 0.2] = NEG
        if not (c > NEG).any():
            continue
        f = float(torch.rand(1, generator=g)) * 3
        assert rules.factor(c, f) == fast_dllm_dynamic(c, f)
    c = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    assert rules.factor(c, 1.0) == [0, 1]  # thresholds 0.67, 0.75 for the 2nd and 3rd


def test_local_leap_relaxes_next_to_anchors_only():
    c = torch.tensor([0.95, 0.65, 0.65, 0.65, 0.65, 0.65], dtype=torch.float64)
    # anchor 0; thresholds at distance 1, 2, 3: 0.6, 0.7, 0.8 (anchor 0.9, local 0.6, radius 3)
    assert rules.local_leap(c, 0.9, 0.6, 3) == [0, 1]
    c = torch.tensor([0.5, 0.75, 0.99, 0.75, NEG, 0.71], dtype=torch.float64)
    # anchor 2; 1 and 3 at distance 1 pass 0.6; 0 at distance 2 fails 0.7; 5 at distance 3 fails 0.8
    assert rules.local_leap(c, 0.9, 0.6, 3) == [2, 1, 3]
    nothing_confident = torch.tensor([0.2, 0.3, NEG], dtype=torch.float64)
    assert rules.local_leap(nothing_confident, 0.9, 0.6, 3) == [1]


def test_credit_accumulates_for_the_token_kept_first():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    masked = torch.tensor([True, False])
    credit = torch.zeros(2, 3, dtype=torch.float64)
    for _ in range(3):
        credit = rules.credit_update(credit, logits, masked, beta=0.5, gamma=1.0)
    p = torch.softmax(logits[0].double(), -1)[0]
    assert credit[0, 0] == pytest.approx(p * (1 + 0.5 + 0.25))
    assert credit[0, 1:].abs().sum() == 0 and credit[1].abs().sum() == 0  # decided rows keep no credit
    fused = rules.credit_fuse(logits, credit, alpha=1.0)
    assert torch.softmax(fused[0], -1)[0] > torch.softmax(logits[0].double(), -1)[0]


def test_early_commit_thresholds_loosen_with_progress():
    logits = torch.tensor([[6.0, 0.0, 0.0], [3.0, 0.0, 0.0], [9.0, 9.0, 0.0]])
    gaps = rules.top2_gap(logits)
    assert gaps.tolist() == [6.0, 3.0, 0.0]
    masked = torch.tensor([True, True, False])  # mean gap over masked: 4.5
    taus = (7.5, 5.0, 2.5)
    assert not rules.early_commit(gaps, masked, 0.1, taus)
    assert not rules.early_commit(gaps, masked, 0.5, taus)
    assert rules.early_commit(gaps, masked, 0.9, taus)
