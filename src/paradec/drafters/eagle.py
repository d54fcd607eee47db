"""``eagle``: a trained feature head drafts (EAGLE, Li et al. 2024; dynamic trees as in EAGLE-2).

The head (``head_net.EagleHead``) reads, per position t, the target's feature f_t and the embedding of
the next token x_{t+1}, and predicts f_{t+1}; the target's frozen LM head (restricted to frequent
tokens) reads the prediction out. Fed its own predictions it drafts a tree, level by level, one head
forward per level (``draft_tree.py``, cost-aware).

The head's rows, and its KV cache (``EagleRunner``), at root position n (tokens x_0 .. x_n committed,
the target's features f_0 .. f_{n-1} received)::

    committed rows   t = 0 .. n-1: input [e(x_{t+1}), f_t]   real features, kept across steps
    root output      row n-1's output f̂_n → logits of the first draft level
    pending rows     a draft node at depth d: position n-1+d, input [e(node), f̂ of its parent];
                     it sees the committed rows, its ancestors' rows and itself

After verification the pending rows are dropped: the accepted tokens come back with the target's
real features and become committed rows at the next ``sync`` (EAGLE re-reads them the same way).
Training (``paradec.train``) builds the same masks, so the head sees at depth d what it was
trained on.
"""

from __future__ import annotations

import torch

from ..runtime.kv import KVCache
from .base import register
from .feature_drafter import HeadDrafter, HeadDrafterConfig, require_features
from .head_net import EagleHead
from .target_parts import embed_rows


class EagleRunner:
    """The head's side of drafting (the ``DraftRunner`` verbs over an ``EagleHead`` and its own KV cache)."""

    def __init__(self, model, head: EagleHead):
        self.model, self.head = model, head
        self.vocab = model.vocab_size
        self.max_length = model.max_length
        self.reset()

    def reset(self) -> None:
        c = self.head.config
        self.features = torch.empty(0, c.hidden)  # (received, d): f_0, f_1, ...
        self.kv = KVCache(1, c.kv_heads, c.head_dim, torch.float32)  # committed rows = positions 0 .. length-1
        self.out: dict[int, torch.Tensor] = {}  # draft node → its row's predicted feature (d,); -1 = the root
        self.slot: dict[int, int] = {}  # draft node → its pending row (0-based among pending rows)

    @property
    def rows(self) -> int:
        return self.kv.length

    def add_features(self, hidden: torch.Tensor) -> None:
        """Append the target's features of newly committed tokens, (n, d)."""
        self.features = torch.cat([self.features, hidden.detach().to(torch.float32)])

    @torch.inference_mode()
    def sync(self, tokens: list[int]) -> torch.Tensor:
        """Turn the tokens committed since the last step into head rows; logits after the root, (vocab,).

        Example: rows cover t = 0..4 (tokens x_0..x_5 were committed), now x_0..x_8 are: rows t = 5, 6, 7
        are read with features f_5, f_6, f_7 and tokens x_6, x_7, x_8; row 7's output drafts x_9.
        """
        n = len(tokens) - 1  # the root's position
        require_features(len(self.features), n)
        self.keep_path([])
        past = self.rows
        new = n - past
        if new == 0:  # nothing committed since the last sync: the root's logits are unchanged
            return self._logits(self.out[-1][None])[0]
        ids = torch.tensor(tokens[past + 1 : n + 1])
        mask = torch.ones(new, past + new, dtype=torch.bool)
        mask[:, past:] = torch.ones(new, new, dtype=torch.bool).tril()
        out = self._run(self.features[past:n], ids, torch.arange(past, n), mask)
        self.kv.keep(list(range(new)))
        self.out = {-1: out[-1]}
        return self._logits(out[-1:])[0]

    @torch.inference_mode()
    def feed(self, nodes: list[int], tokens: list[int], depths: list[int], ancestors: list[list[int]]) -> torch.Tensor:
        """Read draft nodes (one head forward); returns the logits after each, (n, vocab).

        ancestors: per node, its ancestors nearest first (all fed earlier); the parent's output is the
        node's input feature.
        """
        pending, n = len(self.slot), len(nodes)
        mask = torch.zeros(n, self.rows + pending + n, dtype=torch.bool)
        mask[:, : self.rows] = True
        for i, anc in enumerate(ancestors):
            mask[i, [self.rows + self.slot[a] for a in anc]] = True
            mask[i, self.rows + pending + i] = True
        feats = torch.stack([self.out[anc[0] if anc else -1] for anc in ancestors])  # (n, d)
        positions = torch.tensor([self.rows - 1 + d for d in depths])
        out = self._run(feats, torch.tensor(tokens), positions, mask)
        for i, node in enumerate(nodes):
            self.slot[node] = pending + i
            self.out[node] = out[i]
        return self._logits(out)

    def keep_path(self, path: list[int]) -> None:
        """Drop every draft row: accepted tokens return with real features at the next ``sync``."""
        self.kv.keep([])
        self.slot = {}

    def _run(self, feats: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One head forward over new rows (appended to the cache as pending); their outputs, (n, d).

        feats (n, d), ids (n,) the tokens whose embeddings the rows read, positions (n,),
        mask (n, cached + n) over the cache's rows (committed, then pending) and these rows."""
        used = self.kv.length + self.kv.pending
        past = self.kv.tensor[0, :, :, :used]  # (2, Hkv, used, D)
        out, (k, v) = self.head(feats[None], embed_rows(self.model, ids)[None], positions,
                                (past[0][None], past[1][None]), mask)
        self.kv.reserve(len(ids))
        first = self.kv.append(len(ids))
        self.kv.tensor[0, 0, :, first : first + len(ids)] = k[0]
        self.kv.tensor[0, 1, :, first : first + len(ids)] = v[0]
        return out[0]

    def _logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, d) predicted features → (n, vocab) logits, -inf outside the head's token subset."""
        readout = self.head.readout
        return readout.full(readout(feats), self.vocab)


@register
class EagleDrafter(HeadDrafter):
    name = "eagle"
    kind = "eagle"
    Config = HeadDrafterConfig
    runner_class = EagleRunner
