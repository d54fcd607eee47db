"""Grammar-forced tokens as a free draft (SGLang's jump-forward decoding, verified in the same forward).

Where the grammar admits exactly one next token (a JSON key's quote, ``": "``, a closing brace), the
token needs no guessing: the step's draft starts with the chain of forced tokens, and the method's own
draft (proposed for the context *after* them) hangs under its last node::

    root ─ f1 ─ f2 ─ f3 ─ d1 ─ d2          forced [f1, f2, f3]; the method drafted [d1, d2] (and d3
                          └ d3             under f3), node indices shifted by 3

Each forced token is the only one its parent's masked row allows, so verification always accepts it
(greedy: it is the argmax; sampling: p is a point mass on it); the step yields the forced tokens, the
accepted part of the method's draft and the bonus token, from one forward.

The method never sees the forced nodes: ``inner_step`` gives its ``observe`` the block as if the root
were the last forced token, its own nodes renumbered from 0, and their logits rows. A method's aux rows
(Lookahead's window) attend to the root only, not to a chain under it, so they are dropped on steps with
forced tokens (as the loop drops them near the end of the context).
"""

from __future__ import annotations

import torch

from ..tree import Block, Draft
from ..verify import Verdict


def graft(forced: list[int], draft: Draft) -> Draft:
    """The forced chain with ``draft`` hung under its last node (``draft`` itself when nothing is forced)."""
    k = len(forced)
    if not k:
        return draft
    parents = list(range(-1, k - 1)) + [p + k if p >= 0 else k - 1 for p in draft.parents]
    q = None if draft.q is None else [None] * k + list(draft.q)
    return Draft(tokens=list(forced) + list(draft.tokens), parents=parents, q=q)


def inner_step(block: Block, logits: torch.Tensor, verdict: Verdict, k: int) -> tuple[Block, torch.Tensor, Verdict]:
    """What the method's ``observe`` reads of a step whose draft starts with ``k`` forced tokens: the
    block rooted at the last forced token with the method's nodes, their logits rows (root first), and
    the verdict on them. If the forced chain was not all accepted (the step was cut short), the method's
    draft was never reached: it comes back cut to nothing."""
    if not k:
        return block, logits, verdict
    draft = block.draft
    root = draft.tokens[k - 1]
    if len(verdict.accepted) < k:
        rows = logits[k : k + 1]
        return Block(root, Draft()), rows, Verdict([], [int(rows[0].argmax())])
    inner = Draft(tokens=draft.tokens[k:], parents=[p - k for p in draft.parents[k:]],
                  q=None if draft.q is None else draft.q[k:])
    rows = logits[k : k + 1 + len(inner)]  # (1 + nodes, vocab): the last forced node's row is the root's
    return Block(root, inner), rows, Verdict([a - k for a in verdict.accepted[k:]], verdict.tokens[k:])
