"""The drafters a server keeps between requests (``--share-drafter-state``), lent to one request at a time.

A drafter holds two kinds of state: what it learnt (Token Recycling's table, ``auto``'s acceptance
estimates), which sharing is meant to carry from request to request, and the state of the generation
it follows (its context index, EAGLE's features, the prompt it was begun with), which must belong to
one request. ``Drafter.begin`` resets the second, so a drafter can serve request after request, but
never two at once: beginning it for a new request while another still runs would take the running
one's state away (an EAGLE request failing on lost features, two threads writing one table).

So a kept drafter is *lent*: ``take`` hands an idle one (or None: build a new one and ``lend`` it), and
``give_back`` returns it when its request has ended, whatever the end. Concurrent requests of one
method therefore decode with different kept drafters (each a line of learning), and none waits.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable

from ..drafters import Drafter


class Shelf:
    """Idle kept drafters per key (method and request options): at most ``kinds`` keys, the least
    recently used dropped first, and at most ``per_kind`` idle drafters of each."""

    def __init__(self, kinds: int = 8, per_kind: int = 8):
        self.kinds, self.per_kind = kinds, per_kind
        self._idle: OrderedDict[Hashable, list[Drafter]] = OrderedDict()
        self._lent: dict[int, tuple[Hashable, Drafter]] = {}  # id(drafter) -> (key, drafter), while lent
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> Drafter | None:
        """An idle drafter kept for ``key``, now lent; None when every one is lent (or none was kept)."""
        with self._lock:
            idle = self._idle.get(key)
            if not idle:
                return None
            drafter = idle.pop()
            self._lent[id(drafter)] = (key, drafter)
            return drafter

    def lend(self, key: Hashable, drafter: Drafter) -> Drafter:
        """Count a newly built ``drafter`` as lent for ``key``: it is kept once given back."""
        with self._lock:
            self._lent[id(drafter)] = (key, drafter)
        return drafter

    def give_back(self, drafter: Drafter) -> None:
        """Its request has ended: keep it for the next request of its key (a drafter never lent: nothing)."""
        with self._lock:
            entry = self._lent.pop(id(drafter), None)
            if entry is None:
                return
            key = entry[0]
            idle = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(idle) < self.per_kind:
                idle.append(drafter)
            while len(self._idle) > self.kinds:
                self._idle.popitem(last=False)

    def lent(self) -> int:
        with self._lock:
            return len(self._lent)
