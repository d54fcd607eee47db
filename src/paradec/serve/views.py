"""The decoding views the server keeps: the page of a request that asked for one
(``"paradec": {"view": true}``), served at ``GET /v1/paradec/view/{id}``.

Bounded: the newest ``capacity`` views are kept, the oldest dropped first. Each view's id is random
(128 bits), and when the server has an API key a view remembers the ``Authorization`` header of the
request that made it (as a hash) and is shown only to a request that carries the same one.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from ..decode import Result
from ..viz import Trace, page_data, render


def owner_of(authorization: str | None) -> str:
    """What a view remembers of the key that asked for it: a hash, never the key."""
    return hashlib.sha256((authorization or "").encode("latin-1", "replace")).hexdigest()


@dataclass
class Recording:
    """A request's view while it runs: its id (known from the start), its trace, what the page needs."""

    id: str
    trace: Trace
    prompt_ids: list[int]
    owner: str | None  # None: the server has no API key, anyone who knows the id may read it


@dataclass
class View:
    recording: Recording
    result: Result


class Views:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._views: OrderedDict[str, View] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, prompt_ids: list[int], owner: str | None) -> Recording:
        return Recording(uuid.uuid4().hex, Trace(), list(prompt_ids), owner)

    def add(self, recording: Recording, result: Result) -> None:
        with self._lock:
            self._views[recording.id] = View(recording, result)
            while len(self._views) > self.capacity:
                self._views.popitem(last=False)

    def page(self, view_id: str, owner: str | None, tokenizer, model_name: str) -> str | None:
        """The page of view ``view_id``, or None when there is none this ``owner`` may read."""
        with self._lock:
            view = self._views.get(view_id)
        if view is None:
            return None
        if view.recording.owner is not None and not hmac.compare_digest(view.recording.owner, owner or ""):
            return None
        rec = view.recording
        return render(page_data(rec.trace, view.result, tokenizer, rec.prompt_ids, model_name))
