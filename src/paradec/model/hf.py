"""The target runtime: a transformers causal LM behind a narrow, cache-owning adapter.

The decoding loop talks to the model only through ``prefill``, ``forward`` and ``commit``.
Tree attention needs no change to the model: transformers accepts a prepared 4D attention mask
and explicit position ids, and a ``DynamicCache`` that we roll back ourselves.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from ..errors import ContextOverflowError


def context_length(model: PreTrainedModel) -> int:
    """The model's context window in tokens (unbounded if its config names none)."""
    return int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 2**31)


class HFTarget:
    """One sequence's view of a transformers model: its KV cache and the committed length.

    Lifecycle per step: ``forward`` appends a block of rows to the cache; ``commit(keep)`` then
    leaves exactly the committed prefix plus the kept rows (e.g. root + accepted path).
    """

    # float32 matmuls through MKL are slower for 2-3 rows than for 4 (scripts/measure_block_cost.py):
    # such blocks are padded with inert rows, which commit() then drops.
    PAD_ROWS = {torch.float32: 4}

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.dtype = model.dtype
        self.vocab_size = model.config.get_text_config().vocab_size
        self.max_length = context_length(model)
        self.cache = DynamicCache(config=model.config)
        self.length = 0  # committed tokens in the cache
        self._block = 0  # rows of the last forward, not yet committed

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Reset the cache, read the prompt, return the logits after its last token, shape (vocab,)."""
        if not ids:
            raise ValueError("prefill needs at least one token")
        self._check_room(len(ids))
        self.cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=torch.tensor([ids]),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.length, self._block = len(ids), 0
        return out.logits[0, -1]

    @torch.inference_mode()
    def forward(self, tokens: list[int], offsets: list[int], mask: torch.Tensor) -> torch.Tensor:
        """Score a block of new rows in one pass.

        tokens:  (n,) token ids of the block
        offsets: (n,) position of each row relative to the committed length (tree depth)
        mask:    (n, n) bool, True where row i may attend to row j of the block; every row also
                 sees the whole committed cache
        returns: (n, vocab) logits
        """
        if self._block:
            raise RuntimeError("forward called twice without commit")
        n = len(tokens)
        self._check_room(max(offsets) + 1)
        pad = self.PAD_ROWS.get(self.dtype, 0) - n if n > 1 else 0
        if pad > 0:  # inert rows: they see only themselves and the cache, and nothing sees them
            tokens, offsets = list(tokens) + [tokens[0]] * pad, list(offsets) + [0] * pad
            mask = torch.block_diag(mask, torch.eye(pad, dtype=torch.bool))
        rows = len(tokens)
        start = self.length
        attend = torch.ones(rows, start + rows, dtype=torch.bool)
        attend[:, start:] = mask
        additive = torch.zeros(1, 1, rows, start + rows, dtype=self.dtype)
        additive.masked_fill_(~attend, torch.finfo(self.dtype).min)  # a float mask: bool is wrong under eager
        out = self.model(
            input_ids=torch.tensor([tokens]),
            position_ids=torch.tensor([[start + o for o in offsets]]),
            attention_mask=additive,
            past_key_values=self.cache,
            use_cache=True,
        )
        self._block = rows
        return out.logits[0, :n]

    def commit(self, keep: list[int]) -> None:
        """Keep block rows ``keep`` (ascending) after the committed prefix, drop the others.

        A prefix of the block is a crop; any other set (an accepted path through a tree) is
        gathered layer by layer, since no cache API keeps non-contiguous positions.
        """
        start, n = self.length, self._block
        if keep == list(range(len(keep))):
            if n - len(keep):
                self.cache.crop(-(n - len(keep)))  # transformers 5: a negative count removes tokens
        else:
            index = torch.tensor([start + k for k in keep])
            for layer in self.cache.layers:
                layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys.index_select(-2, index)], dim=-2)
                layer.values = torch.cat([layer.values[..., :start, :], layer.values.index_select(-2, index)], dim=-2)
        self.length, self._block = start + len(keep), 0

    def _check_room(self, rows: int) -> None:
        if self.length + rows > self.max_length:
            raise ContextOverflowError(
                f"{self.length + rows} tokens do not fit the model's context window of {self.max_length} tokens"
            )
