"""The one n-gram store, and the context index that ``ngram`` and ``recycling`` build on it.

An ``NgramStore`` remembers what followed each n-gram, newest first, at most ``capacity`` entries
per n-gram; adding an entry again moves it back to the front. Two kinds of entry go in:

- positions (``NgramIndex``): where in the context a continuation of the n-gram starts. The
  continuation is read from the context when drafting, as deep as wanted, and runs on past the end
  of the context as a repetition (``continuation``). ``ngram`` and ``recycling`` draft this way.
- token tuples: Lookahead's pool keys (N-1)-token continuations by one token, both those its Jacobi
  window predicted (text that is not in the context) and those of the context itself.

Worked example (Lookahead's pool, capacity 2)::

    pool = NgramStore(capacity=2)
    for gram in ([5, 6, 7], [5, 6, 8], [5, 6, 7]):
        pool.add((gram[0],), tuple(gram[1:]))
    pool.get((5,)) → [(6, 7), (6, 8)]      # newest first; (6, 7) was seen again
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

from .trie import TokenTrie

INDEX_CAPACITY = 64  # occurrences kept per n-gram of the context: bounds a lookup on repetitive text


class NgramStore:
    """n-gram (a token tuple) -> its newest entries, at most ``capacity`` of them (``None``: all)."""

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self._table: dict[tuple[int, ...], OrderedDict[Hashable, None]] = {}

    def add(self, gram: tuple[int, ...], entry: Hashable) -> None:
        """Remember ``entry`` as the newest after ``gram``; beyond the capacity forget the oldest."""
        entries = self._table.setdefault(gram, OrderedDict())
        entries[entry] = None
        entries.move_to_end(entry)
        if self.capacity is not None and len(entries) > self.capacity:
            entries.popitem(last=False)

    def get(self, gram: tuple[int, ...], limit: int | None = None) -> list:
        """The entries after ``gram``, newest first, at most ``limit`` of them."""
        entries = self._table.get(gram)
        if not entries:
            return []
        out = list(reversed(entries))
        return out if limit is None else out[:limit]


class NgramIndex:
    """Where the n-grams (``min_n <= n <= max_n``) of a growing token list occurred.

    ``starts(gram)`` lists the positions ``e`` with ``tokens[e - n : e] == gram``, i.e. where a
    continuation of that earlier occurrence begins, newest first (the newest ``INDEX_CAPACITY``).
    Only positions with at least one following token are indexed, so the context's own suffix
    never matches itself.

    Example: tokens ``[7, 8, 9, 7, 8]``: ``starts((7, 8)) == [2]`` (continuation ``9, 7, 8``),
    ``starts((8,)) == [2]``, ``starts((9,)) == [3]``.
    """

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.store = NgramStore(INDEX_CAPACITY)
        self._done = 0  # continuation starts indexed so far: e < _done

    def update(self, tokens: list[int]) -> None:
        """Index the new continuation starts ``e`` of ``tokens`` (one list that only ever grows)."""
        for e in range(max(self._done, 1), len(tokens)):
            for n in range(self.min_n, min(self.max_n, e) + 1):
                self.store.add(tuple(tokens[e - n : e]), e)
        self._done = max(self._done, len(tokens))

    def starts(self, gram: tuple[int, ...]) -> list[int]:
        return self.store.get(gram)


def continuation(tokens: list[int], start: int, length: int) -> list[int]:
    """``length`` tokens from ``start``, read on past the end of ``tokens`` as a repetition.

    A match at ``start`` says the text from there repeats from the end of ``tokens``; once the copy
    reaches the end it keeps copying its own output (period ``len(tokens) - start``).
    Example: ``continuation([1, 2, 1, 2], 2, 5) == [1, 2, 1, 2, 1]``.
    """
    out: list[int] = []
    end = len(tokens)
    for i in range(length):
        j = start + i
        out.append(tokens[j] if j < end else out[j - end])
    return out


def lookup(index: NgramIndex, tokens: list[int], depth: int, max_branches: int, trie: TokenTrie) -> TokenTrie:
    """Add the continuations of the context's suffix matches to ``trie`` (and return it).

    Longest suffix first, most recent occurrence first; shorter suffixes only add branches while
    fewer than ``max_branches`` distinct continuations were found, and only while the trie has room.
    Example: tokens ``[5, 6, 7, 5, 6, 8, 5, 6]``, ``max_n=2``: suffix ``(5, 6)`` occurred at 0 and 3,
    so the trie gets branches ``8 5 6 ...`` (recent) and ``7 5 6 ...``.
    """
    branches = 0
    for n in range(min(index.max_n, len(tokens)), index.min_n - 1, -1):
        for start in index.starts(tuple(tokens[-n:])):
            if branches >= max_branches or len(trie) >= trie.max_nodes:
                return trie
            if trie.add(continuation(tokens, start, depth)):
                branches += 1
    return trie
