"""Diffusion checkpoints in the real formats load (both runtimes), compute what their modelling code
computes, decode, and fail clearly where they cannot be mapped."""

from __future__ import annotations

import json

import pytest
import torch

import paradec
from dllm_helpers import MASK, reference_logits, tiny_dream, tiny_llada
from paradec.errors import ParadecError

pytestmark = pytest.mark.usefixtures("one_thread_module")
IDS = [5, 9, 3, MASK, MASK, 7, MASK]


def full_forward(model, ids):
    """Logits of one bidirectional forward over ``ids`` (a full-True mask)."""
    return model.target().forward(ids, list(range(len(ids))), torch.ones(len(ids), len(ids), dtype=torch.bool))


def rounded(weights):
    """The weights as the float32 checkpoint stores them (the reference reads the same values)."""
    return {k: v.float().double() for k, v in weights.items()}


@pytest.mark.parametrize("runtime", ["native", "hf"])
@pytest.mark.parametrize("variant", [{}, {"include_qkv_bias": True, "weight_tying": True, "scale_logits": True,
                                          "n_kv_heads": None}])
def test_llada_checkpoint_computes_the_llada_forward(tmp_path, runtime, variant):
    directory, w = tiny_llada(tmp_path / "llada", **variant)
    model = paradec.load(str(directory), dtype="float64", runtime=runtime)
    assert model.diffusion.format == "llada" and model.diffusion.mask_token_id == MASK and not model.diffusion.shifted
    heads = 4
    kv = variant.get("n_kv_heads", 2) or heads
    scale = 32 ** -0.5 if variant.get("scale_logits") else 1.0
    ref = reference_logits(rounded(w), 32, 2, heads, kv, 500000.0, 1e-5, IDS, scale)
    torch.testing.assert_close(full_forward(model, IDS), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("runtime", ["native", "hf"])
def test_dream_checkpoint_computes_the_dream_forward(tmp_path, runtime):
    directory, w = tiny_dream(tmp_path / "dream")
    model = paradec.load(str(directory), dtype="float64", runtime=runtime)
    assert model.diffusion.format == "dream" and model.diffusion.shifted
    assert type(model.tokenizer).__name__ == "Qwen2Tokenizer"  # Dream's remote-code class is never run
    ref = reference_logits(rounded(w), 32, 2, 4, 2, 1000000.0, 1e-6, IDS)
    torch.testing.assert_close(full_forward(model, IDS), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("maker", [tiny_llada, tiny_dream])
def test_checkpoints_decode(tmp_path, maker):
    directory, _ = maker(tmp_path / "m")
    model = paradec.load(str(directory), dtype="float32")
    prompt = [5, 9, 3, 11]
    result = paradec.generate(model, prompt, "plain", max_new_tokens=8)
    assert result.stats.forward_passes == 8 and len(result.token_ids) == 8  # one token per step, no EOS
    assert MASK not in result.token_ids
    fast = paradec.generate(model, prompt, "threshold", max_new_tokens=8, method_options={"threshold": 0.0})
    assert fast.stats.forward_passes == 1  # threshold 0 commits every position at once


def test_fast_dllm_v2_is_block_diffusion(tmp_path):
    directory, _ = tiny_dream(tmp_path / "v2", model_type="Fast_dLLM_Qwen", architectures=["Fast_dLLM_QwenForCausalLM"],
                              bd_size=4)
    model = paradec.load(str(directory), dtype="float64")
    assert model.diffusion.block_size == 4 and model.diffusion.shifted


@pytest.mark.parametrize("change, message", [
    ({"block_type": "sequential"}, "block_type 'sequential'"),
    ({"alibi": True}, "position encoding other than RoPE"),
    ({"attention_layer_norm": True}, "q/k layer norms"),
    ({"include_bias": True}, "biases outside q/k/v"),
    ({"block_group_size": 2}, "grouped blocks"),
    ({"activation_type": "gelu"}, "activation 'gelu'"),
])
def test_unmappable_llada_configs_are_refused(tmp_path, change, message):
    directory, _ = tiny_llada(tmp_path / "bad", **change)
    with pytest.raises(ParadecError, match=message):
        paradec.load(str(directory), dtype="float32")


def test_loading_errors_are_clear(tmp_path):
    directory, _ = tiny_llada(tmp_path / "nomask")
    cfg = json.loads((directory / "config.json").read_text())
    del cfg["mask_token_id"]
    (directory / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ParadecError, match="no mask_token_id"):
        paradec.load(str(directory), dtype="float32")

    directory, _ = tiny_dream(tmp_path / "sw", use_sliding_window=True)
    with pytest.raises(ParadecError, match="sliding-window"):
        paradec.load(str(directory), dtype="float32")

    (tmp_path / "sdar").mkdir()
    (tmp_path / "sdar" / "config.json").write_text(json.dumps({"model_type": "sdar"}))
    with pytest.raises(ParadecError, match="SDAR .* does not map"):
        paradec.load(str(tmp_path / "sdar"), dtype="float32")

    from safetensors.torch import load_file, save_file

    directory, _ = tiny_llada(tmp_path / "missing")
    state = load_file(str(directory / "model.safetensors"))
    del state["model.transformer.blocks.1.ff_out.weight"]
    save_file(state, str(directory / "model.safetensors"))
    for runtime in ("native", "hf"):
        with pytest.raises(ParadecError, match="ff_out"):
            paradec.load(str(directory), dtype="float32", runtime=runtime)


def test_causal_methods_are_refused_for_a_diffusion_model(tmp_path):
    directory, _ = tiny_llada(tmp_path / "m")
    model = paradec.load(str(directory), dtype="float32")
    with pytest.raises(ParadecError, match="unknown method 'ngram' for a diffusion LM"):
        paradec.generate(model, [5, 6], "ngram", max_new_tokens=4)
    with pytest.raises(ParadecError, match="context window"):
        paradec.generate(model, [5, 6], "plain", max_new_tokens=1000)
