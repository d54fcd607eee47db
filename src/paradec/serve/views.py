"""The decoding views the server keeps: the page of a request that asked for one
(``"paradec": {"view": true}``), served at ``GET /v1/paradec/view/{id}``.

Bounded: the newest ``capacity`` views are kept, the oldest dropped first. Each view's id is random
(128 bits), and when the server has an API key a view remembers the ``Authorization`` header of the
request that made it (as a hash) and is shown only to a request that carries the same one.

Kept in this process's memory, or (``directory``) in a folder every process of the server reads:
``paradec serve --replicas N`` runs N processes behind one address, and a view's URL may reach any of
them. The folder is the server's own (made private by ``--replicas``); a view is one file named by
its id, written whole then renamed into place, and the oldest files beyond ``capacity`` are removed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import re
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

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


VIEW_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: the only names the folder holds or is asked for
SUFFIX = ".view"


class Views:
    def __init__(self, capacity: int, directory: str | Path | None = None):
        self.capacity = capacity
        self.directory = None if directory is None else Path(directory)
        self._views: OrderedDict[str, View] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, prompt_ids: list[int], owner: str | None) -> Recording:
        return Recording(uuid.uuid4().hex, Trace(), list(prompt_ids), owner)

    def add(self, recording: Recording, result: Result) -> None:
        if self.directory is not None:
            self._store(View(recording, result))
            return
        with self._lock:
            self._views[recording.id] = View(recording, result)
            while len(self._views) > self.capacity:
                self._views.popitem(last=False)

    def _store(self, view: View) -> None:
        """Write the view's file (whole, then renamed into place), then drop the oldest beyond ``capacity``."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(view, f)
        os.replace(tmp, self.directory / (view.recording.id + SUFFIX))
        with self._lock:
            files = []
            for path in self.directory.glob("*" + SUFFIX):
                try:
                    files.append((path.stat().st_mtime_ns, path.name, path))
                except FileNotFoundError:  # another process dropped it just now
                    pass
            for _, _, old in sorted(files)[: max(0, len(files) - self.capacity)]:
                old.unlink(missing_ok=True)

    def _get(self, view_id: str) -> View | None:
        if self.directory is None:
            with self._lock:
                return self._views.get(view_id)
        if not VIEW_ID.fullmatch(view_id):
            return None
        try:
            with open(self.directory / (view_id + SUFFIX), "rb") as f:
                return pickle.load(f)  # written by this server into its own folder (see the module docstring)
        except FileNotFoundError:
            return None

    def page(self, view_id: str, owner: str | None, tokenizer, model_name: str) -> str | None:
        """The page of view ``view_id``, or None when there is none this ``owner`` may read."""
        view = self._get(view_id)
        if view is None:
            return None
        if view.recording.owner is not None and not hmac.compare_digest(view.recording.owner, owner or ""):
            return None
        rec = view.recording
        return render(page_data(rec.trace, view.result, tokenizer, rec.prompt_ids, model_name))
