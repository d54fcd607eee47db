"""Trained heads on disk: one safetensors file plus a JSON manifest beside it, checked before use.

    NAME.safetensors   the head's weights, the frequent-token ids of its readout, and the probe rows
                       of the LM head it was trained against; metadata: format, head config, model facts
    NAME.json          {"sha256": ..., "kind", "model", "training": {command, data, seed, tokens, minutes, ...}}

Loading checks, in order, each failure a ParadecError that says what to do: both files exist; the
weights' SHA-256 equals the manifest's; the file is a paradec head of the expected kind; it was
trained for this model (vocabulary size, hidden size, tokenizer, LM-head probe rows; see
``target_parts.mismatch``). The readout rows are then taken from the target's own LM head.

Heads for built-in models ship in ``paradec/drafters/trained/`` as ``<model>.<kind>.safetensors``
and load when no path is given (``--method eagle``).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ParadecError
from . import target_parts
from .head_net import EagleHead, HeadConfig, MedusaHeads, build

FORMAT = "paradec-head-1"
SHIPPED = Path(__file__).parent / "trained"
PROBES_KEY = "fingerprint.probes"
META_KEY = "paradec"  # the file's metadata entry: {"format", "config", "model"} as JSON
# runtime → {(path, sha256, kind): head}: a head is read once per model, not once per generation
_LOADED: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def save(path: str | Path, head: EagleHead | MedusaHeads, model, training: dict) -> dict:
    """Write ``head`` (trained against ``model``) and its manifest; returns the manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    facts, probes = target_parts.fingerprint(model)
    # weights in bfloat16: half the size, and a drafter's guesses do not need more (they are verified)
    tensors = {k: v.detach().to(torch.int64 if k.endswith("token_ids") else torch.bfloat16).contiguous()
               for k, v in head.state_dict().items()}
    tensors[PROBES_KEY] = probes.to(torch.float16).contiguous()
    # one metadata entry: safetensors writes several in any order, and the same head must give the same bytes
    meta = {META_KEY: json.dumps({"format": FORMAT, "config": head.config.to_dict(), "model": facts}, sort_keys=True)}
    save_file(tensors, str(path), metadata=meta)
    manifest = {"file": path.name, "sha256": sha256_of(path), "kind": head.config.kind, "model": model.name,
                "format": FORMAT, "training": training}
    manifest_path(path).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def shipped_path(model, kind: str) -> Path:
    """The head that ships for a built-in model, or a ParadecError saying how to train one."""
    path = SHIPPED / f"{model.name}.{kind}.safetensors"
    if not path.is_file():
        raise ParadecError(
            f"no trained {kind} head ships for model '{model.name}'; train one with "
            f"`paradec train-drafter --model {model.name} --kind {kind} --out DIR` and pass it as the method "
            f"option head=DIR/{kind}.safetensors")
    return path


def load(spec: str | Path, model, kind: str) -> tuple[EagleHead | MedusaHeads, dict]:
    """The head in ``spec`` (a path; "" = the one shipped for ``model``), checked and ready to draft;
    returns (head in eval mode, manifest)."""
    path = Path(spec) if spec else shipped_path(model, kind)
    if not path.is_file():
        raise ParadecError(f"no {kind} head at {path}: the file does not exist")
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise ParadecError(f"the head {path} has no manifest {mpath.name} beside it (written by "
                           "`paradec train-drafter` with the SHA-256 of the weights); refusing an unchecked head")
    try:
        manifest = json.loads(mpath.read_text())
        expected = manifest["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ParadecError(f"{mpath} is not a head manifest ({exc})") from None
    actual = sha256_of(path)
    if actual != expected:
        raise ParadecError(f"checksum mismatch for {path}: SHA-256 {actual}, its manifest says {expected}; "
                           "the file is damaged or not the one trained (a Git LFS pointer?); refusing to load it")
    loaded = _LOADED.setdefault(model.runtime, {})
    key = (str(path.resolve()), actual, kind)
    if key not in loaded:
        loaded[key] = _read(path, model, kind)
    return loaded[key], manifest


def _read(path: Path, model, kind: str) -> EagleHead | MedusaHeads:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a malformed file
        raise ParadecError(f"{path} is not a readable safetensors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ParadecError(f"{path} is not a paradec head (format {meta.get('format')!r}, expected {FORMAT!r})")
    config = HeadConfig(**meta["config"])
    if config.kind != kind:
        raise ParadecError(f"{path} holds a {config.kind} head, not a {kind} head; use --method {config.kind}")
    why = target_parts.mismatch(model, meta["model"], tensors.pop(PROBES_KEY))
    if why is not None:
        raise ParadecError(f"the head {path} was trained for another model or vocabulary than '{model.name}': {why}")
    if "readout.token_ids" not in tensors:
        raise ParadecError(f"{path} lacks its readout's token ids (readout.token_ids)")
    head = build(config, tensors["readout.token_ids"])
    try:
        head.load_state_dict({k: v if k.endswith("token_ids") else v.float() for k, v in tensors.items()})
    except RuntimeError as exc:
        raise ParadecError(f"{path} does not hold the tensors of its head config: {exc}") from None
    with torch.no_grad():
        head.readout.weight.copy_(target_parts.lm_head_rows(model, head.readout.token_ids))
    return head.eval().requires_grad_(False)
