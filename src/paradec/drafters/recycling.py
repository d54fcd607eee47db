"""Token Recycling (Luo et al. 2024): reuse the candidates every forward pass computes anyway.

Each forward yields, for every block row, a distribution over the next token; plain decoding keeps
one token and throws the rest away. Token Recycling keeps the top-k of every row, *including the
rows of rejected draft nodes*, in an adjacency table ``M[token] = top-k successors`` (vocab x k
int32: 1.5 MB for a 49k vocabulary at k = 8). To draft, it walks the table from the
root along a static tree template (paths of ranks, e.g. ``(0,), (1,), (0, 0)``) and the target
verifies the whole tree in one pass with tree attention. No model, no training; the table keeps
learning across steps (and across generations of one drafter unless ``persist=False``).

Optionally (``lookup_branches``) the n-gram continuations of the context are grafted onto the same
tree first, which helps where the output copies its input.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from ..options import check_bool, check_int
from ..tree import Block, Draft
from .base import MAX_DEPTH, MAX_NODES, Drafter, StepContext, register
from .gate import CostGate, GatedConfig
from .ngram_store import NgramIndex, lookup
from .trie import TokenTrie

# Prior acceptance of the candidate of each rank (measured on SmolLM2-135M, see
# docs/sweeps/ngram_recycling.md); only its ordering and decay shape the default template.
RANK_PRIOR = (0.42, 0.12, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01)
MAX_K = 64  # table width: vocab x 64 int32 is 12.6 MB at a 49k vocabulary
MAX_LOOKUP_BRANCHES = 16


def static_tree(size: int, k: int, max_depth: int, prior: tuple[float, ...] = RANK_PRIOR) -> tuple[tuple[int, ...], ...]:
    """The ``size`` rank paths of highest prior probability, most probable first (a static template).

    A path's value is the product of its ranks' priors, so a child never beats its parent: the chosen
    set is a tree, listed parents first, and every prefix of it is the best tree of its size (so a
    draft cut to fewer nodes keeps the most valuable ones). Example: ``static_tree(4, 2, 3, (0.5, 0.2))``
    == ``((0,), (0, 0), (1,), (0, 0, 0))`` (values 0.5, 0.25, 0.2, 0.125; (0, 1) = 0.1 loses).
    """
    prior = tuple(prior[:k]) + (prior[-1] if prior else 0.0,) * (k - len(prior))
    heap: list[tuple[float, tuple[int, ...]]] = [(-prior[r], (r,)) for r in range(k)]
    heapq.heapify(heap)
    chosen: list[tuple[int, ...]] = []
    while heap and len(chosen) < size:
        neg, path = heapq.heappop(heap)
        chosen.append(path)
        if len(path) < max_depth:
            for r in range(k):
                heapq.heappush(heap, (neg * prior[r], path + (r,)))
    return tuple(chosen)  # in the order popped: by value, ties by rank path (heap order)


class AdjacencyTable:
    """``M[t]``: the top-k next tokens the target predicted the last time it read token ``t``.

    Shape (vocab, k), int32, ``-1`` where token ``t`` was never read. Rows are overwritten, not
    merged: the latest context is the best guess for the next occurrence.
    """

    def __init__(self, vocab: int, k: int):
        self.k = k
        self.M = torch.full((vocab, k), -1, dtype=torch.int32)  # (vocab, k)

    def update(self, tokens: list[int], logits: torch.Tensor) -> None:
        """tokens: (n,) the tokens the rows read; logits: (n, vocab) what each row predicted next."""
        top = logits.topk(self.k, dim=-1).indices.to(torch.int32)  # (n, k)
        last = {t: i for i, t in enumerate(tokens)}  # a token read twice: its latest row wins
        self.M[list(last)] = top[list(last.values())]

    def seed(self, tokens: list[int]) -> None:
        """Fill never-seen rows from the context's bigrams (most recent successor first)."""
        succ: dict[int, list[int]] = {}
        for a, b in zip(reversed(tokens[:-1]), reversed(tokens[1:])):
            row = succ.setdefault(a, [])
            if len(row) < self.k and b not in row:
                row.append(b)
        for a, row in succ.items():
            if a < self.M.shape[0] and self.M[a, 0] < 0:
                self.M[a, : len(row)] = torch.tensor(row, dtype=torch.int32)

    def bfs(self, root: int, template: tuple[tuple[int, ...], ...], trie: TokenTrie) -> None:
        """Add the template's nodes to ``trie``: node ``path + (r,)`` is ``M[token at path][r]``.

        ``template`` lists parents before children; a node whose parent or own
        candidate is unknown is skipped with its subtree.
        """
        found: dict[tuple[int, ...], list[int]] = {(): []}  # rank path -> token path
        rows: dict[int, list[int]] = {}
        for path in template:
            if len(trie) >= trie.max_nodes:
                break  # full: the rest of the template could not be added
            above = found.get(path[:-1])
            if above is None:
                continue
            parent = above[-1] if above else root
            if parent not in rows:
                rows[parent] = self.M[parent].tolist()
            token = rows[parent][path[-1]]
            if token < 0:
                continue
            found[path] = above + [token]
            trie.add(found[path])


@dataclass(frozen=True)
class RecyclingConfig(GatedConfig):
    """k: candidates kept per token (table width); tree_size / max_depth: the static template
    (``tree_size`` nodes of highest prior, at most ``max_depth`` deep); persist: keep the table
    across generations of one drafter (the paper's hot start); seed_context: fill unseen rows from
    the prompt's bigrams; lookup_branches / lookup_depth: n-gram continuations of the context
    grafted onto the tree first (0 = pure Token Recycling); the tree has at most 128 nodes in all;
    min_accept / probe_every / accept_decay: the cost gate (``gate.py``), consulted for the recycled
    part on steps without an n-gram match. ``None`` = the measured default for the cost of rows
    (``defaults.py``: small trees, except half precision off the native runtime)."""

    k: int = 8
    tree_size: int | None = None
    max_depth: int | None = None
    persist: bool = True
    seed_context: bool = True
    lookup_branches: int = 1
    lookup_depth: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "k", 1, MAX_K)
        check_int(self, "tree_size", 1, MAX_NODES, optional=True)
        check_int(self, "max_depth", 1, MAX_DEPTH, optional=True)
        check_int(self, "lookup_branches", 0, MAX_LOOKUP_BRANCHES)
        check_int(self, "lookup_depth", 1, MAX_DEPTH, optional=True)
        check_bool(self, "persist")
        check_bool(self, "seed_context")


@register
class RecyclingDrafter(Drafter):
    name = "recycling"
    Config = RecyclingConfig
    config: RecyclingConfig
    learns_from_any_block = True  # every row's top-k fills the table, whoever drafted the block

    def __init__(self, model, config: RecyclingConfig | None = None):
        super().__init__(model, config or RecyclingConfig())
        c = self.config
        self.template = static_tree(c.tree_size, c.k, c.max_depth)
        self.table: AdjacencyTable | None = None

    def begin(self, prompt_ids: list[int], params) -> None:
        c = self.config
        if self.table is None or not c.persist:
            vocab = self.model.vocab_size
            self.table = AdjacencyTable(vocab, c.k)
        if c.seed_context:
            self.table.seed(prompt_ids)
        self.index = NgramIndex(2, 4) if c.lookup_branches else None
        self.gate = CostGate(c)

    def propose(self, ctx: StepContext) -> Draft:
        c = self.config
        budget = min(len(self.template) + c.lookup_branches * c.lookup_depth, MAX_NODES, ctx.max_nodes)
        trie = TokenTrie(budget)
        if self.index is not None:
            self.index.update(ctx.tokens)
            lookup(self.index, ctx.tokens, c.lookup_depth, c.lookup_branches, trie)
        if len(trie) == 0 and not self.gate.allow():
            # Recycled drafts have been failing and extra rows are not free (float32): save the
            # forward's extra cost; n-gram matches above are still drafted, being cheap to trust.
            return Draft()
        self.table.bfs(ctx.tokens[-1], self.template, trie)
        return trie.draft()

    def observe(self, block: Block, logits: torch.Tensor, verdict) -> None:
        n = 1 + len(block.draft)  # root + every node, accepted or not
        self.table.update(block.tokens[:n], logits[:n])
        if len(block.draft):
            self.gate.record(len(verdict.accepted))

