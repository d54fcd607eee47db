"""The architecture facts the runtime needs, read from a transformers config; unsupported ones refused.

Supported: decoder-only Llama-family layouts (``llama``, ``qwen2``, ``mistral``): RMSNorm, rotary
position embeddings of any type transformers knows (its own rotary class computes the tables),
grouped-query attention, SiLU-gated MLP, optional q/k/v biases (Qwen2), optional sliding windows.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from ..errors import ParadecError

# model_type -> transformers module holding its rotary embedding class
FAMILIES = {"llama": "llama", "qwen2": "qwen2", "mistral": "mistral"}


@dataclass(frozen=True)
class Arch:
    family: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    max_positions: int
    tie_embeddings: bool
    qkv_bias: bool
    windows: tuple[int | None, ...]  # per layer: sliding window length, None = full attention
    config: object  # the transformers config (for the rotary tables)

    @property
    def qkv_rows(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim


def unsupported(config, why: str) -> ParadecError:
    name = getattr(config, "model_type", type(config).__name__)
    return ParadecError(f"the native runtime does not support this model ({name}: {why}); use --runtime hf")


def arch_of(config) -> Arch:
    """Read an ``Arch`` from a transformers config; a clear error naming ``--runtime hf`` otherwise."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise unsupported(config, f"model type {family!r}, supported: {', '.join(FAMILIES)}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise unsupported(config, f"activation {config.hidden_act!r}")
    if getattr(config, "mlp_bias", False) or (family == "llama" and getattr(config, "attention_bias", False)):
        raise unsupported(config, "biases outside q/k/v")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv_heads:
        raise unsupported(config, f"{heads} heads over {kv_heads} key/value heads")
    if head_dim % 2:
        raise unsupported(config, f"odd head_dim {head_dim}")
    return Arch(
        family=family,
        vocab_size=config.vocab_size,
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=config.intermediate_size,
        eps=float(config.rms_norm_eps),
        max_positions=int(getattr(config, "max_position_embeddings", 0) or 2**31),
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=family == "qwen2",
        windows=sliding_windows(config),
        config=config,
    )


def sliding_windows(config) -> tuple[int | None, ...]:
    """Per layer, the sliding-window length (None: the layer attends to everything)."""
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types:
        return tuple(window if t == "sliding_attention" else None for t in types)
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        return (None,) * n
    return (window,) * n


class RopeTables:
    """cos / sin of every position, (P, head_dim / 2) float32 each, from transformers' own rotary class
    (so every rope type it knows — default, llama3, yarn, ... — is computed the way it does);
    extended on demand in chunks."""

    CHUNK = 4096

    def __init__(self, arch: Arch, dtype: torch.dtype = torch.float32):
        module = importlib.import_module(f"transformers.models.{FAMILIES[arch.family]}.modeling_{FAMILIES[arch.family]}")
        rotary_cls = next(getattr(module, n) for n in dir(module) if n.endswith("RotaryEmbedding"))
        if getattr(arch.config, "rope_parameters", None) and arch.config.rope_parameters.get("rope_type") in ("dynamic", "longrope"):
            raise unsupported(arch.config, "position-dependent rope scaling (dynamic / longrope)")
        self.rotary = rotary_cls(arch.config)
        self.dtype = dtype
        self.half = arch.head_dim // 2
        self.cos = torch.empty(0, self.half, dtype=dtype)
        self.sin = torch.empty(0, self.half, dtype=dtype)

    @torch.inference_mode()
    def ensure(self, positions: int) -> None:
        """Make the tables cover positions 0 .. positions-1."""
        have = self.cos.shape[0]
        if positions <= have:
            return
        upto = -(-positions // self.CHUNK) * self.CHUNK
        ids = torch.arange(have, upto).unsqueeze(0)
        probe = torch.empty(0, dtype=torch.float32)
        cos, sin = self.rotary(probe, ids)  # (1, n, head_dim) float32, as transformers computes them
        self.cos = torch.cat([self.cos, cos[0, :, : self.half].to(self.dtype)]).contiguous()
        self.sin = torch.cat([self.sin, sin[0, :, : self.half].to(self.dtype)]).contiguous()
