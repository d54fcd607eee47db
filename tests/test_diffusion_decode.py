"""The denoising loop: caches read what they should, the lossless decoder equals one token per step,
the stream and the stop rules behave as in decode.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import paradec
from dllm_helpers import EOS, MASK, reference_logits, tiny_dream, tiny_llada
from paradec.diffusion.decoders import DECODERS, Decoder, DecoderConfig, Selection, make_decoder
from paradec.diffusion.loop import denoise
from paradec.sampling import SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread_module")
PROMPTS = [[5, 9, 3, 11], [20, 21], [7, 7, 7, 30, 31, 32]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dllm")
    out = {}
    for name, maker, extra in (("llada", tiny_llada, {}), ("dream", tiny_dream, {}),
                               ("block", tiny_dream, {"model_type": "Fast_dLLM_Qwen", "bd_size": 4})):
        directory, _ = maker(root / name, seed=3, **extra)
        out[name] = paradec.load(str(directory), dtype="float32")  # C++ kernels: a row's logits never depend on the others
    return out


def run(model, method, prompt, max_new_tokens=12, trace=None, params=SamplingParams(), **options):
    gen = denoise(model, make_decoder(method, model, **options), prompt, params, max_new_tokens, trace=trace)
    pieces = []
    try:
        while True:
            pieces.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert "".join(pieces) == result.text  # the stream is the text
    return result


def bidirectional(model, tokens):
    """A fresh full forward over the whole sequence: the uncached reading."""
    n = len(tokens)
    return model.target().forward(tokens, list(range(n)), torch.ones(n, n, dtype=torch.bool))


@pytest.mark.parametrize("name", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_first_step_of_every_block_reads_the_uncached_logits(models, name, cache):
    model = models[name]
    shift = 1 if model.diffusion.shifted else 0
    seen = []

    def trace(canvas, b, view, selection):
        if view.step == 0:
            start, end = canvas.block_range(b)
            before = list(canvas.tokens)
            for p in selection.positions:
                before[start + p] = MASK
            full = bidirectional(model, before)[start - shift : end - shift]
            seen.append(torch.equal(view.logits, full))

    run(model, "threshold", PROMPTS[0], max_new_tokens=12, trace=trace, block_length=4, cache=cache, threshold=0.2)
    assert seen == [True, True, True]


def test_later_steps_of_a_cached_block_read_the_cache(models):
    """prefix/dual differ from the uncached reading after a block's first step (they are approximations)."""
    model = models["llada"]
    steps = {}
    for cache in ("none", "prefix", "dual"):
        out = []
        run(model, "plain", PROMPTS[0], max_new_tokens=8, block_length=4, cache=cache,
            trace=lambda canvas, b, view, sel: out.append(view.logits.clone()))
        steps[cache] = out
    assert torch.equal(steps["none"][0], steps["dual"][0])
    assert not torch.equal(steps["none"][1], steps["prefix"][1]) and not torch.equal(steps["prefix"][1], steps["dual"][1])


@pytest.mark.parametrize("runtime", ["native", "hf"])
@pytest.mark.parametrize("maker", [tiny_llada, tiny_dream])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_steps_compute_fast_dllm_stale_cache_exactly(tmp_path, runtime, maker, cache):
    """Every step of a cached block equals the written-out cache semantics (``reference_logits``'s
    ``stale``): keys and values of the cached positions as the block's first forward computed them, the
    rest fresh. So what prefix / dual lose against no cache is the approximation, not the mechanics."""
    directory, w = maker(tmp_path / "m", seed=4)
    model = paradec.load(str(directory), dtype="float64", runtime=runtime)
    w = {k: v.float().double() for k, v in w.items()}  # as the float32 checkpoint stores them
    llada = maker is tiny_llada
    theta, eps = (500000.0, 1e-5) if llada else (1000000.0, 1e-6)
    shift = 1 if model.diffusion.shifted else 0
    first, checked = {}, []

    def trace(canvas, b, view, selection):
        start, end = canvas.block_range(b)
        now = list(canvas.tokens)
        for p in selection.positions:
            now[start + p] = MASK
        if view.step == 0:
            first[b] = now
            return
        lo, n = start - shift, len(now)
        cached = list(range(lo)) + (list(range(end, n)) if cache == "dual" else [])
        ref = reference_logits(w, 32, 2, 4, 2, theta, eps, now, stale=(first[b], cached))
        checked.append(torch.allclose(view.logits, ref[start - shift : end - shift], rtol=0, atol=1e-10))

    run(model, "plain", PROMPTS[0], max_new_tokens=12, trace=trace, block_length=4, cache=cache)
    assert len(checked) >= 3 and all(checked), checked


def test_block_diffusion_reads_blocks_causally(models):
    """Every step of a block-diffusion model equals one forward over prompt + blocks so far with the
    block-causal mask (prompt causal, each block sees itself and everything before it)."""
    model = models["block"]
    P, B = len(PROMPTS[2]), 4
    checked = []

    def trace(canvas, b, view, selection):
        start, end = canvas.block_range(b)
        before = list(canvas.tokens[:end])
        for p in selection.positions:
            before[start + p] = MASK
        mask = torch.ones(end, end, dtype=torch.bool).tril()
        for k in range((end - P) // B):
            s = P + k * B
            mask[s : s + B, s : s + B] = True
        full = model.target().forward(before, list(range(end)), mask)
        # the same computation split differently over cache and pending rows: equal to rounding
        checked.append(torch.allclose(view.logits, full[start - 1 : end - 1], rtol=0, atol=1e-5))

    run(model, "threshold", PROMPTS[2], max_new_tokens=12, trace=trace, threshold=0.3)
    assert checked and all(checked)


@pytest.mark.parametrize("name, cache", [("llada", "none"), ("llada", "dual"), ("dream", "prefix"), ("block", "none")])
def test_lossless_equals_one_token_per_step(models, name, cache):
    model = models[name]
    saved = 0
    for prompt in PROMPTS[1:]:
        base = run(model, "plain", prompt, max_new_tokens=10, block_length=5, cache=cache)
        for draft in (2, 8):
            ours = run(model, "lossless", prompt, max_new_tokens=10, block_length=5, cache=cache, draft=draft)
            assert ours.token_ids == base.token_ids
            assert ours.stats.forward_passes <= base.stats.forward_passes
            saved += base.stats.forward_passes - ours.stats.forward_passes
    assert saved > 0


def test_every_decoder_decodes_every_format(models):
    for name, model in models.items():
        for method in sorted(DECODERS):
            if method == "learned":
                continue  # needs a trained filter (tested with the demo model)
            result = run(model, method, PROMPTS[0], max_new_tokens=6, block_length=3)
            assert len(result.token_ids) == 6 and MASK not in result.token_ids, (name, method)
            canvas = 8 if model.diffusion.block_size else 6  # the block model's blocks are 4 long
            assert 1 <= result.stats.forward_passes <= canvas


def test_fixed_schedule_takes_steps_per_block(models):
    result = run(models["llada"], "low_confidence", PROMPTS[0], max_new_tokens=16, block_length=8, steps=2)
    assert result.stats.forward_passes == 4 and result.stats.mean_accepted_length == 4


@dataclass(frozen=True)
class ScriptConfig(DecoderConfig):
    order: tuple = ()


class Script(Decoder):
    """Commits (position, token) pairs in a fixed order, one per step, whatever the logits say."""

    name = "script"
    Config = ScriptConfig

    def select(self, view):
        masked = {i for i in range(len(view.masked)) if view.masked[i]}
        for p, t in self.config.order:
            if p in masked:
                return Selection([p], [t])
        raise AssertionError("script exhausted")


def test_generation_ends_when_the_decided_prefix_reaches_eos(models):
    model = models["llada"]
    # block 0 = positions 0..3: decide 2 = EOS first, then 3, 1, 0; block 1 is never decoded
    order = ((2, EOS), (3, 40), (1, 11), (0, 10), (4, 50), (5, 50), (6, 50), (7, 50))
    decoder = Script(model, ScriptConfig(block_length=4, order=order))
    s = paradec.stream(model, PROMPTS[0], decoder, max_new_tokens=8)
    assert list(s) == ["w7 w8"]  # one piece: nothing was final before position 0 was decided
    result = s.result
    assert result.token_ids == [10, 11] and result.stats.stop_reason == "eos"
    assert result.stats.forward_passes == 4  # block 1 never ran
    limited = paradec.generate(model, PROMPTS[0], Script(model, ScriptConfig(block_length=4, order=order[3:])),
                               max_new_tokens=1)
    assert limited.token_ids == [10] and limited.stats.stop_reason == "length" and limited.stats.forward_passes == 1


def test_stop_strings_and_interrupts(models):
    model = models["llada"]
    base = paradec.generate(model, PROMPTS[0], "plain", max_new_tokens=8)
    words = base.text.split()
    cut = paradec.generate(model, PROMPTS[0], "plain", max_new_tokens=8, stop=[words[2]])
    assert cut.text == base.text[: base.text.index(words[2])] and cut.stats.stop_reason == "stop"
    calls = []
    s = paradec.stream(model, PROMPTS[0], "plain", max_new_tokens=8, interrupt=lambda: "cancelled" if calls.append(1) or len(calls) > 3 else None)
    assert "".join(s) == s.result.text
    assert s.result.stats.stop_reason == "cancelled" and s.result.stats.forward_passes == 3


def test_sampling_is_seeded(models):
    model = models["dream"]
    kwargs = dict(max_new_tokens=8, temperature=1.0, seed=7, method_options={"threshold": 0.5})
    a = paradec.generate(model, PROMPTS[1], "threshold", **kwargs)
    b = paradec.generate(model, PROMPTS[1], "threshold", **kwargs)
    assert a.token_ids == b.token_ids
    with pytest.raises(paradec.ParadecError, match="greedy"):
        paradec.generate(model, PROMPTS[1], "lossless", max_new_tokens=8, temperature=1.0)


def test_bad_options_are_user_errors(models):
    model = models["llada"]
    for options, message in (({"cache": "full"}, "cache must be one of"), ({"block_length": 0}, "block_length"),
                             ({"threshold": 2}, "threshold"), ({"steps": 1}, "no option")):
        with pytest.raises(paradec.ParadecError, match=message):
            make_decoder("threshold", model, **options)
