"""The architecture facts the runtime needs, read from a transformers config; unsupported ones refused.

Supported: decoder-only Llama-family layouts (``llama``, ``qwen2``, ``mistral``): RMSNorm, rotary
position embeddings of any type transformers knows (its own rotary class computes the tables),
grouped-query attention, SiLU-gated MLP, optional q/k/v biases (Qwen2), optional sliding windows.
Configs are read from config.json directly (``JsonConfig``) or taken from a transformers model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import ParadecError

FAMILIES = ("llama", "qwen2", "mistral")


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
    config: object  # the config (JsonConfig or a transformers config), for the rotary tables

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
        eps=float(getattr(config, "rms_norm_eps", 1e-6)),
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


class JsonConfig(SimpleNamespace):
    """A model directory's config.json read as attributes, without transformers' config classes (whose
    imports take seconds); ``get_text_config`` mirrors transformers' for nested text configs."""

    @classmethod
    def read(cls, directory: Path) -> "JsonConfig":
        path = directory / "config.json"
        if not path.is_file():
            raise ParadecError(f"'{directory}' holds no config.json")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ParadecError(f"cannot read the config in '{directory}': {exc}") from exc
        return cls(**data, _directory=directory)

    def get_text_config(self):
        text = getattr(self, "text_config", None)
        return JsonConfig(**text, _directory=self._directory) if isinstance(text, dict) else self


def rope_parameters(config) -> dict:
    """{"rope_type", "rope_theta", ...} from a transformers-5 config or an older one (rope_theta + rope_scaling)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        return {"rope_type": "default", **params}
    scaling = getattr(config, "rope_scaling", None) or {}
    return {"rope_theta": getattr(config, "rope_theta", 10000.0), **scaling,
            "rope_type": scaling.get("rope_type", scaling.get("type", "default"))}


class RopeTables:
    """cos / sin of every position, (P, head_dim / 2) each, extended on demand in chunks.

    Computed as transformers computes them (float32 ``positions * inv_freq``, then cos/sin times the
    attention scaling): the default rope here, every other type through transformers' own
    ``ROPE_INIT_FUNCTIONS`` (which needs its config class, imported only then)."""

    CHUNK = 4096

    def __init__(self, arch: Arch, dtype: torch.dtype = torch.float32):
        params = rope_parameters(arch.config)
        kind = params["rope_type"]
        if kind in ("dynamic", "longrope"):
            raise unsupported(arch.config, "position-dependent rope scaling (dynamic / longrope)")
        if kind == "default":
            dim = arch.head_dim
            self.inv_freq = 1.0 / (float(params["rope_theta"]) ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
            self.scaling = 1.0
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            config = arch.config
            if isinstance(config, JsonConfig):
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(config._directory, local_files_only=True).get_text_config()
            self.inv_freq, self.scaling = ROPE_INIT_FUNCTIONS[kind](config)
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
        freqs = torch.arange(have, upto, dtype=torch.float).unsqueeze(1) * self.inv_freq.float().unsqueeze(0)  # (n, D/2)
        self.cos = torch.cat([self.cos, (freqs.cos() * self.scaling).to(self.dtype)]).contiguous()
        self.sin = torch.cat([self.sin, (freqs.sin() * self.scaling).to(self.dtype)]).contiguous()
