"""One generation's grammar state: the masks of a draft tree, the forced tokens, the committed tokens.

The matcher (llguidance's ``LLMatcher``) holds the state after the *committed* tokens. To mask a draft
tree it walks the tree: to reach a node it consumes the tokens of the node's path, rolling back what
the previous node's path does not share, and reads the bitmask there; afterwards it rolls back to the
committed state. So the matcher rolls back as the KV cache does: only committed tokens stay.

Worked example (grammar ``start: "ab" | "ac" | "d"``, one token per letter): committed state S0,
draft ``a─b`` plus ``a─x``, ``d`` (tokens [a, b, x, d], parents [-1, 0, 0, -1])::

    row    path      allowed next      row's logits after masking
    root   ()        {a, d}            -inf except a, d
    a      (a,)      {b, c}            -inf except b, c
    b      (a, b)    {EOS}             -inf except EOS
    x      --        x is not in {b, c}: the node is illegal, its row is left as it is (never reached)
    d      (d,)      {EOS}

Verification then reads masked rows only on reachable paths: an illegal node's token has probability
0 under its parent's masked row, so greedy never follows it and sampling always rejects it.

Masks are cached by path from the committed state until the next commit: the forced tokens
(``forced``) and the tree (``masked_rows``) of one step read the same states once. They are numpy
arrays and rows are masked with numpy: one thread, where torch's elementwise ops on a 49k-wide row
spread over threads that the model's kernels keep busy (milliseconds per row on a loaded machine).
"""

from __future__ import annotations

import numpy as np
import torch

from ..tree import Block
from .spec import Grammar


class Guide:
    def __init__(self, grammar: Grammar):
        vocab = grammar.vocab
        self.grammar = grammar
        self.width, self.eos = vocab.width, vocab.eos
        self.committed: list[int] = []
        self.matcher = self._start()
        self.path: tuple[int, ...] = ()  # tokens consumed past the committed state (while walking a tree)
        self._masks: dict[tuple[int, ...], tuple[np.ndarray, int]] = {}  # path -> (allowed (width,) bool, count)

    # ---- the committed state ----

    def commit(self, token: int) -> str | None:
        """Consume a committed token (one the mask allowed). Returns why the generation must end here, if
        it must: "eos" when the match is complete and nothing but EOS may follow; "constraint" at a dead
        end, where the grammar goes on but no token of the vocabulary spells a way on (a word-level
        vocabulary after a token that is only a prefix of the words the grammar wants)."""
        self._goto(())
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused committed token {token}: {self.matcher.get_error()}")
        self.committed.append(token)
        self._masks.clear()
        self.allowed()  # the next step's mask (the matcher finds a dead end only when it computes one)
        if not self.matcher.is_stopped():
            return None
        return "eos" if self.matcher.is_accepting() else "constraint"

    @property
    def accepting(self) -> bool:
        """The committed text is a complete match (the output validates as it is)."""
        self._goto(())
        return self.matcher.is_accepting()

    # ---- masks ----

    def allowed(self, path: tuple[int, ...] = ()) -> tuple[np.ndarray, int]:
        """(allowed (width,) bool, how many) after the committed tokens and ``path`` (which must be legal)."""
        hit = self._masks.get(path)
        if hit is None:
            self._goto(path)
            bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            bits = bits[: self.width]  # ids past the logits row (an EOS the library added) never come
            hit = (bits.astype(bool), int(bits.sum()))
            self._masks[path] = hit
        return hit

    def masked(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits after the committed tokens, (width,), with every token the grammar refuses at -inf."""
        return _where(self._row(())[None], logits[None])[0]

    def masked_rows(self, block: Block, logits: torch.Tensor) -> torch.Tensor:
        """A block's logits (rows, width) with the root's and every legal node's row masked by the state
        of its path; illegal nodes (and their subtrees), EOS nodes' rows and aux rows as they are."""
        draft = block.draft
        paths: list[tuple[int, ...] | None] = []  # None: unreachable
        keep = np.ones((1 + len(draft), self.width), dtype=bool)  # (tree rows, width): the tokens each row keeps
        keep[0] = self._row(())
        for i, (token, parent) in enumerate(zip(draft.tokens, draft.parents)):
            base = () if parent < 0 else paths[parent]
            legal = base is not None and (parent < 0 or draft.tokens[parent] not in self.eos)
            legal = legal and bool(self.allowed(base)[0][token])
            paths.append(base + (token,) if legal else None)
            if legal and token not in self.eos:
                keep[i + 1] = self._row(paths[-1])
        self._goto(())
        return _where(keep, logits)

    def _row(self, path: tuple[int, ...]) -> np.ndarray:
        """The tokens a row after ``path`` keeps: the allowed ones; all of them when the grammar allows
        none in the row (complete, for a model without EOS: the loop ends before reading that row)."""
        allowed, count = self.allowed(path)
        return allowed if count else np.ones_like(allowed)

    def forced(self, limit: int) -> list[int]:
        """The tokens the grammar forces from the committed state on: while exactly one token is allowed
        (and it is not EOS), that token; at most ``limit``. Plain constrained decoding would take each of
        them whatever the model says, so as a draft they are certain to be accepted."""
        out: list[int] = []
        while len(out) < limit:
            allowed, count = self.allowed(tuple(out))
            if count != 1:
                break
            token = int(np.flatnonzero(allowed)[0])
            if token in self.eos:
                break
            out.append(token)
        self._goto(())
        return out

    def _start(self):
        from llguidance import LLMatcher

        matcher = LLMatcher(self.grammar.vocab.tokenizer, self.grammar.text)
        if matcher.is_error():  # compile_constraint validated the grammar: this is the library failing
            raise RuntimeError(f"the grammar matcher failed to start: {matcher.get_error()}")
        return matcher

    def _goto(self, path: tuple[int, ...]) -> None:
        """Move the matcher to the state after the committed tokens and ``path``."""
        common = 0
        while common < min(len(path), len(self.path)) and path[common] == self.path[common]:
            common += 1
        if common < len(self.path) and not self.matcher.rollback(len(self.path) - common):
            # a dead end stops the matcher for good (its rollback then fails): start again from the committed tokens
            self.matcher = self._start()
            self.matcher.consume_tokens(self.committed + list(path[:common]))
        for token in path[common:]:
            if not self.matcher.consume_token(token):
                raise RuntimeError(f"the grammar refused token {token} on a path it allowed: {self.matcher.get_error()}")
        self.path = path


def _where(keep: np.ndarray, logits: torch.Tensor) -> torch.Tensor:
    """``logits`` (rows, width) with the entries ``keep`` (its first rows, width) refuses at -inf; rows past
    ``keep`` (aux rows) as they are. bfloat16 rows come back as float32, which numpy reads."""
    values = (logits.float() if logits.dtype == torch.bfloat16 else logits).numpy()
    n = len(keep)
    head = np.where(keep, values[:n], -np.inf).astype(values.dtype, copy=False)
    return torch.from_numpy(head if n == len(values) else np.concatenate([head, values[n:]]))
