"""Verification on hand-built logits: pure functions, no model."""

from __future__ import annotations

from dataclasses import fields

import torch

from paradec.sampling import SamplingParams
from paradec.tree import AuxRows, Block, Draft, block_mask, block_positions, depths, paths
from paradec.verify import verify_greedy, verify_sampling

V = 8


def logits_for(argmaxes: list[int]) -> torch.Tensor:
    """One row per block row, each peaked on the given token."""
    out = torch.zeros(len(argmaxes), V)
    for row, tok in enumerate(argmaxes):
        out[row, tok] = 5.0
    return out


def test_perfect_match_accepts_all_plus_bonus():
    draft = Draft.chain([3, 4, 5])
    v = verify_greedy(draft, logits_for([3, 4, 5, 6]))
    assert v.accepted == [0, 1, 2] and v.tokens == [3, 4, 5, 6]


def test_early_mismatch_keeps_prefix_and_recovers():
    draft = Draft.chain([3, 4, 5])
    v = verify_greedy(draft, logits_for([3, 7, 5, 6]))
    assert v.accepted == [0] and v.tokens == [3, 7]


def test_first_token_wrong():
    v = verify_greedy(Draft.chain([3, 4]), logits_for([1, 4, 5]))
    assert v.accepted == [] and v.tokens == [1]


def test_empty_draft_gives_one_token():
    v = verify_greedy(Draft(), logits_for([2]))
    assert v.accepted == [] and v.tokens == [2]


def test_tree_right_answer_on_non_first_branch():
    # root ─ a(3) ─ b(4)        the target wants 6 then 7 then 1
    #      └ c(6) ─ d(7)
    draft = Draft(tokens=[3, 4, 6, 7], parents=[-1, 0, -1, 2])
    v = verify_greedy(draft, logits_for([6, 0, 0, 7, 1]))
    assert v.accepted == [2, 3] and v.tokens == [6, 7, 1]


def test_tree_geometry():
    draft = Draft(tokens=[3, 4, 6], parents=[-1, 0, -1])
    assert depths(draft.parents) == [1, 2, 1]
    assert block_positions(Block(9, draft)) == [0, 1, 2, 1]
    assert paths(draft.parents) == [[0, 1], [2]]
    expected = torch.tensor(
        [[1, 0, 0, 0],
         [1, 1, 0, 0],
         [1, 1, 1, 0],
         [1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(block_mask(Block(9, draft)), expected)


def test_aux_rows_are_masked_apart_from_tree():
    aux_mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    block = Block(9, Draft(tokens=[3], parents=[-1]), AuxRows(tokens=[5, 6], offsets=[1, 2], mask=aux_mask))
    mask = block_mask(block)
    assert block.tokens == [9, 3, 5, 6] and len(block) == 4
    assert block_positions(block) == [0, 1, 1, 2]
    assert mask[1].tolist() == [True, True, False, False]  # tree row never sees aux rows
    assert mask[2].tolist() == [True, False, True, False]  # aux rows never see tree rows
    assert mask[3].tolist() == [True, False, True, True]


def test_fitting_a_block_keeps_the_tree_first_and_aux_rows_whole():
    window = AuxRows(tokens=[5, 6, 7], offsets=[1, 2, 3], mask=torch.ones(3, 4, dtype=torch.bool))
    block = Block(9, Draft.chain([1, 2, 3]), window)  # 3 nodes + 3 aux rows after the root
    assert block.fitted(6) is block
    assert block.fitted(5) == Block(9, Draft.chain([1, 2, 3]))  # the window does not fit: dropped whole
    assert block.fitted(2) == Block(9, Draft.chain([1, 2]))  # then the tree is cut
    assert block.fitted(0) == Block(9, Draft())
    empty = AuxRows(tokens=[], offsets=[], mask=torch.ones(0, 1, dtype=torch.bool))
    assert Block(9, Draft.chain([1, 2, 3]), empty).fitted(1).aux is empty  # nothing to drop


def test_a_draft_is_only_the_tree():
    assert [f.name for f in fields(Draft)] == ["tokens", "parents", "q"]


def test_sampling_rejects_impossible_token_and_draws_from_residual():
    # target puts all mass on token 2; a deterministic draft of 5 must be rejected, 2 must come out
    draft = Draft.chain([5])
    logits = torch.full((2, V), -1e9)
    logits[0, 2] = 0.0
    logits[1, 1] = 0.0
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        v = verify_sampling(draft, logits, SamplingParams(temperature=1.0), gen)
        assert v.accepted == [] and v.tokens == [2]


def test_sampling_second_sibling_accepted_when_first_impossible():
    draft = Draft(tokens=[5, 2], parents=[-1, -1])
    logits = torch.full((3, V), -1e9)
    logits[0, 2] = 0.0
    logits[2, 4] = 0.0  # after node 1 (token 2) the target wants 4
    v = verify_sampling(draft, logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert v.accepted == [1] and v.tokens == [2, 4]
