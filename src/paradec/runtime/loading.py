"""Weights for the native runtime, read straight from safetensors files or GGUF blocks.

A ``Layout`` says which format each kind of tensor gets (from ``--dtype`` and ``--quant``). Float
weights come from the model directory's safetensors files (no transformers model is built). With a
GGUF source, tensors whose block format the kernels read (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
Q5_K, Q6_K) are taken block for block, so the weights are exactly the file's: no second rounding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ParadecError
from .arch import Arch
from .model import LayerWeights, Weights
from . import QUANTS
from . import tiles
from .weights import FLOAT_FORMATS, QK, Linear, Part, float_part, ggml_part, stack

log = logging.getLogger(__name__)
FLOAT_FMT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float64: "f64"}
FILE = "file"  # a Layout entry: the GGUF file's own blocks where the kernels read them
RESOLVED = ("none", "int8", "int4", "gguf")  # what --quant resolves to (model.quant)


@dataclass(frozen=True)
class Layout:
    """Formats per tensor kind. ``act`` is the activation (and norm) dtype, ``kv`` the cache dtype.
    A format is a weights.py format, or ``file`` (the GGUF file's own blocks where the kernels read
    them, the float weights in ``float_fmt`` otherwise); ``accept`` lists the file block formats a
    quantised entry takes as they are instead of quantising anew."""

    linear: str
    head: str  # lm_head
    embed: str
    act: torch.dtype
    kv: torch.dtype
    float_fmt: str = "bf16"
    accept: tuple[str, ...] = ()

    @classmethod
    def of(cls, dtype: torch.dtype, quant: str) -> "Layout":
        """none: every weight in ``dtype``; int8: q8_0 everywhere; int4: 4-bit blocks (a file's Q4_0, Q4_1
        or Q4_K as they are, else q4_1) in the decoder layers with the embeddings and the LM head in q8_0
        (the output layer is the most sensitive to rounding); gguf: a GGUF file's own blocks everywhere."""
        if quant not in QUANTS and quant != "gguf":
            raise ParadecError(f"unknown quantization '{quant}'; choose one of: {', '.join(QUANTS)}")
        act = torch.float64 if dtype == torch.float64 else torch.float32
        if quant != "none" and dtype == torch.float64:
            raise ParadecError("--quant int8/int4 computes in float32; use --dtype float32 or bfloat16 with it")
        kv = {torch.float64: torch.float64, torch.bfloat16: torch.bfloat16}.get(dtype, torch.float32)
        plain = FLOAT_FMT[dtype]
        if quant == "none":
            return cls(plain, plain, plain, act, kv, plain)
        if quant == "gguf":
            return cls(FILE, FILE, FILE, act, kv, plain)
        if quant == "int8":
            return cls("q8_0", "q8_0", "q8_0", act, kv, plain, ("q8_0",))
        return cls("q4_1", "q8_0", "q8_0", act, kv, plain, ("q4_0", "q4_1", "q4_k", "q8_0"))


def resolve_quant(quant: str, dtype: torch.dtype, gguf_file: Path | None) -> str:
    """``auto`` in bfloat16 (the fast default) → ``gguf`` for a GGUF file (its own blocks, every block
    type the kernels read, no second rounding), else ``none`` (asking for float32/float64 asks for
    float weights). ``gguf`` without a file is ``none``."""
    if quant == "gguf" and gguf_file is None:
        return "none"
    if quant != "auto":
        return quant
    return "gguf" if gguf_file is not None and dtype == torch.bfloat16 else "none"


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

    def shape(self, name: str) -> list[int]:
        try:
            return self._where[name].get_slice(name).get_shape()
        except KeyError:
            raise ParadecError(f"the weights have no tensor '{name}'") from None

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

    def shape(self, name: str) -> list[int]:
        return list(self.get(name).shape)

    def get(self, name: str) -> torch.Tensor:
        try:
            return self.state[name].detach()
        except KeyError:
            raise ParadecError(f"the weights have no tensor '{name}'") from None


class GGUFBlocks:
    """The block-quantized tensors of a GGUF file, by transformers name, as ``(format, blocks)``."""

    GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                  "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}

    def __init__(self, path: Path, arch: Arch):
        import gguf

        self.path, self.arch = path, arch
        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # a truncated or malformed file: numpy/struct errors of every kind
            raise ParadecError(f"cannot read the GGUF file {path}: {exc} (truncated or not a GGUF file?)") from None
        self.tensors = {t.name: t for t in reader.tensors}
        self.permute_qk = arch.family == "llama"  # llama.cpp's converter interleaves llama's q/k rows
        self.noticed: set[str] = set()

    def _gguf_name(self, hf: str) -> str:
        if hf == "model.embed_tokens":
            return "token_embd.weight"
        if hf == "lm_head":
            return "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        layer, kind = hf.split(".")[2], hf.split(".")[-1]
        return f"blk.{layer}.{self.GGUF_NAMES[kind]}.weight"

    def blocks(self, hf: str, K: int) -> tuple[str, np.ndarray] | None:
        """(format, GGML blocks (rows, row bytes)) of the tensor if the kernels read its block type, else
        None (a float tensor, or a block type dequantised with a one-line notice)."""
        t = self.tensors.get(self._gguf_name(hf))
        if t is None:
            return None
        kind = t.tensor_type.name
        fmt = tiles.GGML_TYPES.get(kind)
        if fmt is None:
            if kind not in ("F32", "F16", "BF16") and kind not in self.noticed:
                self.noticed.add(kind)
                log.warning("paradec: the kernels do not read %s blocks (%s); those tensors are dequantised", kind, self.path.name)
            return None
        try:
            raw = np.array(t.data)  # (rows, row bytes), copied out of the memory map
            raw = raw.reshape(int(t.shape[1]) if len(t.shape) > 1 else 1, -1)
        except Exception as exc:
            raise ParadecError(f"the GGUF file {self.path} has a malformed tensor {t.name}: {exc}") from None
        rows = raw.shape[0]
        expected = K // tiles.BLOCK[fmt][0] * tiles.BLOCK[fmt][1]
        if K % tiles.BLOCK[fmt][0] or raw.shape[1] != expected:
            raise ParadecError(f"the GGUF file {self.path} has a malformed tensor {t.name}: {kind} rows of "
                               f"{raw.shape[1]} bytes for {K} inputs (expected {expected})")
        kind_hf = hf.split(".")[-1]
        if self.permute_qk and kind_hf in ("q_proj", "k_proj"):
            heads = self.arch.heads if kind_hf == "q_proj" else self.arch.kv_heads
            raw = raw[np.arange(rows).reshape(heads, self.arch.head_dim // 2, 2).transpose(0, 2, 1).reshape(-1)]
        return fmt, raw


def load_weights(src: SafetensorsSource | StateDictSource, arch: Arch, layout: Layout, gguf_file: Path | None = None) -> Weights:
    """Read and pack every weight; ``gguf_file``, when given, supplies block-quantized tensors as they are."""
    quantised = {layout.linear, layout.head, layout.embed} - set(FLOAT_FORMATS)
    gguf = GGUFBlocks(gguf_file, arch) if gguf_file is not None and quantised else None

    def part(hf: str, fmt: str) -> Part:
        """One transformers linear layer in ``fmt`` (see Layout)."""
        weight = None
        if fmt not in FLOAT_FORMATS and gguf is not None:
            K = _width(src, hf)
            found = gguf.blocks(hf, K)
            if found is not None and (fmt == FILE or found[0] in layout.accept):
                return ggml_part(found[1], found[0], K)
        if fmt == FILE:
            fmt = layout.float_fmt
        weight = src.get(hf + ".weight")
        if fmt not in FLOAT_FORMATS and weight.shape[1] % QK:  # the kernels need K % 32 == 0
            fmt = layout.float_fmt
        if fmt in FLOAT_FORMATS:
            return float_part(weight, fmt)
        return ggml_part(tiles.encode(weight, fmt), fmt, weight.shape[1])

    def linear(fmt: str, *names: str) -> Linear:
        """The layers ``names`` stacked along their outputs (q|k|v, gate|up: one kernel call for all)."""
        parts = [part(name, fmt) for name in names]
        biases = [src.get(n + ".bias").float() if src.has(n + ".bias") else None for n in names]
        bias = None if biases[0] is None else torch.cat(biases).to(layout.act)
        return stack(parts, _width(src, names[0]), bias)

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


def _width(src, hf: str) -> int:
    """K of a linear layer, read from its float weight's shape without loading it where possible."""
    return int(src.shape(hf + ".weight")[1])


__all__ = ["FLOAT_FORMATS", "Layout", "QUANTS", "RESOLVED", "SafetensorsSource", "StateDictSource", "load_weights"]
