"""``suffix``: draft what followed the longest earlier occurrence of the text's end (SAM-Decoding,
SuffixDecoding), in the context and in a corpus of what the model wrote before.

Two suffix automata (``suffix_automaton.py``), one structure each way:

- the *context*: the prompt and the text generated so far, grown by one token per committed token;
- the *corpus*: the model's earlier conversations (prompt and answer) of this drafter, or of one API
  key on the server (``SuffixCorpus``: never shared across keys), plus an optional document set given
  at start (``documents``). It grows between generations only; copy-on-write, so a generation reads
  a fixed snapshot while another one adds to it.

Each step follows the longest suffix of the text that occurs in either automaton (O(1) amortised per
token, any length: no n-gram order to choose) and drafts a tree of its continuations, best first by
their frequency: a node's value is the product, along its path, of ``count(child) / count(children)``
(the two automata's counts added), the estimate SuffixDecoding uses. The draft grows with the match:
at most ``alpha × match length`` nodes (a long match is a confident one), none below ``min_prob``.

Memory: the context automaton holds the prompt and output (~0.43 kB a token); the corpus at most
``corpus_tokens`` tokens (default 65,536: ~28 MB, and a copy while a conversation is added), the oldest
conversations dropped first.

Drafts are deterministic proposals (no ``q``): lossless in greedy and sampling alike.
"""

from __future__ import annotations

import heapq
import math
import threading
from dataclasses import dataclass

from ..options import check_bool, check_int, check_number
from ..tree import Draft
from .base import MAX_DEPTH, MAX_NODES, Drafter, DrafterConfig, StepContext, register
from .suffix_automaton import Match, SuffixAutomaton

MAX_CORPUS = 1 << 22  # corpus_tokens' upper bound (~1.7 GB): a request can't make a drafter hold more


class SuffixCorpus:
    """Conversations (token lists) in one suffix automaton, the newest up to ``max_tokens`` tokens.

    ``add`` builds the next automaton from a copy (or anew, dropping the oldest conversations, when
    the budget is passed), then swaps it in under a lock: ``snapshot`` is never changed afterwards."""

    def __init__(self, max_tokens: int = 65536, documents: list[list[int]] | None = None):
        self.max_tokens = max_tokens
        self._lock = threading.Lock()
        self._docs: list[list[int]] = []
        self._sam = SuffixAutomaton()
        for doc in documents or []:
            self.add(doc)

    def snapshot(self) -> SuffixAutomaton:
        return self._sam

    @property
    def tokens(self) -> int:
        return self._sam.tokens

    def add(self, doc: list[int]) -> None:
        doc = list(doc)[-self.max_tokens :]
        if not doc:
            return
        with self._lock:
            docs = self._docs + [doc]
            if self._sam.tokens + len(doc) <= self.max_tokens:
                sam = _copy(self._sam)
                sam.add(doc)
            else:  # drop the oldest conversations until the budget holds, with room for the next few
                while sum(map(len, docs)) > self.max_tokens * 3 // 4 and len(docs) > 1:
                    docs.pop(0)
                sam = SuffixAutomaton()
                for d in docs:
                    sam.add(d)
            self._docs, self._sam = docs, sam


def _copy(sam: SuffixAutomaton) -> SuffixAutomaton:
    out = SuffixAutomaton()
    out.next = [dict(d) for d in sam.next]
    out.link, out.length, out.count = list(sam.link), list(sam.length), list(sam.count)
    out.tokens = sam.tokens
    return out


@dataclass(frozen=True)
class SuffixConfig(DrafterConfig):
    """max_nodes / max_depth: the largest draft; alpha: nodes per matched token (a draft has at most
    alpha × match length nodes); min_match: the shortest match drafted from; min_prob: the least path
    frequency a node needs; persist: this drafter's conversations join its corpus; corpus_tokens: the
    corpus's budget; documents: texts given at start, in the corpus from the first generation on."""

    max_nodes: int = 16
    max_depth: int = 16
    alpha: float = 2.0
    min_match: int = 2
    min_prob: float = 0.1
    persist: bool = True
    corpus_tokens: int = 65536
    documents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_int(self, "max_nodes", 1, MAX_NODES)
        check_int(self, "max_depth", 1, MAX_DEPTH)
        check_number(self, "alpha", 0.1, MAX_NODES)
        check_int(self, "min_match", 1, 64)
        check_number(self, "min_prob", 0, 1)
        check_bool(self, "persist")
        check_int(self, "corpus_tokens", 1, MAX_CORPUS)
        docs = self.documents
        if isinstance(docs, list):
            docs = tuple(docs)
            object.__setattr__(self, "documents", docs)
        if not isinstance(docs, tuple) or not all(isinstance(d, str) for d in docs):
            raise ValueError(f"documents must be a list of texts, got {self.documents!r}")


@register
class SuffixDrafter(Drafter):
    name = "suffix"
    Config = SuffixConfig
    config: SuffixConfig

    def __init__(self, model, config: SuffixConfig | None = None, corpus: SuffixCorpus | None = None):
        """``corpus``: the one to read and add to (the server's, per API key); None: a corpus of its own,
        holding ``documents``."""
        super().__init__(model, config or SuffixConfig())
        c = self.config
        if corpus is None:
            tok = model.tokenizer
            corpus = SuffixCorpus(c.corpus_tokens, [tok(d, add_special_tokens=False).input_ids for d in c.documents])
        self.corpus = corpus
        self.values: list[float] = []  # the last draft's node values (path frequencies)

    def use_corpus(self, corpus: SuffixCorpus) -> None:
        self.corpus = corpus

    def begin(self, prompt_ids: list[int], params) -> None:
        self.context = SuffixAutomaton()
        self.context.start()
        self.stored = self.corpus.snapshot()
        self.matches = (Match(self.context), Match(self.stored))
        self.seen = 0  # tokens of the text read so far

    def finish(self, tokens: list[int]) -> None:
        if self.config.persist:
            self.corpus.add(tokens)

    def _read(self, tokens: list[int]) -> None:
        """Step the matches over the new tokens, then grow the context automaton with each."""
        ctx_match, corpus_match = self.matches
        for token in tokens[self.seen :]:
            ctx_match.step(token)
            corpus_match.step(token)
            ctx_match.moved(self.context.extend(token))
        self.seen = len(tokens)

    def match_length(self) -> int:
        return max(m.length for m in self.matches)

    def propose(self, ctx: StepContext) -> Draft:
        c = self.config
        self._read(ctx.tokens)
        self.values = []
        sources = [(m.sam, m.state) for m in self.matches if m.length >= c.min_match]
        if not sources:
            return Draft()
        budget = min(c.max_nodes, ctx.max_nodes, math.ceil(c.alpha * self.match_length()))
        tokens: list[int] = []
        parents: list[int] = []
        heap = [(-1.0, 0, -1, None, sources)]  # (-value, tiebreak, parent node, token, states per automaton)
        order = 1
        while heap and len(tokens) < budget:
            neg, _, parent, token, states = heapq.heappop(heap)
            node = parent
            if token is not None:
                tokens.append(token)
                parents.append(parent)
                self.values.append(-neg)
                node = len(tokens) - 1
            depth = 0
            p = node
            while p >= 0:
                depth, p = depth + 1, parents[p]
            if depth >= c.max_depth:
                continue
            for child_token, value, child_states in _children(states, -neg):
                if value >= c.min_prob:
                    heapq.heappush(heap, (-value, order, node, child_token, child_states))
                    order += 1
        return Draft(tokens=tokens, parents=parents)


def _children(states: list[tuple[SuffixAutomaton, int]], value: float):
    """The continuations of the states' strings: (token, value × its share of the counts, states after it)."""
    counts: dict[int, float] = {}
    after: dict[int, list[tuple[SuffixAutomaton, int]]] = {}
    for sam, s in states:
        for token, nxt in sam.next[s].items():
            counts[token] = counts.get(token, 0) + sam.count[nxt]
            after.setdefault(token, []).append((sam, nxt))
    total = sum(counts.values())
    if total <= 0:
        return []
    return [(t, value * n / total, after[t]) for t, n in counts.items()]
