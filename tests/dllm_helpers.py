"""Tiny random diffusion-LM checkpoints written in-process in the real formats (config fields and
weight names of LLaDA and Dream), and an independent reference forward to check the mapping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import word_tokenizer

VOCAB = 96
MASK = VOCAB - 1  # the word tokenizer's last word doubles as [MASK]
EOS = 2  # "</s>"


def llada_config(**overrides) -> dict:
    """The fields of a real LLaDA config.json (values shrunk)."""
    cfg = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 32,
        "embedding_dropout": 0.0, "embedding_size": VOCAB, "eos_token_id": EOS, "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": MASK, "max_sequence_length": 256, "mlp_hidden_size": 64,
        "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 2,
        "n_layers": 2, "pad_token_id": EOS, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
        "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
        "transformers_version": "4.46.3", "use_cache": False, "vocab_size": VOCAB, "weight_tying": False,
    }
    cfg.update(overrides)
    return cfg


def dream_config(**overrides) -> dict:
    """The fields of a real Dream config.json (values shrunk); EOS is "<|endoftext|>", id 0 of the BPE."""
    cfg = {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02,
        "intermediate_size": 64, "mask_token_id": MASK, "max_position_embeddings": 256, "max_window_layers": 2,
        "model_type": "Dream", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "pad_token_id": 0, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False, "vocab_size": VOCAB,
    }
    cfg.update(overrides)
    return cfg


# role -> (LLaDA name, Qwen2/Dream name); {i} is the layer
ROLES = {
    "embed": ("model.transformer.wte.weight", "model.embed_tokens.weight"),
    "norm": ("model.transformer.ln_f.weight", "model.norm.weight"),
    "head": ("model.transformer.ff_out.weight", "lm_head.weight"),
    "attn_norm": ("model.transformer.blocks.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    "mlp_norm": ("model.transformer.blocks.{i}.ff_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    "q": ("model.transformer.blocks.{i}.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    "k": ("model.transformer.blocks.{i}.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    "v": ("model.transformer.blocks.{i}.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    "q_bias": ("model.transformer.blocks.{i}.q_proj.bias", "model.layers.{i}.self_attn.q_proj.bias"),
    "k_bias": ("model.transformer.blocks.{i}.k_proj.bias", "model.layers.{i}.self_attn.k_proj.bias"),
    "v_bias": ("model.transformer.blocks.{i}.v_proj.bias", "model.layers.{i}.self_attn.v_proj.bias"),
    "o": ("model.transformer.blocks.{i}.attn_out.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    "gate": ("model.transformer.blocks.{i}.ff_proj.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    "up": ("model.transformer.blocks.{i}.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
    "down": ("model.transformer.blocks.{i}.ff_out.weight", "model.layers.{i}.mlp.down_proj.weight"),
}


def random_weights(d: int, layers: int, heads: int, kv: int, inter: int, vocab: int, bias: bool, tied: bool,
                   seed: int) -> dict:
    """role (with layer index) -> float64 tensor."""
    g = torch.Generator().manual_seed(seed)
    hd = d // heads

    def r(*shape, scale=0.15):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    w = {"embed": r(vocab, d, scale=0.5), "norm": 1 + r(d, scale=0.1)}
    if not tied:
        w["head"] = r(vocab, d, scale=0.3)
    for i in range(layers):
        w.update({(k, i): v for k, v in {
            "attn_norm": 1 + r(d, scale=0.1), "mlp_norm": 1 + r(d, scale=0.1), "q": r(heads * hd, d),
            "k": r(kv * hd, d), "v": r(kv * hd, d), "o": r(d, heads * hd), "gate": r(inter, d), "up": r(inter, d),
            "down": r(d, inter)}.items()})
        if bias:
            w.update({("q_bias", i): r(heads * hd), ("k_bias", i): r(kv * hd), ("v_bias", i): r(kv * hd)})
    return w


def write_checkpoint(directory: Path, fmt: str, cfg: dict, weights: dict) -> Path:
    """config.json, model.safetensors (names of ``fmt``: "llada" or "dream") and the tokenizer files
    (LLaDA: tokenizer.json; Dream: Qwen2's byte-level BPE files named for its remote-code class)."""
    directory.mkdir(parents=True, exist_ok=True)
    column = 0 if fmt == "llada" else 1
    tensors = {}
    for key, value in weights.items():
        role, i = key if isinstance(key, tuple) else (key, None)
        tensors[ROLES[role][column].format(i=i)] = value.to(torch.float32).contiguous()
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg, indent=1))
    if fmt == "llada":
        word_tokenizer(VOCAB).save_pretrained(directory)
    else:
        dream_tokenizer_files(directory)
    return directory


DREAM_WORDS = "one two three four five six seven eight nine ten red green blue cat dog sat on the mat"


def dream_tokenizer_files(directory: Path) -> None:
    """vocab.json + merges.txt (a byte-level BPE, ids < VOCAB) and a tokenizer_config.json naming
    ``DreamTokenizer`` through ``auto_map``, as Dream ships them: loading needs no remote code."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 2, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=sorted(set(DREAM_WORDS + " ")))
    tok.train_from_iterator([DREAM_WORDS] * 20, trainer)
    tok.model.save(str(directory))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "eos_token": "<|endoftext|>", "model_max_length": 256}))


def reference_logits(weights: dict, d: int, layers: int, heads: int, kv: int, theta: float, eps: float,
                     ids: list[int], head_scale: float = 1.0, stale: tuple[list[int], list[int]] | None = None
                     ) -> torch.Tensor:
    """The LLaDA / Dream forward written from their modelling code, float64 (RMSNorm and the rotary
    tables in float32, as there), bidirectional over ``ids``: RMSNorm, q/k/v (+ biases), RoPE
    (rotate-half), grouped attention without a causal mask, SiLU-gated MLP.

    ``stale`` = (old ids, positions): Fast-dLLM's cache semantics written out. In every layer the keys
    and values at those positions are the ones a forward over the old ids computed there (what a cache
    filled then holds); the other positions' are fresh."""
    hd = d // heads
    n = len(ids)

    def rms(x, w):  # normalised in float32, as both modelling codes do
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).double() * w

    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))  # float32, as both codes do
    ang = torch.arange(n, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1).double(), torch.cat([ang.sin()] * 2, -1).double()

    def rope(t):  # (h, n, hd)
        x1, x2 = t[..., : hd // 2], t[..., hd // 2 :]
        return t * cos + torch.cat([-x2, x1], -1) * sin

    def qkv(x, i):
        h = rms(x, weights[("attn_norm", i)])
        q, k, v = (h @ weights[(p, i)].T + weights.get((p + "_bias", i), 0) for p in ("q", "k", "v"))
        q = rope(q.view(n, heads, hd).transpose(0, 1))
        k = rope(k.view(n, kv, hd).transpose(0, 1)).repeat_interleave(heads // kv, 0)
        v = v.view(n, kv, hd).transpose(0, 1).repeat_interleave(heads // kv, 0)
        return q, k, v

    def layer(x, i, q, k, v):
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), -1) @ v  # (h, n, hd)
        x = x + att.transpose(0, 1).reshape(n, d) @ weights[("o", i)].T
        h = rms(x, weights[("mlp_norm", i)])
        return x + (torch.nn.functional.silu(h @ weights[("gate", i)].T) * (h @ weights[("up", i)].T)) @ weights[("down", i)].T

    x = weights["embed"][torch.tensor(ids)]
    old = weights["embed"][torch.tensor(stale[0])] if stale else None
    for i in range(layers):
        q, k, v = qkv(x, i)
        if stale:
            q_old, k_old, v_old = qkv(old, i)
            at = torch.tensor(stale[1], dtype=torch.long)
            k[:, at], v[:, at] = k_old[:, at], v_old[:, at]
            old = layer(old, i, q_old, k_old, v_old)
        x = layer(x, i, q, k, v)
    head = weights.get("head", weights["embed"])
    return rms(x, weights["norm"]) @ head.T * head_scale


def tiny_llada(directory: Path, seed: int = 0, **overrides) -> tuple[Path, dict]:
    cfg = llada_config(**overrides)
    w = random_weights(cfg["d_model"], cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"] or cfg["n_heads"],
                       cfg["mlp_hidden_size"], cfg["embedding_size"], cfg["include_qkv_bias"], cfg["weight_tying"], seed)
    return write_checkpoint(directory, "llada", cfg, w), w


def tiny_dream(directory: Path, seed: int = 0, **overrides) -> tuple[Path, dict]:
    cfg = dream_config(**overrides)
    w = random_weights(cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                       cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"], True,
                       cfg["tie_word_embeddings"], seed)
    return write_checkpoint(directory, "dream", cfg, w), w
