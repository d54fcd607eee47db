"""The reference runtime: a transformers model behind the ``Target`` verbs (``--runtime hf``).

Tree attention needs no change to the model: transformers accepts a prepared 4D attention mask and
explicit position ids, and a ``DynamicCache`` that we roll back ourselves. Any architecture
transformers runs works here; it is the reference the native runtime is tested against.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from ..errors import ParadecError
from .target import Target


class HFRuntime:
    name = "hf"

    def __init__(self, model: PreTrainedModel):
        self.model = model
        config = model.config.get_text_config()
        self.dtype = model.dtype
        self.vocab_size = config.vocab_size
        self.layers = config.num_hidden_layers
        self.quant = "none"
        self.max_length = int(getattr(config, "max_position_embeddings", 0) or 2**31)
        self.description = f"hf (transformers {type(model).__name__}, {str(model.dtype).removeprefix('torch.')})"

    def target(self, layers: int | None = None, exit_head=None) -> "HFTarget":
        return HFTarget(self, layers, exit_head)


class HFTarget(Target):
    """One sequence's view of a transformers model: its KV cache, committed and pending rows."""

    # float32 matmuls through MKL are slower for 2-3 rows than for 4 (scripts/measure_block_cost.py):
    # such blocks are padded with inert rows that no commit keeps.
    PAD_ROWS = {torch.float32: 4}

    def __init__(self, runtime: HFRuntime, layers: int | None = None, exit_head=None):
        super().__init__()
        self.model = runtime.model
        self.config = self.model.config.get_text_config()
        self.vocab_size, self.max_length = runtime.vocab_size, runtime.max_length
        self.layers, self.exit_head = layers, exit_head
        if layers is not None:
            self._check_layerskip(layers)
        self.reset()

    def reset(self) -> None:
        self.cache = DynamicCache()  # full-length layers, also for sliding-window models (the mask applies the window)
        self.length = self.pending = 0
        self.pending_positions: list[int] = []  # positions of the pending rows (pad rows included)

    def _forward(self, tokens, offsets, mask, last_only, hidden=False):
        n = len(tokens)
        vis = self.full_mask(mask, n)  # (n, pending + n)
        pad = self.PAD_ROWS.get(self.model.dtype, 0) - n if n > 1 and not last_only else 0
        if pad > 0:  # inert rows: they see only themselves and the cache, and nothing sees them
            tokens, offsets = tokens + [tokens[0]] * pad, offsets + [0] * pad
            vis = torch.cat([vis, torch.zeros(n, pad, dtype=torch.bool)], dim=1)
            inert = torch.zeros(pad, vis.shape[1], dtype=torch.bool)
            inert[:, self.pending + n :] = torch.eye(pad, dtype=torch.bool)
            vis = torch.cat([vis, inert])
        rows = len(tokens)
        positions = [self.length + o for o in offsets]
        attend = torch.ones(rows, self.length + self.pending + rows, dtype=torch.bool)
        attend[:, self.length :] = vis
        key_pos = torch.tensor(list(range(self.length)) + self.pending_positions + positions)
        masks = {kind: self._additive(attend, key_pos, positions, window) for kind, window in self._windows().items()}
        ids, pos = torch.tensor([tokens]), torch.tensor([positions])
        with torch.inference_mode():
            if self.layers is None:
                mask_arg = masks if "sliding_attention" in masks else masks["full_attention"]
                out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask_arg, cache=self.cache,
                                 use_cache=True, logits_to_keep=1 if last_only else 0, output_hidden_states=hidden)
                logits, states = out.logits[0], (out.hidden_states[-1][0] if hidden else None)
            else:
                logits, states = self._truncated(ids, pos, masks, last_only)
        self.pending += rows
        self.pending_positions += positions
        logits = logits[-1:] if last_only else logits[:n]
        return (logits, states[:n]) if hidden else logits

    def fork(self) -> "HFTarget":
        twin = HFTarget(HFRuntime(self.model), self.layers, self.exit_head)
        for i, layer in enumerate(self.cache.layers):
            if getattr(layer, "is_initialized", False):
                twin.cache.update(layer.keys[..., : self.length, :].clone(), layer.values[..., : self.length, :].clone(), i)
        twin.length = self.length
        return twin

    def commit(self, keep: list[int]) -> None:
        start, n = self.length, self.pending
        if any(not 0 <= k < n for k in keep) or list(keep) != sorted(set(keep)):
            raise ValueError(f"commit needs ascending pending row indices in [0, {n}), got {keep}")
        if list(keep) == list(range(len(keep))):
            if n - len(keep):
                self.cache.crop(-(n - len(keep)))  # transformers 5: a negative count removes tokens
        else:
            index = torch.tensor(list(range(start)) + [start + k for k in keep])
            for layer in self.cache.layers:
                if getattr(layer, "is_initialized", False):
                    layer.keys = layer.keys.index_select(-2, index)
                    layer.values = layer.values.index_select(-2, index)
        self.length, self.pending, self.pending_positions = start + len(keep), 0, []

    def crop(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"crop to {length} outside 0..{self.length}")
        drop = self.length + self.pending - length
        if drop:
            self.cache.crop(-drop)
        self.length, self.pending, self.pending_positions = length, 0, []

    def _windows(self) -> dict[str, int | None]:
        """Attention kind -> sliding window (None = full), for the kinds this model's layers use."""
        window = getattr(self.config, "sliding_window", None)
        types = getattr(self.config, "layer_types", None)
        if types:
            return {t: (window if t == "sliding_attention" else None) for t in set(types)}
        uses_window = window and (self.config.model_type != "qwen2" or getattr(self.config, "use_sliding_window", False))
        return {"full_attention": window if uses_window else None}

    def _additive(self, attend: torch.Tensor, key_pos: torch.Tensor, positions: list[int], window: int | None):
        """A (1, 1, rows, keys) float mask: 0 where a row may attend, the dtype's minimum elsewhere
        (a float mask: a bool one is read wrongly by the eager attention)."""
        if window:
            attend = attend & (key_pos.unsqueeze(0) > torch.tensor(positions).unsqueeze(1) - window)
        dtype = self.model.dtype
        additive = torch.zeros(1, 1, *attend.shape, dtype=dtype)
        return additive.masked_fill_(~attend, torch.finfo(dtype).min)

    def _check_layerskip(self, layers: int) -> None:
        base = getattr(self.model, "model", None)
        parts = ("embed_tokens", "layers", "norm", "rotary_emb")
        if base is None or not all(hasattr(base, p) for p in parts) or self.model.get_output_embeddings() is None:
            raise ParadecError(f"running the first layers only needs a Llama-style model (model.embed_tokens/layers/"
                               f"norm/rotary_emb and an LM head); this is a {type(self.model).__name__}")
        if not 1 <= layers <= len(base.layers):
            raise ParadecError(f"layers must be in 1..{len(base.layers)}, got {layers}")

    def _truncated(self, ids, pos, masks, last_only):
        """The first ``layers`` decoder layers, the final norm, then the exit head (default: the LM head);
        returns (logits, normed hidden states)."""
        base = self.model.model
        hidden = base.embed_tokens(ids)  # (1, n, d)
        rope = base.rotary_emb(hidden, position_ids=pos)
        types = getattr(self.config, "layer_types", None)
        for i, layer in enumerate(base.layers[: self.layers]):
            mask = masks[types[i]] if types else masks["full_attention"]
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=pos, cache=self.cache,
                           use_cache=True)
        hidden = base.norm(hidden[0])
        head = self.exit_head if self.exit_head is not None else self.model.get_output_embeddings()
        return head(hidden[-1:] if last_only else hidden), hidden
