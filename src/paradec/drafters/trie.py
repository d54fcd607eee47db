"""The one token trie: candidate continuations of the root merged on shared prefixes into a draft tree.

Used by ``ngram`` (context matches), ``recycling`` (matches + the recycled template) and
``lookahead`` (pooled n-grams). Shared prefixes become one node, so verification scores each once;
siblings keep insertion order (earlier candidates are tried first by verification).

Example: adding ``[6, 8, 1]``, ``[6, 7]``, ``[9]`` gives tokens ``[6, 8, 1, 7, 9]``,
parents ``[-1, 0, 1, 0, -1]``.
"""

from __future__ import annotations

from typing import Sequence

from ..tree import Draft


class TokenTrie:
    """Token paths from the root merged into a tree of at most ``max_nodes`` nodes (insertion order)."""

    def __init__(self, max_nodes: int):
        self.max_nodes = max_nodes
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self._child: dict[tuple[int, int], int] = {}  # (parent node, token) -> node

    def add(self, path: Sequence[int]) -> int:
        """Insert a root-to-node path; return how many new nodes it took (stops at the budget)."""
        node, added = -1, 0
        for token in path:
            token = int(token)
            nxt = self._child.get((node, token))
            if nxt is None:
                if len(self.tokens) >= self.max_nodes:
                    break
                nxt = len(self.tokens)
                self._child[(node, token)] = nxt
                self.tokens.append(token)
                self.parents.append(node)
                added += 1
            node = nxt
        return added

    def __len__(self) -> int:
        return len(self.tokens)

    def draft(self) -> Draft:
        return Draft(tokens=list(self.tokens), parents=list(self.parents))
