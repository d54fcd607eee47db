"""The Python API end to end: plain decoding, streaming, stop conditions, errors."""

from __future__ import annotations

import pytest
import torch

import paradec
from paradec import ContextOverflowError, ParadecError

from conftest import FIXED_COSTS, OracleDrafter, tiny_model


def test_real_model_plain_equals_transformers_generate(smollm2):
    prompt = paradec.encode_prompt(smollm2, "Name three primary colours.", chat=True)
    ours = paradec.generate(smollm2, prompt, "plain", max_new_tokens=24)
    ref = smollm2.hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24,
                                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    ref_ids = ref[0, len(prompt):].tolist()
    ref_ids = [t for t in ref_ids if t not in smollm2.eos_token_ids]  # ours stops before EOS
    assert ours.token_ids == ref_ids
    assert ours.stats.new_tokens == len(ours.token_ids) > 0


def test_streamed_pieces_join_to_the_text(smollm2):
    """With the default method, auto (on a curve given by hand: tests never time the real model)."""
    s = paradec.stream(smollm2, "Écris une phrase en français avec des accents: é, è, à, ç.", chat=True, max_new_tokens=30,
                       method_options={"costs": FIXED_COSTS})
    pieces = list(s)
    assert "".join(pieces) == s.result.text
    assert "\ufffd" not in "".join(pieces)
    assert s.result.text == smollm2.tokenizer.decode(s.result.token_ids, skip_special_tokens=True)
    assert s.result.stats.method == "auto"


def test_stop_string_cuts_text_and_tokens(tiny_llama):
    full = paradec.generate(tiny_llama, [4, 5, 6], "plain", max_new_tokens=12)
    words = full.text.split()
    stop = words[3]
    cut = paradec.generate(tiny_llama, [4, 5, 6], max_new_tokens=12, stop=[stop])
    assert cut.stats.stop_reason == "stop"
    assert stop not in cut.text and full.text.startswith(cut.text)
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < len(full.token_ids)


def test_eos_stops_generation():
    free = paradec.generate(tiny_model("llama", seed=2), [4, 5], "plain", max_new_tokens=10)
    eos = free.token_ids[4]
    model = tiny_model("llama", seed=2, eos=eos)
    r = paradec.generate(model, [4, 5], max_new_tokens=10)
    assert r.token_ids == free.token_ids[: free.token_ids.index(eos)] and r.stats.stop_reason == "eos"


def test_max_new_tokens_and_stats(tiny_llama):
    r = paradec.generate(tiny_llama, [4, 5, 6], "plain", max_new_tokens=7)
    s = r.stats
    assert len(r.token_ids) == s.new_tokens == 7 and s.stop_reason == "length"
    assert s.forward_passes == 6 and s.mean_accepted_length == 1.0 and s.prompt_tokens == 3
    assert s.methods == {"plain": 6}
    assert set(r.to_dict()) == {"text", "token_ids", "stats"}


def test_drafts_are_capped_by_max_new_tokens_and_stats_count_delivered_tokens(tiny_llama):
    """Issue 10 item 5: with 3 tokens wanted, a drafter proposing 8 got all 8 verified and the stats
    said 8 accepted tokens, 9.0 tokens per forward."""
    truth = paradec.generate(tiny_llama, [4, 5, 6], "plain", max_new_tokens=12).token_ids
    r = paradec.generate(tiny_llama, [4, 5, 6], OracleDrafter(tiny_llama, truth, 3, k=8), max_new_tokens=3)
    s = r.stats
    assert r.token_ids == truth[:3] and s.new_tokens == 3 and s.stop_reason == "length"
    # the prefill gives token 1; one step drafts 1 node (2 tokens still wanted) and delivers it + the bonus
    assert (s.forward_passes, s.draft_nodes, s.accepted_tokens, s.mean_accepted_length) == (1, 1, 1, 2.0)
    assert s.drafted == s.accepted == [1]


@pytest.mark.parametrize("ending", ["length", "eos", "stop"])
def test_stats_match_the_delivered_tokens_however_generation_ends(ending):
    """A step that ends the generation inside its accepted path counts only what the caller got."""
    model = tiny_model("llama", seed=1)
    prompt = [9, 10]
    truth = paradec.generate(model, prompt, "plain", max_new_tokens=30).token_ids
    # token 0 comes from the prefill, 1-9 from the first step (8 accepted + bonus), 10-18 from the
    # second; generation ends at token 13, inside the second step's accepted path
    kwargs = {"max_new_tokens": 30}
    if ending == "eos":
        assert truth[13] not in truth[:13]
        model = tiny_model("llama", seed=1, eos=truth[13])
    elif ending == "stop":
        kwargs["stop"] = [model.tokenizer.decode(truth[12:14])]
    else:
        kwargs["max_new_tokens"] = 14
    r = paradec.generate(model, prompt, OracleDrafter(model, truth, len(prompt), k=8), **kwargs)
    s = r.stats
    assert s.stop_reason == ending and s.new_tokens == len(r.token_ids) == (13 if ending == "eos" else 14)
    assert r.token_ids == truth[: s.new_tokens] and s.forward_passes == 2
    assert sum(s.accepted) == s.accepted_tokens and s.accepted_tokens <= s.draft_nodes
    bonus_delivered = ending == "length"  # EOS is not delivered; the stop string cut the bonus here
    assert s.new_tokens == 1 + s.accepted_tokens + s.forward_passes - (not bonus_delivered)


def test_generation_stops_at_the_context_window():
    model = tiny_model("llama", max_positions=12)
    r = paradec.generate(model, list(range(4, 12)), max_new_tokens=50)
    assert r.stats.stop_reason == "context" and 8 + len(r.token_ids) <= 13


def test_prompt_longer_than_context_is_refused_before_generating():
    model = tiny_model("llama", max_positions=12)
    with pytest.raises(ContextOverflowError, match="12 tokens"):
        paradec.stream(model, list(range(4, 20)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"method": "nope"}, "unknown method"),
        ({"method_options": {"bogus": 1}}, "no option"),
    ],
)
def test_bad_arguments_are_clear_errors(tiny_llama, kwargs, match):
    with pytest.raises(ParadecError, match=match):
        paradec.stream(tiny_llama, "w1 w2", **kwargs)


def test_seeded_sampling_is_reproducible(tiny_llama):
    """Also with the default method: auto's choices depend on the text and the cached curve, never on timing."""
    for options in ({}, {"costs": {"16": 1.0}}):
        a = paradec.generate(tiny_llama, [4, 5], temperature=1.0, seed=11, max_new_tokens=10, method_options=options)
        b = paradec.generate(tiny_llama, [4, 5], temperature=1.0, seed=11, max_new_tokens=10, method_options=options)
        assert a.token_ids == b.token_ids and a.stats.methods == b.stats.methods


def test_a_temperature_that_underflows_samples_the_argmax(tiny_llama):
    """Review II item 1: logits / 1e-320 overflowed to inf and softmax gave NaN ("probability tensor
    contains either inf, nan ..."). Such a temperature now samples its limit, the most probable token."""
    from paradec.sampling import SamplingParams, target_probs

    logits = torch.tensor([[3.0, 30.0, -2.0, 29.999], [-1.0, -1.0, -5.0, -9.0]], dtype=torch.float64)
    probs = target_probs(logits, SamplingParams(temperature=1e-320))
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]], dtype=torch.float64))
    greedy = paradec.generate(tiny_llama, [4, 5], "plain", max_new_tokens=12)
    for method in ("plain", "ngram", "jacobi"):
        tiny_t = paradec.generate(tiny_llama, [4, 5], method, max_new_tokens=12, temperature=1e-320, seed=3)
        assert tiny_t.token_ids == greedy.token_ids, method


@pytest.mark.parametrize("bad", [-5, -1, 96, 10**12])
def test_token_ids_outside_the_vocabulary_are_refused_naming_them(tiny_llama, bad):
    """Review II item 9: an id list is read as rows of the embedding table; 10**12 crashed the process
    (SIGSEGV), -5 and vocab_size returned text read from outside it. Every API path that takes ids
    refuses them with a ParadecError naming the id and the vocabulary size."""
    from paradec.decode import Sequence
    from paradec.drafters import make_drafter
    from paradec.parallel.batch import Batch
    from paradec.sampling import SamplingParams

    assert tiny_llama.vocab_size == 96
    prompt = [1, bad]
    calls = [
        lambda: paradec.generate(tiny_llama, prompt, "plain", max_new_tokens=4),
        lambda: paradec.stream(tiny_llama, prompt, "ngram", max_new_tokens=4),
        lambda: paradec.prepare(tiny_llama, prompt, "plain", max_new_tokens=4),
        lambda: paradec.encode_prompt(tiny_llama, prompt),
        lambda: paradec.generate_n(tiny_llama, prompt, n=2, method="plain", max_new_tokens=4),
        lambda: Batch().add(Sequence(tiny_llama, make_drafter("plain", tiny_llama), prompt, SamplingParams(), 4)),
    ]
    for call in calls:
        with pytest.raises(ParadecError, match=rf"token id {bad} .*vocabulary size 96"):
            call()
    assert paradec.generate(tiny_llama, [1, 95], "plain", max_new_tokens=2).token_ids  # the last id is fine
