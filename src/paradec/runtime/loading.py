"""Weights for the native runtime, read straight from safetensors files or GGUF blocks.

A ``Layout`` says which format each kind of tensor gets (from ``--dtype`` and ``--quant``). Float
weights come from the model directory's safetensors files (no transformers model is built). With a
GGUF source, tensors whose block format the kernels read natively (Q4_0, Q4_1 → q4; Q8_0 → q8) are
taken block for block (Q4_0 rewritten as the equivalent Q4_1), so the weights are exactly the file's:
no second rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ParadecError
from .arch import Arch
from .model import LayerWeights, Weights
from . import QUANTS
from .weights import FLOAT_FORMATS, QK, Linear, from_blocks, quantize, to_blocks

QUANTIZED = ("q4", "q8")
FLOAT_FMT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float64: "f64"}


@dataclass(frozen=True)
class Layout:
    """Formats per tensor kind. ``act`` is the activation (and norm) dtype, ``kv`` the cache dtype."""

    linear: str
    head: str  # lm_head
    embed: str
    act: torch.dtype
    kv: torch.dtype

    @classmethod
    def of(cls, dtype: torch.dtype, quant: str) -> "Layout":
        """none: every weight in ``dtype``; int8: q8 everywhere; int4: q4 in the decoder layers with the
        embeddings and the LM head in q8 (the output layer is the most sensitive to rounding)."""
        if quant not in QUANTS:
            raise ParadecError(f"unknown quantization '{quant}'; choose one of: {', '.join(QUANTS)}")
        act = torch.float64 if dtype == torch.float64 else torch.float32
        if quant != "none" and dtype == torch.float64:
            raise ParadecError("--quant int8/int4 computes in float32; use --dtype float32 or bfloat16 with it")
        kv = {torch.float64: torch.float64, torch.bfloat16: torch.bfloat16}.get(dtype, torch.float32)
        plain = FLOAT_FMT[dtype]
        if quant == "none":
            return cls(plain, plain, plain, act, kv)
        return cls("q8" if quant == "int8" else "q4", "q8", "q8", act, kv)


def resolve_quant(quant: str, dtype: torch.dtype, gguf_file: Path | None) -> str:
    """``auto`` in bfloat16 (the fast default) → the block format a GGUF file's decoder layers already have,
    when the kernels read it (Q4_0/Q4_1 → int4, Q8_0 → int8: the file's own weights, no second rounding);
    else ``none`` (asking for float32/float64 asks for float weights)."""
    if quant != "auto":
        return quant
    if gguf_file is None or dtype != torch.bfloat16:
        return "none"
    import gguf

    kinds = [t.tensor_type.name for t in gguf.GGUFReader(str(gguf_file)).tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    top = max(set(kinds), key=kinds.count) if kinds else ""
    return {"Q4_0": "int4", "Q4_1": "int4", "Q8_0": "int8"}.get(top, "none")


def _hf_names(i: int) -> dict[str, str]:
    p = f"model.layers.{i}."
    return {"attn_norm": p + "input_layernorm.weight", "mlp_norm": p + "post_attention_layernorm.weight",
            "q": p + "self_attn.q_proj", "k": p + "self_attn.k_proj", "v": p + "self_attn.v_proj",
            "o": p + "self_attn.o_proj", "gate": p + "mlp.gate_proj", "up": p + "mlp.up_proj", "down": p + "mlp.down_proj"}


class SafetensorsSource:
    """Float tensors by transformers name, from the (possibly sharded) safetensors files of a directory."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ParadecError(f"no .safetensors files in '{directory}'; the native runtime reads weights from them "
                               "(use --runtime hf for other formats)")
        self._files = [safe_open(str(f), framework="pt") for f in files]
        self._where = {name: h for h in self._files for name in h.keys()}

    def has(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._where[name].get_tensor(name)
        except KeyError:
            raise ParadecError(f"the weights have no tensor '{name}'") from None


class StateDictSource:
    """Float tensors by transformers name from an in-memory state dict (a model built in-process)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def has(self, name: str) -> bool:
        return name in self.state

    def get(self, name: str) -> torch.Tensor:
        try:
            return self.state[name].detach()
        except KeyError:
            raise ParadecError(f"the weights have no tensor '{name}'") from None


class GGUFBlocks:
    """The block-quantized tensors of a GGUF file that map onto q4 / q8 directly, by transformers name."""

    def __init__(self, path: Path, arch: Arch):
        import gguf

        self.arch = arch
        self.types = gguf.GGMLQuantizationType
        reader = gguf.GGUFReader(str(path))
        self.tensors = {t.name: t for t in reader.tensors}
        self.permute_qk = arch.family == "llama"  # llama.cpp's converter interleaves llama's q/k rows

    GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                  "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}

    def _gguf_name(self, hf: str) -> str:
        if hf == "model.embed_tokens":
            return "token_embd.weight"
        if hf == "lm_head":
            return "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        layer, kind = hf.split(".")[2], hf.split(".")[-1]
        return f"blk.{layer}.{self.GGUF_NAMES[kind]}.weight"

    def blocks(self, hf: str, fmt: str) -> torch.Tensor | None:
        """GGML blocks (rows, row bytes) of ``fmt`` if the file holds the tensor in a block format that maps
        onto it, else None."""
        t = self.tensors.get(self._gguf_name(hf))
        if t is None:
            return None
        raw = torch.from_numpy(np.array(t.data))  # (rows, row bytes) uint8, copied out of the memory map
        n = raw.shape[0]
        if fmt == "q4" and t.tensor_type == self.types.Q4_1:
            w = raw
        elif fmt == "q4" and t.tensor_type == self.types.Q4_0:  # d, q → d, m = -8 d, q: w = d (q - 8) = d q + m
            blocks = raw.view(n, -1, 18)
            m = (blocks[..., 0:2].contiguous().view(torch.float16) * -8).view(torch.uint8)  # exact: a power of two
            w = torch.cat([blocks[..., 0:2], m, blocks[..., 2:]], dim=-1).reshape(n, -1)
        elif fmt == "q8" and t.tensor_type == self.types.Q8_0:
            w = raw
        else:
            return None
        kind = hf.split(".")[-1]
        if self.permute_qk and kind in ("q_proj", "k_proj"):
            heads = self.arch.heads if kind == "q_proj" else self.arch.kv_heads
            w = w[torch.arange(n).view(heads, self.arch.head_dim // 2, 2).transpose(1, 2).reshape(-1)]
        return w


def load_weights(src: SafetensorsSource | StateDictSource, arch: Arch, layout: Layout, gguf_file: Path | None = None) -> Weights:
    """Read and pack every weight; ``gguf_file``, when given, supplies block-quantized tensors as they are."""
    gguf = GGUFBlocks(gguf_file, arch) if gguf_file is not None and layout.linear in QUANTIZED else None

    def part(hf: str, fmt: str) -> tuple[str, torch.Tensor, torch.Tensor | None]:
        """(format, float matrix or GGML blocks, bias) of one transformers linear layer."""
        bias = src.get(hf + ".bias").float() if src.has(hf + ".bias") else None
        if fmt in QUANTIZED and gguf is not None:
            blocks = gguf.blocks(hf, fmt)
            if blocks is not None:
                return fmt, blocks, bias
        weight = src.get(hf + ".weight")
        if fmt in QUANTIZED and weight.shape[1] % QK:  # the kernels need K % 32 == 0
            fmt = FLOAT_FMT[layout.act] if layout.act == torch.float64 else "bf16"
        return fmt, (to_blocks(weight, fmt).flatten(1) if fmt in QUANTIZED else weight), bias

    def linear(fmt: str, *names: str) -> Linear:
        """The layers ``names`` stacked along their outputs (q|k|v, gate|up: one kernel call for all)."""
        parts = [part(name, fmt) for name in names]
        fmt = parts[0][0]
        data = torch.cat([p[1] for p in parts])
        bias = None if parts[0][2] is None else torch.cat([p[2] for p in parts])
        return from_blocks(data, fmt, bias) if fmt in QUANTIZED else quantize(data, fmt, bias)

    def norm(name: str) -> torch.Tensor:
        return src.get(name).to(layout.act).contiguous()

    layers = []
    for i in range(arch.layers):
        n = _hf_names(i)
        layers.append(LayerWeights(
            attn_norm=norm(n["attn_norm"]), mlp_norm=norm(n["mlp_norm"]),
            qkv=linear(layout.linear, n["q"], n["k"], n["v"]),
            o=linear(layout.linear, n["o"]),
            gate_up=linear(layout.linear, n["gate"], n["up"]),
            down=linear(layout.linear, n["down"]),
        ))
    embed = linear(layout.embed, "model.embed_tokens")
    if arch.tie_embeddings or not src.has("lm_head.weight"):
        head = embed if layout.head == layout.embed else linear(layout.head, "model.embed_tokens")
    else:
        head = linear(layout.head, "lm_head")
    return Weights(arch=arch, embed=embed, layers=layers, norm=norm("model.norm.weight"), lm_head=head,
                   act=layout.act, kv=layout.kv)


__all__ = ["FLOAT_FORMATS", "Layout", "QUANTS", "SafetensorsSource", "StateDictSource", "load_weights"]
