"""A cache of packed weights, so that only the first load of a model pays for reading and packing.

Reading a GGUF file's blocks (the ``gguf`` package parses its 49k-string vocabulary in ~7 s) and
regrouping them into tiles takes seconds; the result — every tensor of ``Weights`` — is written once
as one safetensors file under ``$PARADEC_CACHE/packed/`` and read back in a fraction of a second.
The key covers the source files (path, size, mtime), dtype, requested quantization and the source of
the modules that define the layout, so a change to any of them packs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from .arch import Arch
from .model import LayerWeights, Weights
from .weights import Linear, Part

log = logging.getLogger(__name__)
LINEARS = ("qkv", "o", "gate_up", "down")
LAYOUT_CODE = [Path(__file__).with_name(n) for n in ("weights.py", "tiles.py", "loading.py", "packed.py")]


def key(sources: list[Path], dtype: torch.dtype, quant: str) -> str:
    h = hashlib.sha256()
    for path in sources:
        st = path.stat()
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(f"{dtype}|{quant}".encode())
    for code in LAYOUT_CODE:
        h.update(code.read_bytes())
    return h.hexdigest()[:20]


def path_for(key_: str) -> Path:
    from ..model.builtins import cache_root

    return cache_root() / "packed" / f"{key_}.safetensors"


def save(path: Path, weights: Weights, quant: str) -> None:
    """Write ``weights`` atomically (a concurrent or interrupted write leaves no half file)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {"norm": weights.norm}
    meta: dict[str, object] = {"quant": quant, "act": str(weights.act), "kv": str(weights.kv),
                               "tied": weights.lm_head is weights.embed, "linears": {}}

    def put(name: str, lin: Linear) -> None:
        for i, p in enumerate(lin.parts):
            tensors[f"{name}.p{i}"] = p.w
        if lin.bias is not None:
            tensors[f"{name}.bias"] = lin.bias
        meta["linears"][name] = [lin.K, [[p.fmt, p.N] for p in lin.parts]]

    put("embed", weights.embed)
    if weights.lm_head is not weights.embed:
        put("lm_head", weights.lm_head)
    for i, layer in enumerate(weights.layers):
        tensors[f"layers.{i}.attn_norm"], tensors[f"layers.{i}.mlp_norm"] = layer.attn_norm, layer.mlp_norm
        for name in LINEARS:
            put(f"layers.{i}.{name}", getattr(layer, name))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pack-")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"paradec": json.dumps(meta)})
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full cache only costs the next load its speed
        log.warning("could not write the packed-weights cache %s: %s", path, exc)
        Path(tmp).unlink(missing_ok=True)


def load(path: Path, arch: Arch) -> tuple[Weights, str] | None:
    """The cached weights and their resolved quantization, or None when there is no usable cache."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["paradec"])
            t = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring an unreadable packed-weights cache %s: %s", path, exc)
        return None

    def lin(name: str) -> Linear:
        K, parts = meta["linears"][name]
        return Linear(tuple(Part(fmt, t[f"{name}.p{i}"], N) for i, (fmt, N) in enumerate(parts)), K, t.get(f"{name}.bias"))

    layers = [LayerWeights(attn_norm=t[f"layers.{i}.attn_norm"], qkv=lin(f"layers.{i}.qkv"), o=lin(f"layers.{i}.o"),
                           mlp_norm=t[f"layers.{i}.mlp_norm"], gate_up=lin(f"layers.{i}.gate_up"),
                           down=lin(f"layers.{i}.down")) for i in range(arch.layers)]
    embed = lin("embed")
    dtype = lambda s: getattr(torch, s.removeprefix("torch."))  # noqa: E731
    weights = Weights(arch=arch, embed=embed, layers=layers, norm=t["norm"],
                      lm_head=embed if meta["tied"] else lin("lm_head"), act=dtype(meta["act"]), kv=dtype(meta["kv"]))
    return weights, meta["quant"]
