"""Token ids → text pieces for streaming: whole characters only, stop strings honoured.

Invariant (tested): the streamed text equals the full decode of the ids, however they are chunked,
and stop strings cut at the same place whatever the chunking. One exception no streaming decoder
can avoid: a byte-fallback tokenizer (``<0xE4>`` tokens) decodes an *invalid* run of byte tokens as
one U+FFFD per byte, including bytes that had already formed a whole character, which was shown.
"""

from __future__ import annotations

from bisect import bisect_left

from transformers import PreTrainedTokenizerBase


class TextStream:
    """Incremental detokenizer.

    Ids are read one at a time, each decoded after a short *context*: the ids that produced the
    last piece of text (a tokenizer drops a word's leading space at the start of a decode, so the
    context makes the new text come out as it would inside the full decode). An id whose text is
    empty (a skipped special token) or ends in U+FFFD (a multi-byte character split across tokens)
    produces nothing yet and stays *pending* until a later id makes the text grow; the context
    only moves past ids that produced text. This is the algorithm of ``tokenizers``'
    ``DecodeStream``, written over ``tokenizer.decode`` so that it serves every tokenizer class, honours
    its own decode options, and exposes the pending ids for ``flush`` and the stop-string cut.
    Each id costs two decodes of a few ids, however long the output grows.

    Worked example (word-level tokenizer; ``<s>`` is special, skipped)::

        read   decode                 text       context after
        w73    decode([w73])          "w73"      [w73]
        <s>    decode([w73, <s>])     "w73"      [w73]          no growth: <s> is pending
        w1     decode([w73, <s>, w1]) "w73 w1"   [<s>, w1]      (restarting at [<s>] would lose the space)

    Stop strings: the cut is at the stop string that is *completed first* in the text (the earliest
    end; at equal ends the longer one), which is what reading one token at a time finds, so a
    multi-token step cuts where plain decoding does. Text that could still become a stop string is
    held back.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.ends: list[int] = []  # ends[i]: length of the whole-character text of ids[: i + 1]
        self.text = ""  # text of the ids read so far (pending ones excluded), cut at a stop string if one was hit
        self.context = self.read = 0  # ids[context:read]: the context; ids[read:]: pending
        self.context_text = ""  # decode(ids[context:read])
        self.checked = 0  # text[:checked] holds no stop string
        self.sent = 0  # characters of self.text already emitted
        self.stopped = False

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, ids: list[int], final: bool = False) -> str:
        """Add generated ids; return the text that is now safe to show.

        ``final``: the generation ends here, so release everything, incomplete characters included.
        """
        if not self.stopped:
            for token in ids:
                self._read(token)
            if final and self.read < len(self.ids):
                text = self.decode(self.ids[self.context :])
                self.text += text[len(self.context_text) :]
                self.read = len(self.ids)
                self.ends[-1] = len(self.text)
            final = self._cut_at_stop() or final
        return self._emit(final)

    def _read(self, token: int) -> None:
        """Read one id: append its text (and the pending ids') unless that text is empty or ends inside a character."""
        self.ids.append(token)
        text = self.decode(self.ids[self.context :])
        if len(text) > len(self.context_text) and not text.endswith("\ufffd"):
            self.text += text[len(self.context_text) :]
            self.context, self.read = self.read, len(self.ids)
            self.context_text = self.decode(self.ids[self.context :])
            self.ends.append(len(self.text))
        else:  # pending; its whole characters count for the stop-string cut
            self.ends.append(len(self.text) + max(0, len(text.rstrip("\ufffd")) - len(self.context_text)))

    def _cut_at_stop(self) -> bool:
        """Cut text and ids at the stop string completed first in the unchecked text; True if one was hit.

        Keeps the fewest ids whose text contains that stop string (found by bisection on ``ends``).
        """
        first = None  # (end, start) of the earliest-ending match
        for s in self.stop:
            at = self.text.find(s, max(0, self.checked - len(s) + 1))
            if at >= 0 and (first is None or (at + len(s), at) < first):
                first = (at + len(s), at)
        self.checked = len(self.text)
        if first is None:
            return False
        end, at = first
        n = bisect_left(self.ends, end) + 1
        del self.ids[n:], self.ends[n:]
        self.text = self.text[:at]
        self.stopped = True
        return True

    def _emit(self, final: bool) -> str:
        """The text not yet emitted, except (unless ``final``) the tail that could still start a stop string."""
        end = len(self.text) if final else len(self.text) - self.holdback
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : end], end
        return piece
