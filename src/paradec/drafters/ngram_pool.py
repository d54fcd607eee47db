"""The n-gram pool of Lookahead decoding, and the trie that turns pooled n-grams into a draft tree.

The pool maps a token to at most ``capacity`` continuations of ``n - 1`` tokens that were seen after
it, most recently seen first (a re-seen n-gram moves back to the front). Lookahead fills it from its
Jacobi window (and optionally from the text itself) and drafts the continuations of the last token.

Worked example, ``n = 3``::

    pool = NGramPool(n=3, capacity=2)
    pool.add_sequence([5, 6, 7, 5, 6, 8])   # n-grams 567, 675, 756, 568
    pool.lookup(5)  → [(6, 8), (6, 7)]       # newest first
    trie([(6, 8), (6, 7)])  → tokens [6, 8, 7], parents [-1, 0, 0]   (the shared 6 is drafted once)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence


class NGramPool:
    """n-grams keyed by their first token; each key keeps its ``capacity`` most recent continuations."""

    def __init__(self, n: int, capacity: int):
        if n < 2:
            raise ValueError(f"n-gram size must be >= 2, got {n}")
        if capacity < 1:
            raise ValueError(f"pool capacity per key must be >= 1, got {capacity}")
        self.n, self.capacity = n, capacity
        self._table: dict[int, OrderedDict[tuple[int, ...], None]] = {}

    def add(self, ngram: Sequence[int]) -> None:
        """Insert one n-gram (first token = key); re-inserting moves it to the front."""
        if len(ngram) != self.n:
            raise ValueError(f"expected an n-gram of {self.n} tokens, got {len(ngram)}")
        entries = self._table.setdefault(int(ngram[0]), OrderedDict())
        cont = tuple(int(t) for t in ngram[1:])
        entries[cont] = None
        entries.move_to_end(cont)
        if len(entries) > self.capacity:
            entries.popitem(last=False)  # forget the least recently seen

    def add_sequence(self, tokens: Sequence[int], start: int = 0) -> None:
        """Insert every n-gram of ``tokens`` that ends at index ``start`` or later."""
        for end in range(max(start, self.n - 1), len(tokens)):
            self.add(tokens[end - self.n + 1 : end + 1])

    def lookup(self, key: int, limit: int | None = None) -> list[tuple[int, ...]]:
        """Continuations of ``key``, most recently seen first, at most ``limit`` of them."""
        entries = self._table.get(int(key))
        if not entries:
            return []
        out = list(reversed(entries))
        return out if limit is None else out[:limit]

    def __len__(self) -> int:
        return sum(len(v) for v in self._table.values())


def trie(candidates: Iterable[Sequence[int]]) -> tuple[list[int], list[int]]:
    """Merge token sequences that continue the root into one tree: (tokens, parents).

    Shared prefixes become one node, so the tree has at most ``sum(len(c))`` nodes; siblings keep
    the order in which candidates are given (earlier candidates are tried first by verification).
    """
    tokens: list[int] = []
    parents: list[int] = []
    child: dict[tuple[int, int], int] = {}  # (parent node, token) → node
    for seq in candidates:
        node = -1
        for t in seq:
            key = (node, int(t))
            if key not in child:
                child[key] = len(tokens)
                tokens.append(int(t))
                parents.append(node)
            node = child[key]
    return tokens, parents
