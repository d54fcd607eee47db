"""Between the target's tokens and the draft model's: the same vocabulary, or text (another tokenizer).

``pearl`` keeps the draft's chain (``DraftChain``: ``seq[:base]`` stands for the committed tokens,
``seq[base:]`` is the chain) in the draft's own tokens. A bridge answers two questions:

``align(chain, committed)``  after a step: does the chain still continue the committed tokens?
    KEPT      yes: ``base`` moves over the newly committed part, the rest of the chain is the next draft
    BEHIND    the chain is a prefix of what was committed, shorter: its next token decides (wait for it)
    DIVERGED  no: ``seq`` is rewritten from the first difference, drafting restarts there
``view(chain)``  the chain as target tokens to verify, each with its q (or None), the draft's guess that
    the path up to it is accepted, and how many chain tokens it needs

``SameVocab``: the draft shares the target's token ids; the chain *is* the draft, with the q each token
was drawn from (exact sampling through the core's rejection rule).

``TextBridge``: another tokenizer. The committed tokens are decoded to text and read by the draft in its
own tokens; the chain's text is encoded by the target's tokenizer into the proposal. The target's last
token of that text is left out (the draft's text may stop inside it). Example (target tokens in [],
draft tokens in ()): committed ``[def][ fib]`` = ``(def)( f)(ib)``; the draft continues ``((n)():)``,
text ``"(n):"``, target tokens ``[(][n][):]`` → proposed ``[(][n]``.
Proposals are the draft's *greedy* tokens, with no q: verification treats each as certain (point mass),
so greedy output equals plain decoding and sampling stays exact, accepting a token with probability
p(token). An exact rule with the draft's q would need the draft's probability of every target token,
i.e. summed over all its tokenizations of that text; this bridge does not attempt it. So across
vocabularies the draft is always greedy, whatever the request samples with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..text import TextStream
from .draft_chain import DraftChain

KEPT, BEHIND, DIVERGED = "kept", "behind", "diverged"
CONTEXT = 4  # draft tokens decoded before the chain, so that its first token's text comes out as in context


@dataclass(frozen=True)
class Proposed:
    token: int  # a target token
    q: torch.Tensor | None  # the distribution it was drawn from; None: chosen deterministically
    plan: float  # the draft's guess, before drawing it, that the path up to it is accepted
    needs: int  # chain tokens (after base) it takes


class SameVocab:
    """The draft model has the target's vocabulary: token ids pass as they are."""

    def prompt(self, prompt_ids: list[int]) -> list[int]:
        return list(prompt_ids)

    def align(self, chain: DraftChain, committed: list[int], force: bool = False) -> str:
        """Caller holds the chain's lock. ``force``: never BEHIND (rewrite instead)."""
        seq = chain.seq
        j = min(chain.base, len(committed))  # seq[:base] already stands for committed tokens
        end = min(len(seq), len(committed))
        while j < end and seq[j] == committed[j]:
            j += 1
        if j == len(committed):
            chain.advance(j)
            return KEPT
        if j == len(seq) and not force:
            return BEHIND
        chain.rebase(j, committed[j:])
        return DIVERGED

    def view(self, chain: DraftChain) -> list[Proposed]:
        b = chain.base
        return [Proposed(chain.seq[i], chain.qs[i], chain.plans[i], i + 1 - b) for i in range(b, len(chain.seq))]

    def draft_tokens(self, target_tokens: int) -> int:
        """Chain tokens expected to make ``target_tokens`` target tokens."""
        return target_tokens

    def per_target_token(self) -> float:
        return 1.0


class _Text(TextStream):
    """The committed text, special tokens kept (a chat template's markers mean something to the draft)."""

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


class TextBridge:
    """The draft model has another tokenizer: the two meet in text."""

    def __init__(self, target_tokenizer, draft_tokenizer):
        self.target_tok, self.draft_tok = target_tokenizer, draft_tokenizer
        self.ratio = (1, 1)  # (chain tokens, target tokens) committed through kept chains: the lookahead's scale

    def prompt(self, prompt_ids: list[int]) -> list[int]:
        self.text = _Text(self.target_tok)
        self.committed = 0  # target tokens pushed into self.text
        self.text.push(list(prompt_ids))
        self.committed = len(prompt_ids)
        self.base_end = len(self.text.text)  # the committed text that seq[:base] stands for
        self._ends_key, self._ends = None, []
        text = self.text.text
        bos = getattr(self.target_tok, "bos_token", None)
        if bos and text.startswith(bos):  # the draft adds its own (if it uses one)
            text = text[len(bos):]
        return self.draft_tok(text, add_special_tokens=True).input_ids

    @property
    def whole(self) -> bool:
        """The committed tokens end on a whole character (else no text can continue them yet)."""
        return self.text.read == len(self.text.ids)

    def align(self, chain: DraftChain, committed: list[int], force: bool = False) -> str:
        fresh = len(committed) - self.committed
        if fresh > 0:
            self.text.push(committed[self.committed:])
            self.committed = len(committed)
        new = self.text.text[self.base_end:]  # committed text the draft's base does not cover yet
        text, ends = self._chain_text(chain)
        if text.startswith(new) and self.whole:
            n = next((i + 1 for i, e in enumerate(ends) if e == len(new)), None) if new else 0
            if n is not None:  # the committed text ends where a chain token ends
                if n and fresh > 0:
                    a, b = self.ratio
                    self.ratio = (a + n, b + fresh)
                chain.advance(chain.base + n)
                self.base_end = len(self.text.text)
                return KEPT
        elif new.startswith(text) and not force and self.whole:
            return BEHIND
        # keep the chain tokens whose text the committed text starts with; re-encode the rest of it
        keep = 0
        for i, e in enumerate(ends):
            if 0 <= e <= len(new) and new.startswith(text[:e]):
                keep = i + 1
        done = ends[keep - 1] if keep else 0
        tail = self.draft_tok(new[done:], add_special_tokens=False).input_ids if new[done:] else []
        chain.rebase(chain.base + keep, tail)
        self.base_end = len(self.text.text)
        return DIVERGED

    def view(self, chain: DraftChain) -> list[Proposed]:
        if not self.whole:
            return []
        text, ends = self._chain_text(chain)
        if not text:
            return []
        enc = self.target_tok(text, add_special_tokens=False, return_offsets_mapping=True)
        out, score, j = [], 1.0, 0
        probs = chain.probs[chain.base:]
        for token, (_, end) in list(zip(enc.input_ids, enc.offset_mapping))[:-1]:  # the last may be cut short
            while j < len(ends) and ends[j] < end:
                score *= probs[j]
                j += 1
            if j == len(ends):
                break
            out.append(Proposed(token, None, score * probs[j], j + 1))
        return out

    def draft_tokens(self, target_tokens: int) -> int:
        return max(target_tokens, round(target_tokens * self.per_target_token()))

    def per_target_token(self) -> float:
        """Chain tokens per target token, counted over the chains kept so far (the lookahead's scale)."""
        a, b = self.ratio
        return a / b

    def _chain_text(self, chain: DraftChain) -> tuple[str, list[int]]:
        """The chain's text (whole characters) and, per chain token, where its text ends in it (-1: inside a
        character). Decoded after a few base tokens of context; cached while the chain only grows."""
        b = chain.base
        key = (chain.epoch, b)
        if self._ends_key != key:
            self._ends_key, self._ends = key, []
            self._head = chain.seq[max(0, b - CONTEXT):b]
            self._head_text = self._decode(self._head)
        ends = self._ends
        for i in range(b + len(ends), len(chain.seq)):
            full = self._decode(self._head + chain.seq[b:i + 1])
            ends.append(len(full) - len(self._head_text) if not full.endswith("\ufffd") else -1)
        text = self._decode(self._head + chain.seq[b:])[len(self._head_text):] if ends else ""
        return text[:max(0, max(ends, default=0))], ends

    def _decode(self, ids: list[int]) -> str:
        return self.draft_tok.decode(ids, skip_special_tokens=False)
