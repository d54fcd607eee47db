"""A suffix automaton over several token documents, grown online, with occurrence counts (SAM-Decoding).

The automaton of a set of strings has one state per class of substrings that end at the same set of
positions (their *endpos*); a transition ``state --x--> next`` appends token ``x``. So the strings that
follow a matched string ``w`` are the transitions out of ``w``'s state, and how often ``w·x`` occurs is
``count`` of the state it leads to. Built online (Blumer et al.; generalized to several documents), it
takes O(1) amortised states and transitions per token; following the longest suffix of a growing
text that occurs in it (``Match``) is O(1) amortised per token too (fall back along suffix links, then
take one transition): no n-gram table of fixed order, the match is as long as the text allows.

Counts: a new occurrence adds one to its state and to the states on its suffix-link chain (the shorter
suffixes that occur there too). The chain is walked for at most ``COUNT_WALK`` states: past that (only
very repetitive text, where a chain grows with the repetition) the counts of the shorter suffixes are
lower bounds. They rank continuations; exactness never depends on them.

Memory: two states per token at most, one transition per state on average (three at most); measured
in CPython (per-state dicts, tracemalloc): 432 bytes per token on 50k tokens of English records
(1.3 states per token), 322 on a repeated 20-token pattern. Whoever holds one bounds the tokens it adds
(``SuffixCorpus`` keeps the newest documents up to a token budget).

Worked example, documents ``[1, 2, 3]`` and ``[1, 2, 4]``: the state of ``[1, 2]`` has transitions
3 and 4, each to a state of count 1; ``[2]``'s state has count 2 and the same two continuations.
"""

from __future__ import annotations

COUNT_WALK = 256  # suffix-link states a new occurrence adds its count to (see the module docstring)


class SuffixAutomaton:
    """Generalized suffix automaton: ``add(document)`` or ``start()`` then ``extend(token)`` per token."""

    def __init__(self) -> None:
        self.next: list[dict[int, int]] = [{}]  # state → {token: state}
        self.link: list[int] = [-1]  # suffix link: the state of the longest suffix in another class
        self.length: list[int] = [0]  # length of the longest string of the state
        self.count: list[int] = [0]  # occurrences (|endpos|) of the state's strings
        self.tokens = 0  # tokens added in all
        self.last = 0  # the state of the current document's whole text so far

    def __len__(self) -> int:
        return len(self.length)

    def start(self) -> None:
        """Begin a new document (its first token follows nothing)."""
        self.last = 0

    def add(self, document: list[int]) -> None:
        self.start()
        for token in document:
            self.extend(token)

    def _state(self, length: int, link: int, nxt: dict[int, int], count: int) -> int:
        self.next.append(nxt)
        self.link.append(link)
        self.length.append(length)
        self.count.append(count)
        return len(self.length) - 1

    def _clone(self, p: int, q: int, token: int) -> int:
        """Split state q (reached from p by ``token``) so that the strings up to len(p) + 1 get a state of their own."""
        clone = self._state(self.length[p] + 1, self.link[q], dict(self.next[q]), self.count[q])
        while p != -1 and self.next[p].get(token) == q:
            self.next[p][token] = clone
            p = self.link[p]
        self.link[q] = clone
        return clone

    def extend(self, token: int) -> tuple[int, int] | None:
        """Append ``token`` to the current document. Returns (q, clone) when a state q was split (a
        ``Match`` sitting in q may have to move to the clone), else None."""
        self.tokens += 1
        last, split = self.last, None
        if token in self.next[last]:  # the text so far + token already occurs (another document)
            q = self.next[last][token]
            if self.length[q] == self.length[last] + 1:
                cur = q
            else:
                cur = self._clone(last, q, token)
                split = (q, cur)
        else:
            cur = self._state(self.length[last] + 1, 0, {}, 0)
            p = last
            while p != -1 and token not in self.next[p]:
                self.next[p][token] = cur
                p = self.link[p]
            if p != -1:
                q = self.next[p][token]
                if self.length[p] + 1 == self.length[q]:
                    self.link[cur] = q
                else:
                    clone = self._clone(p, q, token)
                    self.link[cur] = clone
                    split = (q, clone)
        self.last = cur
        s, walked = cur, 0
        while s > 0 and walked < COUNT_WALK:  # this occurrence of every suffix the chain holds
            self.count[s] += 1
            s, walked = self.link[s], walked + 1
        return split


class Match:
    """The longest suffix of a growing text that occurs in an automaton: ``state`` and its ``length``.

    ``step(token)`` before the automaton is extended with that token: then every occurrence the match
    points at ends before the text's end, so each has a continuation (the transitions out of ``state``).
    Example: automaton of ``[1, 2, 3]``; a text ``... 9, 1, 2`` matches ``[1, 2]`` (length 2); then ``3``
    → ``[1, 2, 3]`` (length 3); then ``5`` → nothing (length 0).
    """

    def __init__(self, sam: SuffixAutomaton):
        self.sam, self.state, self.length = sam, 0, 0

    def step(self, token: int) -> None:
        sam, s = self.sam, self.state
        while s > 0 and token not in sam.next[s]:
            s = sam.link[s]
            self.length = sam.length[s]
        nxt = sam.next[s].get(token)
        if nxt is None:
            self.state, self.length = 0, 0
        else:
            self.state, self.length = nxt, self.length + 1

    def moved(self, split: tuple[int, int] | None) -> None:
        """After ``extend`` split state q into (q, clone): a match of at most len(clone) tokens is the clone's."""
        if split is not None and self.state == split[0] and self.length <= self.sam.length[split[1]]:
            self.state = split[1]
