"""Token ids → text pieces for streaming: whole characters only, stop strings honoured."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class TextStream:
    """Incremental detokenizer.

    Decodes only the new ids, with the previous step's ids in front as context (a tokenizer may
    drop a word's leading space at the start of a decode), so each step costs the same however long
    the output grows. Ids whose text ends in U+FFFD (a multi-byte character split across tokens)
    wait for the next ones; text that could still become a stop string is held back.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # decoded text of self.ids[:self.read], cut at a stop string if one was hit
        self.prefix = self.read = 0  # self.ids[prefix:read]: context for decoding the ids after read
        self.sent = 0  # characters of self.text already emitted
        self.stopped = False

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, ids: list[int]) -> str:
        """Add generated ids; return the text that is now safe to show."""
        self.ids.extend(ids)
        self._advance(final=False)
        for s in self.stop:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self._cut(s, at)
                return self.flush()
        safe = len(self.text) - self.holdback
        if safe <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : safe], safe
        return piece

    def flush(self) -> str:
        """Everything not yet emitted (at the end of generation), incomplete characters included."""
        if not self.stopped:
            self._advance(final=True)
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece

    def _advance(self, final: bool) -> None:
        """Append the text of the ids after ``read`` unless it ends inside a character (and not ``final``)."""
        if self.read >= len(self.ids):
            return
        before = self.decode(self.ids[self.prefix : self.read])
        after = self.decode(self.ids[self.prefix :])
        if after.endswith("\ufffd") and not final:
            return
        self.text += after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)

    def _cut(self, stop: str, at: int) -> None:
        """Keep the text before the stop string and the fewest ids whose text contains it."""
        self.stopped = True
        for n in range(1, len(self.ids) + 1):
            if stop in self.decode(self.ids[:n]):
                self.ids = self.ids[:n]
                break
        self.text = self.text[:at]
        self.sent = min(self.sent, at)
