"""Diffusion LM checkpoints read without their remote code: config and weight names mapped onto a
transformers Llama / Qwen2 layout, so both runtimes run them (with a bidirectional mask).

Formats (detected from ``config.json``'s ``model_type`` / ``architectures``):

- ``llada`` (LLaDA, and the embedded demo): OLMo-style config (``d_model``, ``n_layers``, ...) and
  weight names (``model.transformer.blocks.{i}.q_proj``, ``attn_out``, ``ff_proj``/``up_proj``/``ff_out``);
  logits at position i predict the token at i (not shifted); ``mask_token_id`` from the config.
- ``dream`` (Dream, DiffuCoder): Qwen2 config and weight names, logits shifted like an AR model's
  (position i predicts token i + 1); ``mask_token_id`` from the config.
- ``fast_dllm_v2`` (Fast-dLLM v2): Qwen2 names, shifted, *block diffusion*: causal between blocks of
  ``bd_size`` tokens, bidirectional inside one. Mapped from its published conversion scripts; no real
  checkpoint was available to check it against.

Anything these mappings cannot express (other block types, ALiBi, q/k norms, biases outside q/k/v,
grouped blocks, other activations) is refused with the reason, never approximated.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import ParadecError

REFUSED_TYPES = {  # diffusion formats we know of and do not map
    "sdar": "SDAR (block diffusion with its own modelling code)",
    "llada2_moe": "LLaDA 2 (mixture of experts)", "llada_moe": "LLaDA-MoE (mixture of experts)",
    "mmada": "MMaDA (multimodal)",
}


@dataclass(frozen=True)
class DiffusionSpec:
    """What the decoding loop needs to know about a diffusion LM.

    mask_token_id: the [MASK] id every undecided position holds
    shifted:       logits of row i predict position i + 1 (Dream, Fast-dLLM v2) instead of i (LLaDA)
    block_size:    None = bidirectional over the whole sequence; n = block diffusion (each block of n
                   generated tokens sees itself and everything before it, never what follows)
    """

    format: str
    mask_token_id: int
    shifted: bool = False
    block_size: int | None = None


@dataclass(frozen=True)
class Format:
    """One checkpoint format: how its config becomes a transformers config, and where each
    transformers weight lives in its files (``checkpoint_name``)."""

    name: str
    family: Callable[[dict], str]  # config -> "llama" | "qwen2"
    hf_config: Callable[[dict], dict]  # config -> keyword arguments of the transformers config class
    checkpoint_name: Callable[[str], str]  # transformers weight name -> name in the checkpoint
    spec: Callable[[dict, Path], DiffusionSpec]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ParadecError(f"cannot read '{path}': {exc}") from exc


def _require(cfg: dict, ok: bool, why: str) -> None:
    if not ok:
        raise ParadecError(f"cannot map this {cfg.get('model_type')} checkpoint onto a Llama/Qwen2 layout: {why}")


# --- LLaDA -------------------------------------------------------------------------------------

LLADA_LAYER = {  # transformers name (after "model.layers.{i}.") -> LLaDA name (after "model.transformer.blocks.{i}.")
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm",
    "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj", "mlp.down_proj": "ff_out",
}
LLADA_TOP = {"model.embed_tokens": "model.transformer.wte", "model.norm": "model.transformer.ln_f",
             "lm_head": "model.transformer.ff_out"}


def llada_name(hf: str) -> str:
    """``model.layers.3.mlp.gate_proj.weight`` → ``model.transformer.blocks.3.ff_proj.weight``."""
    stem, kind = hf.rsplit(".", 1)
    if stem in LLADA_TOP:
        return f"{LLADA_TOP[stem]}.{kind}"
    _, _, i, rest = stem.split(".", 3)
    return f"model.transformer.blocks.{i}.{LLADA_LAYER[rest]}.{kind}"


def _llada_check(cfg: dict) -> None:
    _require(cfg, cfg.get("block_type", "llama") == "llama", f"block_type {cfg.get('block_type')!r} (only 'llama' blocks)")
    _require(cfg, cfg.get("activation_type", "silu") == "silu", f"activation {cfg.get('activation_type')!r}")
    _require(cfg, cfg.get("layer_norm_type", "rms") == "rms", f"layer norm {cfg.get('layer_norm_type')!r}")
    _require(cfg, cfg.get("rope", True) and not cfg.get("alibi", False), "position encoding other than RoPE")
    _require(cfg, not cfg.get("attention_layer_norm", False), "q/k layer norms")
    _require(cfg, not cfg.get("include_bias", False) and not cfg.get("bias_for_layer_norm", False),
             "biases outside q/k/v")
    _require(cfg, cfg.get("layer_norm_with_affine", True), "layer norms without weights")
    _require(cfg, cfg.get("block_group_size", 1) == 1, "grouped blocks (block_group_size > 1)")
    _require(cfg, not cfg.get("input_emb_norm", False), "scaled input embeddings")
    _require(cfg, "d_model" in cfg and "n_layers" in cfg and "n_heads" in cfg, "no d_model / n_layers / n_heads")


def llada_family(cfg: dict) -> str:
    return "qwen2" if cfg.get("include_qkv_bias", False) else "llama"  # Qwen2 = Llama + q/k/v biases


def llada_hf_config(cfg: dict) -> dict:
    _llada_check(cfg)
    heads = cfg["n_heads"]
    kv = 1 if cfg.get("multi_query_attention") else (cfg.get("n_kv_heads") or heads)
    return dict(
        vocab_size=cfg.get("embedding_size") or cfg["vocab_size"],  # LM-head rows (may exceed the tokenizer's)
        hidden_size=cfg["d_model"], num_hidden_layers=cfg["n_layers"], num_attention_heads=heads,
        num_key_value_heads=kv, intermediate_size=cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * cfg["d_model"],
        max_position_embeddings=cfg.get("max_sequence_length", 4096), rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        rope_theta=cfg.get("rope_theta", 10000.0), tie_word_embeddings=bool(cfg.get("weight_tying", False)),
        hidden_act="silu",
    )


def llada_spec(cfg: dict, directory: Path) -> DiffusionSpec:
    return DiffusionSpec("llada", _mask_id(cfg, directory), shifted=False)


# --- Dream / Fast-dLLM v2 (Qwen2 names) ---------------------------------------------------------

QWEN2_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
              "rope_parameters", "tie_word_embeddings", "hidden_act", "head_dim", "attention_dropout")


def qwen2_hf_config(cfg: dict) -> dict:
    _require(cfg, cfg.get("hidden_act", "silu") == "silu", f"activation {cfg.get('hidden_act')!r}")
    _require(cfg, not cfg.get("use_sliding_window", False), "sliding-window attention")
    _require(cfg, not cfg.get("use_mrope", False), "multimodal rotary embeddings (mrope)")
    scaling = cfg.get("rope_scaling")
    _require(cfg, not scaling or scaling.get("rope_type", scaling.get("type")) == "default", f"rope scaling {scaling}")
    out = {k: cfg[k] for k in QWEN2_KEYS if cfg.get(k) is not None}
    out.pop("rope_scaling", None)
    return out


def dream_spec(cfg: dict, directory: Path) -> DiffusionSpec:
    return DiffusionSpec("dream", _mask_id(cfg, directory), shifted=True)


def fast_dllm_v2_spec(cfg: dict, directory: Path) -> DiffusionSpec:
    size = cfg.get("bd_size")
    _require(cfg, isinstance(size, int) and size > 0, "no block size (bd_size) in config.json")
    return DiffusionSpec("fast_dllm_v2", _mask_id(cfg, directory, "|<MASK>|"), shifted=True, block_size=size)


def _mask_id(cfg: dict, directory: Path, token: str | None = None) -> int:
    """``mask_token_id`` from config.json (or, failing that, the id of ``token`` in tokenizer.json)."""
    if isinstance(cfg.get("mask_token_id"), int):
        return cfg["mask_token_id"]
    tok = directory / "tokenizer.json"
    if token and tok.is_file():
        for added in read_json(tok).get("added_tokens", []):
            if added.get("content") == token:
                return int(added["id"])
    raise ParadecError(f"'{directory}': config.json has no mask_token_id; a diffusion LM needs its [MASK] token id")


FORMATS: dict[str, Format] = {
    "llada": Format("llada", llada_family, llada_hf_config, llada_name, llada_spec),
    "dream": Format("dream", lambda cfg: "qwen2", qwen2_hf_config, lambda n: n, dream_spec),
    "fast_dllm_v2": Format("fast_dllm_v2", lambda cfg: "qwen2", qwen2_hf_config, lambda n: n, fast_dllm_v2_spec),
}


def detect(directory: Path) -> str | None:
    """The diffusion format of a model directory, None for any other model; known but unmapped
    diffusion formats are refused here."""
    path = directory / "config.json"
    if not path.is_file():
        return None
    cfg = read_json(path)
    kind = str(cfg.get("model_type", "")).lower()
    archs = [a.lower() for a in cfg.get("architectures") or []]
    by_type = {"llada": "llada", "dream": "dream", "fast_dllm_qwen": "fast_dllm_v2"}
    by_arch = {"lladamodellm": "llada", "dreammodel": "dream", "fast_dllm_qwenforcausallm": "fast_dllm_v2"}
    if kind in by_type:
        return by_type[kind]
    if kind not in REFUSED_TYPES and any(a in by_arch for a in archs):
        return next(by_arch[a] for a in archs if a in by_arch)
    if kind in REFUSED_TYPES:
        raise ParadecError(f"'{directory}' is a {REFUSED_TYPES[kind]} checkpoint, a diffusion format paradec does not "
                           f"map (supported: LLaDA, Dream, Fast-dLLM v2)")
    return None


# --- loading --------------------------------------------------------------------------------------

class CheckpointSource:
    """Tensors by transformers name, read from the checkpoint's safetensors under its own names.

    ``scale_logits`` (LLaDA's ``scale_logits``: logits / sqrt(d_model)) is folded into the LM head, which
    is then never tied to the embeddings.
    """

    def __init__(self, files, fmt: Format, head_scale: float | None = None):
        self.files, self.fmt, self.head_scale = files, fmt, head_scale

    def has(self, name: str) -> bool:
        if name == "lm_head.weight" and self.head_scale is not None:
            return True
        return self.files.has(self.fmt.checkpoint_name(name))

    def shape(self, name: str) -> list[int]:
        return list(self.get(name).shape)

    def get(self, name: str) -> torch.Tensor:
        if name == "lm_head.weight" and self.head_scale is not None:
            source = self.fmt.checkpoint_name(name)
            if not self.files.has(source):  # tied: the head is the embedding table
                source = self.fmt.checkpoint_name("model.embed_tokens.weight")
            return self.files.get(source).double() * self.head_scale  # rounded once, to the weights dtype
        return self.files.get(self.fmt.checkpoint_name(name))


def transformers_config(fmt: Format, cfg: dict, dtype: torch.dtype):
    """The transformers Llama/Qwen2 config this checkpoint's weights fit."""
    from transformers import LlamaConfig, Qwen2Config

    kwargs = fmt.hf_config(cfg)
    if fmt.name == "llada" and cfg.get("scale_logits", False):
        kwargs["tie_word_embeddings"] = False
    cls = LlamaConfig if fmt.family(cfg) == "llama" else Qwen2Config
    config = cls(**kwargs, bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
                 pad_token_id=cfg.get("pad_token_id"))
    config.dtype = dtype
    return config


def load(directory: Path, dtype: torch.dtype, runtime: str, quant: str, name: str):
    """A diffusion checkpoint as a ``Model`` whose ``diffusion`` field holds its ``DiffusionSpec``."""
    from ..model import Model
    from ..runtime.loading import Layout, SafetensorsSource, load_weights, resolve_quant

    quant = resolve_quant(quant, dtype, None)  # auto: float weights (these checkpoints are safetensors)
    fmt = FORMATS[detect(directory)]
    cfg = read_json(directory / "config.json")
    config = transformers_config(fmt, cfg, dtype)
    scale = cfg["d_model"] ** -0.5 if fmt.name == "llada" and cfg.get("scale_logits", False) else None
    source = CheckpointSource(SafetensorsSource(directory), fmt, scale)
    if runtime == "native":
        from ..runtime.arch import arch_of
        from ..runtime.native import NativeRuntime, choose_ops

        layout = Layout.of(dtype, quant)
        rt = NativeRuntime(load_weights(source, arch_of(config), layout), choose_ops(layout.act))
        hf = None
    elif runtime == "hf":
        if quant != "none":
            raise ParadecError(f"--quant {quant} needs the native runtime (--runtime native)")
        from ..runtime.hf import HFRuntime

        hf = build_hf(config, source, dtype)
        rt = HFRuntime(hf)
    else:
        raise ParadecError(f"unknown runtime '{runtime}'")
    eos = cfg.get("eos_token_id")
    return Model(name=name, tokenizer=load_tokenizer(directory), runtime=rt, dtype=dtype, quant=quant,
                 path=directory, directory=directory, eos_ids=(eos,) if isinstance(eos, int) else tuple(eos or ()),
                 _hf=hf, diffusion=fmt.spec(cfg, directory))


def build_hf(config, source: CheckpointSource, dtype: torch.dtype):
    """The transformers model with the checkpoint's weights (for ``--runtime hf``)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {}
    for key in model.state_dict():
        if model.config.tie_word_embeddings and key == "lm_head.weight":
            continue
        if not source.has(key):
            raise ParadecError(f"the checkpoint has no tensor for '{key}' (looked for '{source.fmt.checkpoint_name(key)}')")
        state[key] = source.get(key).to(dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    rotary = model.model.rotary_emb  # its buffers were created on the meta device: build it again for real
    model.model.rotary_emb = type(rotary)(model.config)
    return model.eval()


def load_tokenizer(directory: Path):
    """The tokenizer, without remote code: transformers' own class when the files name one it knows;
    for a custom class (Dream's ``DreamTokenizer``, Qwen2's byte-level BPE) Qwen2's tokenizer over the
    same ``vocab.json`` / ``merges.txt``."""
    from transformers import AutoTokenizer, Qwen2Tokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it reads config.json too and warns that it does not know the model type
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
            except Exception as exc:  # a tokenizer class that needs remote code
                if not ((directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()):
                    raise ParadecError(f"cannot load the tokenizer in '{directory}' without its remote code: "
                                       f"{str(exc).splitlines()[0]}") from exc
                return Qwen2Tokenizer.from_pretrained(directory, local_files_only=True)
    finally:
        hf_logging.set_verbosity(level)
