"""Pure functions of a draft tree."""

from __future__ import annotations

import torch

from paradec.tree import Draft, depths


def test_to_depth_keeps_shallow_nodes_with_all_their_siblings():
    #   r ─ a ─ b ─ c          depths: a 1, b 2, c 3, d 1, e 2, f 2
    #     └ d ─ e
    #         └ f
    q = [torch.full((4,), float(i)) for i in range(6)]
    draft = Draft(tokens=[10, 11, 12, 13, 14, 15], parents=[-1, 0, 1, -1, 3, 3], q=q)
    cut = draft.to_depth(2)
    assert cut.tokens == [10, 11, 13, 14, 15] and cut.parents == [-1, 0, -1, 2, 2]
    assert [float(x[0]) for x in cut.q] == [0, 1, 3, 4, 5]
    assert depths(cut.parents) == [1, 2, 1, 2, 2]
    assert draft.to_depth(1).tokens == [10, 13] and draft.to_depth(0).tokens == []
    assert draft.to_depth(3) is draft
