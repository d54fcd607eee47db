"""The native runtime: same logits as transformers, exact kernels, bit-identical rows, a sound KV cache."""

from __future__ import annotations

import logging

import pytest
import os
import shutil
import time
from pathlib import Path
import torch
from transformers import MistralConfig, MistralForCausalLM

import paradec
from paradec.errors import ParadecError
from paradec.model import Model
from paradec.runtime import kernels as kernel_build
from paradec.runtime.kernels import runnable_variants
from paradec.runtime.arch import arch_of
from paradec.runtime.kv import KVCache
from paradec.runtime.native import NativeRuntime, choose_ops
from paradec.runtime.ops import NativeOps, TorchOps
from paradec.runtime.target import visible_slots
from paradec.runtime.weights import quantize

from conftest import tiny_model, word_tokenizer

QUANTS = [(torch.float32, "none"), (torch.bfloat16, "none"), (torch.float32, "int8"), (torch.float32, "int4")]


def hf_logits(model: Model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model.hf_model(torch.tensor([ids])).logits[0]


# --- the model function against transformers ---

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float64_matches_transformers_tightly(arch):
    model = tiny_model(arch, seed=2)
    ids = [5, 17, 3, 88, 40, 41, 9]
    target = model.target()
    ours = target.forward(ids, list(range(len(ids))))
    assert torch.allclose(ours, hf_logits(model, ids), atol=1e-10, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float32_kernels_match_transformers(arch):
    model = tiny_model(arch, seed=2, dtype=torch.float32)
    assert isinstance(model.runtime.ops, NativeOps)
    ids = [5, 17, 3, 88, 40, 41, 9]
    ours = model.target().forward(ids, list(range(len(ids))))
    assert torch.allclose(ours, hf_logits(model, ids), atol=2e-5, rtol=0)


@pytest.mark.slow
def test_smollm2_float32_matches_transformers(smollm2):
    ids = smollm2.tokenizer("The quick brown fox jumps over the lazy dog because").input_ids
    ours = smollm2.target().forward(ids, list(range(len(ids))))
    ref = hf_logits(smollm2, ids)
    assert (ours - ref).abs().max() < 1e-3 * ref.abs().max()
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_sliding_window_model_decodes_like_transformers_generate():
    """A window shorter than the text (issue 10, item 4): both runtimes follow transformers."""
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           sliding_window=8, initializer_range=0.05, tie_word_embeddings=False)
    hf = MistralForCausalLM(config).to(torch.float64).eval()
    prompt = [5, 9, 17, 33, 2, 8, 11, 40, 41, 60, 61, 62, 70]
    ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20, min_new_tokens=20)[0, len(prompt):].tolist()
    for runtime in ("native", "hf"):
        model = Model.from_hf(hf, word_tokenizer(), runtime=runtime)
        assert paradec.generate(model, prompt, "plain", max_new_tokens=20).token_ids == ref, runtime
        assert paradec.generate(model, prompt, "ngram", max_new_tokens=20).token_ids == ref, runtime


def test_unsupported_architecture_names_the_hf_runtime():
    from transformers import GPT2Config

    with pytest.raises(ParadecError, match="--runtime hf"):
        arch_of(GPT2Config(n_layer=1, n_embd=32, n_head=4))


# --- formats ---

def test_quantize_round_trips_within_half_a_step():
    torch.manual_seed(3)
    w = torch.randn(8, 64)
    for fmt, steps in (("q8_0", 127), ("q4_1", 15)):
        lin = quantize(w, fmt)
        blocks = w.view(8, 2, 32)
        step = (blocks.amax(-1) - blocks.amin(-1) if fmt == "q4_1" else blocks.abs().amax(-1)) / steps
        err = (lin.dequantize() - w).abs().view(8, 2, 32)
        fp16 = 2e-3 * blocks.abs().amax(-1, keepdim=True)  # the scales are stored in float16
        assert (err <= step.unsqueeze(-1) / 2 + fp16).all(), fmt


# --- row invariance of the whole model: verification == plain decoding, bit for bit ---

@pytest.mark.parametrize("variant", runnable_variants())
@pytest.mark.parametrize("dtype,quant", QUANTS)
def test_block_logits_equal_one_row_steps_bitwise(dtype, quant, variant):
    """The big prize: a k-row block (chain or tree) gives each row the exact bits plain decoding gets, on
    every instruction-set path this machine runs."""
    model = tiny_model("llama", seed=4, dtype=torch.float32, quant=quant)
    if dtype == torch.bfloat16:
        model = Model.from_hf(model.hf_model.to(torch.bfloat16), model.tokenizer)
    model.runtime.ops = NativeOps(kernel_build.kernels(variant))
    prompt, cont = [5, 9, 17, 33, 60], [61, 2, 40, 7, 7, 12]
    step = model.target()
    step.prefill(prompt)
    singles = []
    for t in cont:
        singles.append(step.forward([t], [0])[0])
        step.commit([0])
    chain = model.target()
    chain.prefill(prompt)
    assert torch.equal(chain.forward(cont, list(range(len(cont)))), torch.stack(singles))
    # a tree: the true path 61-2-40 with decoy siblings in between (non-contiguous ancestors)
    tree = model.target()
    tree.prefill(prompt)
    tokens, parents = [61, 80, 2, 81, 40], [-1, -1, 0, 0, 2]
    mask = torch.eye(5, dtype=torch.bool)
    for i, p in enumerate(parents):
        while p >= 0:
            mask[i, p] = True
            p = parents[p]
    logits = tree.forward(tokens, [0, 0, 1, 1, 2], mask)
    assert torch.equal(logits[[0, 2, 4]], torch.stack(singles[:3]))


@pytest.mark.parametrize("dtype,quant", [(torch.bfloat16, "none"), (torch.float32, "int4")])
def test_methods_equal_plain_in_fast_formats(dtype, quant):
    """Bitwise rows make the lossless promise hold in bfloat16 and 4-bit too, not only in float32."""
    model = tiny_model("qwen2", seed=6, dtype=torch.float32, quant=quant)
    if dtype == torch.bfloat16:
        model = Model.from_hf(model.hf_model.to(torch.bfloat16), model.tokenizer)
    for prompt in ([5, 9, 17, 33, 5, 9, 17], [60, 61, 62, 63, 64, 60, 61]):
        plain = paradec.generate(model, prompt, "plain", max_new_tokens=30).token_ids
        for method in ("ngram", "recycling", "lookahead"):
            assert paradec.generate(model, prompt, method, max_new_tokens=30).token_ids == plain, method


# --- the KV cache ---

def test_kv_cache_keeps_rows_moves_only_the_kept_and_grows():
    kv = KVCache(layers=2, kv_heads=1, head_dim=2, dtype=torch.float64, capacity=4)
    kv.reserve(3)
    first = kv.append(3)
    kv.tensor[:, :, :, first : first + 3] = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3, 1)
    kv.keep([0, 2])
    assert kv.length == 2 and kv.pending == 0
    assert kv.tensor[0, 0, 0, :2, 0].tolist() == [1.0, 3.0]
    kv.reserve(5)  # 2 + 5 > 4: doubles to 8, committed rows copied
    assert kv.capacity == 8 and kv.tensor[1, 1, 0, :2, 1].tolist() == [1.0, 3.0]
    kv.append(2)
    kv.crop(1)
    assert (kv.length, kv.pending) == (1, 0)
    with pytest.raises(ValueError):
        kv.append(1)
        kv.keep([0, 0])


def test_visible_slots_splits_a_mask_into_a_prefix_and_extras():
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    prefix, extra = visible_slots(mask, first=10)
    assert prefix.tolist() == [12, 11, 14]
    assert extra.tolist() == [[13], [-1], [-1]]


# --- fallbacks and errors ---

def test_torch_fallback_gives_the_kernels_results():
    model = tiny_model("llama", seed=8, dtype=torch.float32)
    fallback = Model.from_hf(model.hf_model, model.tokenizer)
    fallback.runtime.ops = TorchOps(torch.float32)
    for m in (model, fallback):
        assert isinstance(m.runtime, NativeRuntime)
    a = paradec.generate(model, [5, 9, 17], "plain", max_new_tokens=20).token_ids
    assert paradec.generate(fallback, [5, 9, 17], "plain", max_new_tokens=20).token_ids == a


def test_quantization_needs_the_native_runtime(tmp_path):
    model = tiny_model("llama")
    model.hf_model.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ParadecError, match="needs the native runtime"):
        paradec.load(str(tmp_path), "float32", runtime="hf", quant="int4")
    with pytest.raises(ParadecError, match="unknown runtime"):
        paradec.load(str(tmp_path), "float32", runtime="vllm")
    loaded = paradec.load(str(tmp_path), "float32", quant="int8")
    assert loaded.runtime.weights.layers[0].qkv.fmt == "q8_0"


# --- several sequences in one forward, forks, hidden states ---

@pytest.mark.parametrize("runtime", ["native", "hf"])
def test_forward_many_gives_each_sequence_its_own_results(runtime):
    """Rows of three sequences (different lengths, a tree, a last-only read) in one call: every
    sequence gets exactly what its own forward gives (bitwise on the native runtime)."""
    from paradec.runtime.target import Block, forward_many

    model = tiny_model("llama", seed=9, dtype=torch.float32, runtime=runtime)
    prompts = [[5, 9, 17, 33, 60], [7, 7, 8], [40, 41, 42, 43, 44, 45, 46]]
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    blocks = [Block([61, 2, 40], [0, 1, 2]), Block([3, 4, 5], [0, 1, 1], tree), Block([9, 10], [0, 1], last_only=True)]

    def fresh():
        targets = [model.target() for _ in prompts]
        for t, p in zip(targets, prompts):
            t.prefill(p)
        return targets

    alone = [t.forward(*b) for t, b in zip(fresh(), blocks)]
    together = forward_many(fresh(), blocks)
    for a, b in zip(alone, together):
        assert torch.equal(a, b) if runtime == "native" else torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("runtime", ["native", "hf"])
def test_fork_shares_the_prompt_and_then_diverges(runtime):
    model = tiny_model("qwen2", seed=3, runtime=runtime)
    base = model.target()
    base.prefill([5, 9, 17, 33])
    twin = base.fork()
    a = base.forward([60], [0])
    b = twin.forward([61], [0])
    twin.commit([0])
    assert twin.length == base.length + 1 and base.pending == 1
    ref = model.target()
    ref.prefill([5, 9, 17, 33, 61])
    assert torch.allclose(twin.forward([62], [0]), ref.forward([62], [0]), atol=1e-10)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("runtime", ["native", "hf"])
def test_hidden_states_are_what_the_lm_head_reads(runtime):
    model = tiny_model("llama", seed=2, runtime=runtime)
    ids = [5, 17, 3, 88]
    logits, states = model.target().forward(ids, list(range(4)), hidden=True)
    with torch.inference_mode():
        ref = model.hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        head = model.hf_model.lm_head(states)
    assert states.shape == (4, 32) and torch.allclose(states, ref, atol=1e-10)
    assert torch.allclose(logits, head, atol=1e-10)


@pytest.mark.parametrize("runtime", ["native", "hf"])
def test_prefill_gives_every_prompt_rows_hidden_states(runtime):
    """``prefill(ids, hidden=True)``: prefill's logits and every row's features, as a full forward gives them."""
    model = tiny_model("llama", seed=2, runtime=runtime)
    ids = [5, 17, 3, 88, 41, 7]
    logits, states = model.target().prefill(ids, hidden=True)
    assert torch.equal(logits, model.target().prefill(ids))
    full_logits, full_states = model.target().forward(ids, list(range(len(ids))), hidden=True)
    assert states.shape == (len(ids), 32) and torch.allclose(states, full_states, rtol=0, atol=1e-12)
    assert torch.allclose(logits, full_logits[-1], rtol=0, atol=1e-12)
    early_logits, early_states = model.target(layers=1).prefill(ids, hidden=True)
    assert early_states.shape == (len(ids), 32) and early_logits.shape == (model.vocab_size,)


@pytest.mark.slow
def test_auto_quant_uses_the_gguf_blocks_in_bfloat16_only():
    fast = paradec.load("smollm2-135m")  # the defaults: bfloat16, quant auto: the file's own blocks
    assert fast.quant == "gguf" and fast.runtime.weights.layers[0].qkv.fmt == "q4_1"
    assert paradec.load("smollm2-135m", "float32").quant == "none"


@pytest.mark.slow
def test_gguf_blocks_are_the_files_weights_exactly(smollm2):
    """int4 from the shipped Q4_1 file: every layer's weights equal the float32 model's (which transformers
    dequantized from the same file), q/k rows un-permuted included."""
    q4 = paradec.load("smollm2-135m", "bfloat16", quant="int4")
    for ours, ref in ((q4.runtime.weights.layers[3], smollm2.runtime.weights.layers[3]),):
        for name in ("qkv", "o", "gate_up", "down"):
            assert torch.equal(getattr(ours, name).dequantize(), getattr(ref, name).dequantize()), name
