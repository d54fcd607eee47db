"""The frozen pieces of a target model that a trained head reads, on either runtime.

A head reads token embeddings (its input) and rows of the LM head (its readout); both stay the
target's own. On the native runtime they come from its packed weights (dequantized rows), on the
hf runtime from the transformers modules. ``fingerprint`` identifies the model a head was trained
for, so a head is never silently used with another model or vocabulary.
"""

from __future__ import annotations

import hashlib
import json

import torch

# LM-head rows compared between the model a head was trained for and the one it is loaded for:
# spread over the vocabulary, fixed, so a head file carries them and any loader can check them.
PROBES = 16


def text_config(model):
    """The transformers config of ``model`` (either runtime)."""
    rt = model.runtime
    config = rt.arch.config if rt.name == "native" else rt.model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def layer_shape(model) -> dict:
    """The target's decoder-layer sizes, which an EAGLE head copies."""
    c = text_config(model)
    heads = c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    return dict(hidden=c.hidden_size, vocab=model.vocab_size, heads=heads,
                kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
                intermediate=c.intermediate_size, eps=float(getattr(c, "rms_norm_eps", 1e-5)),
                rope_theta=float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))))


@torch.no_grad()
def embed_rows(model, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings, (n,) ids → (n, d) float32."""
    rt = model.runtime
    if rt.name == "native":
        return rt.weights.embed.rows(ids.to(torch.int64)).to(torch.float32)
    return rt.model.get_input_embeddings().weight[ids].to(torch.float32)


@torch.no_grad()
def lm_head_rows(model, ids: torch.Tensor) -> torch.Tensor:
    """LM head rows, (n,) ids → (n, d) float32."""
    rt = model.runtime
    if rt.name == "native":
        return rt.weights.lm_head.rows(ids.to(torch.int64)).to(torch.float32)
    return rt.model.get_output_embeddings().weight[ids].to(torch.float32)


def probe_ids(vocab: int) -> torch.Tensor:
    return torch.linspace(0, vocab - 1, PROBES).round().to(torch.int64)


def tokenizer_digest(tokenizer) -> str:
    """SHA-256 of the token → id map: equal iff the two tokenizers map the same strings to the same ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def fingerprint(model) -> tuple[dict, torch.Tensor]:
    """What a head file records about its model: sizes and tokenizer digest, plus probe rows (PROBES, d)."""
    facts = {"vocab": model.vocab_size, "hidden": layer_shape(model)["hidden"],
             "tokenizer_sha256": tokenizer_digest(model.tokenizer)}
    return facts, lm_head_rows(model, probe_ids(model.vocab_size))


def mismatch(model, facts: dict, probes: torch.Tensor) -> str | None:
    """Why ``model`` is not the one a head with ``facts``/``probes`` was trained for, or None.

    The probe rows allow for quantization (a 4-bit or 8-bit copy of the same model has rows at
    cosine > 0.99 to the originals); another model's rows are far apart."""
    mine, rows = fingerprint(model)
    for key in ("vocab", "hidden"):
        if facts.get(key) != mine[key]:
            return f"{key} {facts.get(key)} (head) vs {mine[key]} (model)"
    if facts.get("tokenizer_sha256") != mine["tokenizer_sha256"]:
        return "a different tokenizer (token → id map)"
    cos = torch.nn.functional.cosine_similarity(rows.float(), probes.float(), dim=-1)
    if float(cos.min()) < 0.99:
        return f"different LM head weights (cosine of probe rows down to {float(cos.min()):.3f})"
    return None


@torch.no_grad()
def last_layer(model) -> dict[str, torch.Tensor]:
    """The target's last decoder layer as float32 matrices (y = x @ W.T): q, k, v, o, gate, up, down
    and the two norm weights, attn_norm and mlp_norm. An EAGLE head may start from them
    (``train.stream``): its one layer then begins as the target's own last one."""
    rt = model.runtime
    shape = layer_shape(model)
    q_rows, kv_rows = shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"]
    if rt.name == "native":
        layer = rt.weights.layers[-1]
        qkv = layer.qkv.dequantize(torch.float32)
        gate_up = layer.gate_up.dequantize(torch.float32)
        inter = shape["intermediate"]
        return {"q": qkv[:q_rows], "k": qkv[q_rows : q_rows + kv_rows], "v": qkv[q_rows + kv_rows :],
                "o": layer.o.dequantize(torch.float32), "gate": gate_up[:inter], "up": gate_up[inter:],
                "down": layer.down.dequantize(torch.float32),
                "attn_norm": layer.attn_norm.to(torch.float32), "mlp_norm": layer.mlp_norm.to(torch.float32)}
    layer = rt.model.model.layers[-1]
    a, m = layer.self_attn, layer.mlp
    return {name: w.weight.detach().to(torch.float32) for name, w in (
        ("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj), ("o", a.o_proj),
        ("gate", m.gate_proj), ("up", m.up_proj), ("down", m.down_proj),
        ("attn_norm", layer.input_layernorm), ("mlp_norm", layer.post_attention_layernorm))}
