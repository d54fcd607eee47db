"""Token ids → text pieces for streaming: whole characters only, stop strings honoured."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class TextStream:
    """Incremental detokenizer.

    Re-decodes the generated ids each time (cheap next to a forward pass) and emits only the new
    suffix, holding back a trailing U+FFFD (a multi-byte character split across tokens) and any
    tail that could still become a stop string.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # decoded text of self.ids, cut at a stop string if one was hit
        self.sent = 0  # characters of self.text already emitted
        self.stopped = False

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, ids: list[int]) -> str:
        """Add generated ids; return the text that is now safe to show."""
        self.ids.extend(ids)
        self.text = self.decode(self.ids)
        for s in self.stop:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self._cut(s, at)
                return self.flush()
        safe = len(self.text) - self.holdback
        if self.text.endswith("\ufffd"):
            safe = min(safe, len(self.text.rstrip("\ufffd")))
        if safe <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : safe], safe
        return piece

    def flush(self) -> str:
        """Everything not yet emitted (at the end of generation)."""
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece

    def _cut(self, stop: str, at: int) -> None:
        """Keep the text before the stop string and the fewest ids whose text contains it."""
        self.stopped = True
        for n in range(1, len(self.ids) + 1):
            if stop in self.decode(self.ids[:n]):
                self.ids = self.ids[:n]
                break
        self.text = self.text[:at]
        self.sent = min(self.sent, at)
