"""The trained drafting heads as torch modules, shared by training and drafting.

Both heads read the target's *features*: its final-normed hidden states, the vectors its LM head
reads (``f_t`` after token ``x_t`` predicts ``x_{t+1}``). Both read out through the target's own,
frozen LM head restricted to a frequent-token subset ``V'`` (``readout``), so a head adds no
vocabulary-sized matrix of its own and a draft step costs a small part of a target forward.

- ``EagleHead`` (EAGLE, Li et al. 2024): one decoder layer over ``fc([e(x_{t+1}), f_t])`` that predicts
  the next feature ``f_{t+1}``; run on its own predictions it drafts several tokens ahead. It
  attends over its own rows (one per committed position), so it keeps a KV cache (``eagle.py``).
- ``MedusaHeads`` (Medusa, Cai et al. 2024): ``k`` residual blocks on the last feature, head ``k``
  guessing the token ``k + 1`` places after it (the LM head itself guesses the next one).

Shapes: ``B`` sequences, ``M`` rows, ``d`` hidden size, ``V'`` subset size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("eagle", "medusa")


@dataclass(frozen=True)
class HeadConfig:
    """A head's shape. The attention/MLP sizes copy the target's layers (EAGLE's choice).

    kind:      "eagle" or "medusa"
    hidden:    the target's hidden size d
    vocab:     the target's vocabulary (LM head rows)
    subset:    size of the frequent-token readout V'
    heads, kv_heads, head_dim, intermediate, rope_theta, eps: the decoder layer (eagle)
    depth:     medusa heads: tokens guessed beyond the next one
    """

    kind: str
    hidden: int
    vocab: int
    subset: int
    heads: int = 1
    kv_heads: int = 1
    head_dim: int = 1
    intermediate: int = 1
    rope_theta: float = 10000.0
    eps: float = 1e-5
    depth: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"head kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("hidden", "vocab", "subset", "heads", "kv_heads", "head_dim", "intermediate"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.subset > self.vocab:
            raise ValueError(f"subset ({self.subset}) cannot exceed the vocabulary ({self.vocab})")
        if self.heads % self.kv_heads or self.head_dim % 2:
            raise ValueError("heads must be a multiple of kv_heads and head_dim even")
        if self.kind == "medusa" and not 1 <= self.depth <= 32:
            raise ValueError(f"medusa depth must be in [1, 32], got {self.depth}")

    def to_dict(self) -> dict:
        return asdict(self)


class Readout(nn.Module):
    """The target's LM head rows for ``token_ids`` (frozen): features (..., d) → subset logits (..., V').

    ``token_ids`` (V',) are the subset's vocabulary ids, ``weight`` (V', d) their LM head rows. Both
    are buffers: the ids are saved with a head, the rows are taken from the target when it loads."""

    def __init__(self, token_ids: torch.Tensor, hidden: int):
        super().__init__()
        self.register_buffer("token_ids", token_ids.to(torch.int64).clone())
        self.register_buffer("weight", torch.zeros(len(token_ids), hidden), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    def full(self, sub_logits: torch.Tensor, vocab: int) -> torch.Tensor:
        """(n, V') → (n, vocab) float32 logits, -inf outside the subset (such tokens are never drafted)."""
        out = sub_logits.new_full((sub_logits.shape[0], vocab), float("-inf"), dtype=torch.float32)
        out[:, self.token_ids] = sub_logits.float()
        return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (transformers' Llama convention: halves rotated). x (B, H, M, D), positions (M,)."""
    D = x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)  # (D/2,)
    ang = positions.to(torch.float32)[:, None] * inv[None, :]  # (M, D/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class EagleHead(nn.Module):
    """fc([e(x_{t+1}), f_t]) → one decoder layer (no input norm, as EAGLE's first layer) → f̂_{t+1}."""

    def __init__(self, config: HeadConfig, token_ids: torch.Tensor):
        super().__init__()
        c = self.config = config
        d = c.hidden
        self.fc = nn.Linear(2 * d, d)
        self.q = nn.Linear(d, c.heads * c.head_dim, bias=False)
        self.k = nn.Linear(d, c.kv_heads * c.head_dim, bias=False)
        self.v = nn.Linear(d, c.kv_heads * c.head_dim, bias=False)
        self.o = nn.Linear(c.heads * c.head_dim, d, bias=False)
        self.mlp_norm = nn.Parameter(torch.ones(d))
        self.gate = nn.Linear(d, c.intermediate, bias=False)
        self.up = nn.Linear(d, c.intermediate, bias=False)
        self.down = nn.Linear(c.intermediate, d, bias=False)
        self.readout = Readout(token_ids, d)

    def forward(self, feats: torch.Tensor, embeds: torch.Tensor, positions: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None = None, mask: torch.Tensor | None = None):
        """Predict the next feature for each row.

        feats, embeds: (B, M, d): row i reads feature f_t and the embedding of token x_{t+1}
        positions:     (M,) position t of each row
        past:          keys, values (B, Hkv, P, D) the rows may attend to besides themselves
        mask:          (M, P + M) bool over [past, these rows]; None = causal among these rows, no past
        returns:       (predicted features (B, M, d), (keys, values) of these rows (B, Hkv, M, D))
        """
        c = self.config
        B, M, _ = feats.shape
        x = self.fc(torch.cat([embeds, feats], dim=-1))  # (B, M, d): the residual stream
        q = self.q(x).view(B, M, c.heads, c.head_dim).transpose(1, 2)  # (B, H, M, D)
        k = self.k(x).view(B, M, c.kv_heads, c.head_dim).transpose(1, 2)  # (B, Hkv, M, D)
        v = self.v(x).view(B, M, c.kv_heads, c.head_dim).transpose(1, 2)
        q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        group = c.heads // c.kv_heads
        kk, vv = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)  # (B, H, P + M, D)
        att = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, is_causal=mask is None)
        x = x + self.o(att.transpose(1, 2).reshape(B, M, -1))
        h = rms_norm(x, self.mlp_norm, c.eps)
        x = x + self.down(F.silu(self.gate(h)) * self.up(h))
        return x, (k, v)


class MedusaHeads(nn.Module):
    """``depth`` residual blocks f + SiLU(W_k f + b_k) on the feature of the last read token;
    block ``k`` (1-based) guesses the token ``k + 1`` places ahead. Zero-initialised W_k: every
    block starts as the LM head itself (Medusa's initialisation)."""

    def __init__(self, config: HeadConfig, token_ids: torch.Tensor):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.depth))
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)
        self.readout = Readout(token_ids, config.hidden)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (..., d) → the blocks' features (..., depth, d)."""
        return torch.stack([feats + F.silu(block(feats)) for block in self.blocks], dim=-2)


def build(config: HeadConfig, token_ids: torch.Tensor) -> EagleHead | MedusaHeads:
    """A freshly initialised head (before its readout rows are set from the target). The EAGLE layer
    starts near "the next feature is this one": fc passes the feature through and the layer's weights
    are small, so the first steps already read out sensible tokens."""
    if config.kind == "medusa":
        return MedusaHeads(config, token_ids)
    head = EagleHead(config, token_ids)
    with torch.no_grad():
        for p in head.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
        d = config.hidden
        head.fc.weight[:, d:] += torch.eye(d)
        head.fc.bias.zero_()
    return head
