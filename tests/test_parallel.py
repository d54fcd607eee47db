"""Several sequences in one forward (``paradec.parallel``): each decodes exactly as it would alone.

Batched and branched decoding against solo decoding with every drafter on both runtimes (float64),
bit for bit on the native runtime's float32 kernels (seeded sampling too); ragged acceptance and
the per-sequence cache invariant after every step; joining and leaving between steps; shared
prefixes read once; n samples, First Finish Search, extraction and reasoning branches; the real
SmolLM2 in float32 (slow).
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import paradec
from paradec.decode import Sequence
from paradec.drafters import METHODS, make_drafter
from paradec.errors import ParadecError
from paradec.parallel.batch import Batch, common_prefix, decode_together
from paradec.parallel.branches import extract, first_finish, generate_n, reason
from paradec.sampling import SamplingParams

from conftest import RUNTIMES, OracleDrafter, tiny_model
from test_exactness import NoisyOracleDrafter

pytestmark = pytest.mark.usefixtures("one_thread_module")

PROMPTS = [[5, 9, 17, 5, 9, 17, 5], [40, 41, 42], [7] * 6, [3, 4, 5, 6, 7, 8, 9, 10], [88]]


def options(method: str, draft) -> dict:
    return {"draft": draft} if method in ("draft", "pearl") else {}


def solo(model, prompt, method, n, draft=None, **kw):
    return paradec.generate(model, prompt, method, max_new_tokens=n, method_options=options(method, draft), **kw)


def seq(model, prompt, method, n, draft=None, params=SamplingParams(), **kw) -> Sequence:
    return Sequence(model, make_drafter(method, model, **options(method, draft)), prompt, params, n, **kw)


@pytest.fixture(scope="module", params=RUNTIMES)
def models(request):
    """A target and a draft model of the same vocabulary, on one runtime (float64)."""
    return tiny_model("llama", seed=3, runtime=request.param), tiny_model("llama", seed=4, layers=1,
                                                                           runtime=request.param)


def test_a_batch_of_every_method_equals_each_sequence_alone(models):
    """One batch holds a sequence of every registered method (each with its own drafter) on prompts
    of different lengths: every one gets the tokens and stats it gets alone. (Methods that read the
    target's hidden states are refused by batches: test_trained_heads.py.)"""
    model, draft = models
    methods = sorted(m for m, cls in METHODS.items() if not cls.reads_features)
    jobs = [(m, PROMPTS[i % len(PROMPTS)]) for i, m in enumerate(methods)]
    together = decode_together([seq(model, p, m, 24, draft) for m, p in jobs])
    for (m, p), r in zip(jobs, together):
        alone = solo(model, p, m, 24, draft)
        assert r.token_ids == alone.token_ids, m
        s, a = r.stats, alone.stats
        assert (s.method, s.forward_passes, s.accepted_tokens, s.drafted, s.stop_reason) == (
            a.method, a.forward_passes, a.accepted_tokens, a.drafted, a.stop_reason), m


@pytest.mark.parametrize("method", ["plain", "ngram", "lookahead", "draft"])
def test_seeded_sampling_in_a_batch_equals_sampling_alone(models, method):
    model, draft = models
    params = [SamplingParams(temperature=1.0, seed=s) for s in range(4)]
    together = decode_together([seq(model, PROMPTS[i], method, 16, draft, p) for i, p in enumerate(params)])
    for i, (p, r) in enumerate(zip(params, together)):
        assert r.token_ids == solo(model, PROMPTS[i], method, 16, draft, temperature=1.0, seed=p.seed).token_ids


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float32_batches_are_bit_identical_to_solo_on_the_native_runtime(arch):
    """Rows do not depend on their neighbours, so the float32 kernels give each sequence the bits it
    gets alone: greedy and seeded sampling, drafts or not."""
    model = tiny_model(arch, seed=6, dtype=torch.float32)
    jobs = [("recycling", SamplingParams()), ("ngram", SamplingParams()), ("plain", SamplingParams(0.9, seed=1)),
            ("jacobi", SamplingParams(1.0, seed=2)), ("lookahead", SamplingParams())]
    together = decode_together([seq(model, PROMPTS[i], m, 40, params=p) for i, (m, p) in enumerate(jobs)])
    for i, ((m, p), r) in enumerate(zip(jobs, together)):
        alone = solo(model, PROMPTS[i], m, 40, temperature=p.temperature, seed=p.seed)
        assert r.token_ids == alone.token_ids and r.stats.forward_passes == alone.stats.forward_passes, m


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ragged_acceptance_keeps_every_cache_holding_exactly_its_committed_tokens(runtime):
    """Drafts accepted fully, partly or not at all in the same step; after every step each target holds
    its committed tokens but the root, nothing pending, and reading the root from that cache gives the
    logits a fresh prefill of the committed tokens gives (invariant 3)."""
    model = tiny_model("llama", seed=3, runtime=runtime)
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 96) for _ in range(rng.randrange(1, 10))] for _ in range(4)]
    truths = [paradec.generate(model, p, "plain", max_new_tokens=30).token_ids for p in prompts]
    drafters = [OracleDrafter(model, truths[0], len(prompts[0]), k=6),
                NoisyOracleDrafter(model, truths[1], len(prompts[1]), seed=0),
                NoisyOracleDrafter(model, truths[2], len(prompts[2]), seed=1, p_right=0.3),
                make_drafter("plain", model)]
    seqs = [Sequence(model, d, p, SamplingParams(), 30) for d, p in zip(drafters, prompts)]
    batch = Batch()
    for s in seqs:
        batch.add(s)
    accepted_per_step = []
    while len(batch):
        batch.step()
        accepted_per_step.append({s.last_step[1] for s in batch.live})
        for s in batch.live:
            t = s.target
            assert t.length == len(s.tokens) - 1 and t.pending == 0
            cached = t.forward([s.tokens[-1]], [0])[0]
            t.commit([])
            fresh = model.target().prefill(s.tokens)
            assert torch.allclose(cached, fresh, atol=1e-9, rtol=0) if runtime == "hf" else torch.equal(cached, fresh)
    assert any(len(a) > 1 for a in accepted_per_step)  # acceptance really was ragged
    for s, truth in zip(seqs, truths):
        assert s.result.token_ids == truth


def test_sequences_join_and_leave_between_steps_without_disturbing_the_others(tiny_llama):
    """Continuous batching: sequences arrive at different steps and one is interrupted; the others'
    outputs are those of solo runs."""
    model = tiny_llama
    stop_now = {"flag": False}
    quitter = seq(model, [60, 61], "ngram", 40, interrupt=lambda: "cancelled" if stop_now["flag"] else None)
    first = [seq(model, PROMPTS[0], "ngram", 30), quitter]
    later = [seq(model, PROMPTS[1], "recycling", 20), seq(model, PROMPTS[3], "plain", 12)]
    batch = Batch()
    batch.add(first[0])
    batch.add(first[1])
    steps = 0
    while len(batch):
        if steps == 3:
            batch.add(later[0])
        if steps == 5:
            batch.add(later[1])
            stop_now["flag"] = True
        out = batch.step()
        assert not out.failed
        steps += 1
    assert quitter.result.stats.stop_reason == "cancelled" and len(quitter.result.token_ids) < 40
    assert quitter.result.token_ids == solo(model, [60, 61], "ngram", 40).token_ids[: len(quitter.result.token_ids)]
    for s, (p, m, n) in zip([first[0], *later], [(PROMPTS[0], "ngram", 30), (PROMPTS[1], "recycling", 20),
                                                   (PROMPTS[3], "plain", 12)]):
        assert s.result.token_ids == solo(model, p, m, n).token_ids


def test_a_failing_drafter_ends_its_own_sequence_only(tiny_llama):
    class Broken(OracleDrafter):
        def propose(self, ctx):
            if len(ctx.tokens) > len(ctx.tokens[: ctx.prompt_length]) + 3:
                raise RuntimeError("drafter fell over")
            return super().propose(ctx)

    bad = Sequence(tiny_llama, Broken(tiny_llama, [], 2), [4, 5], SamplingParams(), 20)
    good = seq(tiny_llama, [6, 7], "ngram", 20)
    batch = Batch()
    batch.add(bad)
    batch.add(good)
    failed = []
    while len(batch):
        failed += batch.step().failed
    assert [(s, str(e)) for s, e in failed] == [(bad, "drafter fell over")]
    assert good.result.token_ids == solo(tiny_llama, [6, 7], "ngram", 20).token_ids


def test_branches_read_their_shared_prefix_once(tiny_llama):
    model = tiny_llama
    prefix = [11, 12, 13, 14, 15, 16, 17, 18]
    prompts = [prefix, prefix + [20], prefix + [21, 22], prefix]
    assert common_prefix(prompts) == len(prefix) and common_prefix([[1, 2], [3]]) == 0
    seqs = [seq(model, p, "ngram", 10) for p in prompts]
    batch = Batch()
    batch.add(*seqs)
    while len(batch):
        batch.step()
    # the prefix once, then the rests (1 and 2 rows); then decoding steps
    prompt_rows = len(prefix) + 1 + 2
    decode_rows = sum(s.result.stats.forward_passes + s.result.stats.draft_nodes for s in seqs)
    assert batch.counters.rows == prompt_rows + decode_rows
    for s, p in zip(seqs, prompts):
        assert s.result.token_ids == solo(model, p, "ngram", 10).token_ids


def test_a_prompt_that_does_not_fit_is_refused_when_it_joins():
    model = tiny_model("llama", max_positions=12)
    with pytest.raises(paradec.ContextOverflowError):
        Batch().add(Sequence(model, make_drafter("plain", model), list(range(3, 20)), SamplingParams(), 4))


# ---------- n samples, First Finish Search, extraction, reasoning branches ----------


def test_n_samples_are_the_seeded_single_samples(tiny_llama):
    rs = generate_n(tiny_llama, [5, 9, 17], n=3, method="ngram", temperature=1.0, seed=4, max_new_tokens=10)
    for i, r in enumerate(rs):
        assert r.token_ids == solo(tiny_llama, [5, 9, 17], "ngram", 10, temperature=1.0, seed=4 + i).token_ids
    assert len({tuple(r.token_ids) for r in rs}) > 1
    greedy = generate_n(tiny_llama, "w5 w6", n=2, max_new_tokens=6)
    assert [r.token_ids for r in greedy] == [solo(tiny_llama, "w5 w6", "plain", 6).token_ids] * 2
    with pytest.raises(ParadecError, match="n must be"):
        generate_n(tiny_llama, "w1", n=0)
    with pytest.raises(ParadecError, match="method name"):
        generate_n(tiny_llama, "w1", n=2, method=make_drafter("plain", tiny_llama))


def test_first_finish_returns_the_first_branch_to_end_and_the_others_state(tiny_llama):
    runs = [solo(tiny_llama, [5, 9, 17], "plain", 12, temperature=1.0, seed=20 + i) for i in range(4)]
    word = next(w for w in runs[2].text.split()[1:] if w not in runs[2].text.split()[0])
    ff = first_finish(tiny_llama, [5, 9, 17], n=4, method="plain", temperature=1.0, seed=20, max_new_tokens=12,
                      stop=[word])
    alone = [solo(tiny_llama, [5, 9, 17], "plain", 12, temperature=1.0, seed=20 + i, stop=[word]) for i in range(4)]
    steps = [a.stats.forward_passes if a.stats.stop_reason == "stop" else 99 for a in alone]
    assert ff.winner == steps.index(min(steps)) and ff.result.token_ids == alone[ff.winner].token_ids
    assert ff.result.stats.stop_reason == "stop"
    for i, r in enumerate(ff.results):
        assert alone[i].token_ids[: len(r.token_ids)] == r.token_ids  # each branch's state so far
        if r.stats.stop_reason == "outrun":
            assert r.stats.forward_passes == ff.result.stats.forward_passes


def test_parallel_extraction_gives_the_sequential_fields_in_fewer_forwards(tiny_llama):
    text, fields = "w30 w31 w32 w33", {"PER": "w4", "LOC": "w5", "ORG": "w6 w7"}
    par = extract(tiny_llama, text, fields, max_new_tokens=8, stop=["w9"])
    seq_ = extract(tiny_llama, text, fields, max_new_tokens=8, stop=["w9"], parallel=False)
    assert par.fields == seq_.fields and list(par.fields) == ["PER", "LOC", "ORG"]
    steps = [r.stats.forward_passes for r in par.results.values()]
    assert seq_.forwards == sum(1 + n for n in steps)  # each branch alone: its prompt, then its steps
    assert par.forwards == 2 + max(steps)  # together: the shared prefix, the field labels, the longest branch
    for name in fields:
        assert par.results[name].token_ids == seq_.results[name].token_ids
        prompt = paradec.encode_prompt(tiny_llama, f"{paradec.parallel.branches.EXTRACT_INSTRUCTION}\n\n{text}\n\n")
        prompt += tiny_llama.tokenizer(f"{fields[name]}:", add_special_tokens=False).input_ids
        assert par.results[name].token_ids == solo(tiny_llama, prompt, "plain", 8, stop=["w9"]).token_ids


def test_reasoning_branches_are_answered_together_then_joined(tiny_llama):
    r = reason(tiny_llama, "w1 w2", ["w3 w4", "w5"], method="ngram", max_new_tokens=5, answer_tokens=6)
    prefix = paradec.encode_prompt(tiny_llama, "w1 w2\n\n")
    tok = tiny_llama.tokenizer
    for q, a in zip(["w3 w4", "w5"], r.answers):
        ids = prefix + tok(f"Sub-question: {q}\nAnswer:", add_special_tokens=False).input_ids
        assert a.token_ids == solo(tiny_llama, ids, "ngram", 5, stop=["\n\n"]).token_ids
    notes = "".join(f"Sub-question: {q}\nAnswer: {a.text.strip()}\n\n" for q, a in zip(["w3 w4", "w5"], r.answers))
    joined = prefix + tok(notes + "Final answer:", add_special_tokens=False).input_ids
    assert r.final.token_ids == solo(tiny_llama, joined, "ngram", 6, stop=["\n\n"]).token_ids


# ---------- sampling: each branch draws from the model's distribution, independently ----------


def test_every_branch_samples_the_model_distribution_independently():
    """4 branches of one prompt, each verifying a sampled two-sibling tree (multi-draft rejection
    sampling): each branch's first two tokens follow p(t1) p(t2 | t1), and two branches' first tokens
    are independent (their joint is p(t1) p(t1'))."""
    from test_sampling_distribution import PROMPT, VOCAB, BadTreeDrafter, exact_joint

    runs = 500
    model = tiny_model("llama", seed=5, vocab=VOCAB, init_range=0.3)
    p = exact_joint(model, SamplingParams(temperature=1.0))
    counts = torch.zeros(4, VOCAB, VOCAB, dtype=torch.float64)
    pairs = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    for run in range(runs):
        group = [Sequence(model, BadTreeDrafter(model), PROMPT, SamplingParams(1.0, seed=4 * run + b), 3)
                 for b in range(4)]
        ids = [r.token_ids for r in decode_together([group])]
        for b in range(4):
            counts[b, ids[b][0], ids[b][1]] += 1
        pairs[ids[0][0], ids[1][0]] += 1
    for b in range(4):
        tv = 0.5 * (counts[b] / runs - p).abs().sum().item()
        assert tv < tv_threshold(p, runs), f"branch {b}: TV {tv:.4f} vs {tv_threshold(p, runs):.4f}"
    first = p.sum(1)
    independent = first[:, None] * first[None, :]
    tv = 0.5 * (pairs / runs - independent).abs().sum().item()
    assert tv < tv_threshold(independent, runs), f"branches 0 and 1 are not independent: TV {tv:.4f}"


def tv_threshold(p: torch.Tensor, runs: int) -> float:
    """Twice the expected TV distance of an empirical distribution of ``runs`` samples from p."""
    return 2 * 0.5 * sum(math.sqrt(2 * x * (1 - x) / (math.pi * runs)) for x in p.flatten().tolist())


@pytest.mark.slow
def test_smollm2_float32_batch_equals_each_sequence_alone(smollm2):
    """The real model, native float32 kernels: five methods (one sampling) in one batch, bit for bit."""
    texts = ["Name three rivers of Europe.", "def fibonacci(n):", "Translate into French: the cat sleeps.",
             "Summarise: the meeting moved to Tuesday because the room was booked.", "Count from one to ten."]
    jobs = [("plain", SamplingParams()), ("ngram", SamplingParams()), ("recycling", SamplingParams()),
            ("lookahead", SamplingParams()), ("ngram", SamplingParams(0.8, seed=3))]
    prompts = [paradec.encode_prompt(smollm2, t, chat=True) for t in texts]
    together = decode_together([seq(smollm2, p, m, 24, params=sp) for p, (m, sp) in zip(prompts, jobs)])
    for p, (m, sp), r in zip(prompts, jobs, together):
        alone = solo(smollm2, p, m, 24, temperature=sp.temperature, seed=sp.seed)
        assert r.token_ids == alone.token_ids and r.stats.forward_passes == alone.stats.forward_passes, m


def test_a_sequence_whose_first_token_fails_ends_alone(tiny_llama):
    """Review II item 1: ``Sequence.start`` ran outside the batch's per-sequence guards, so one
    sequence's failure there raised out of ``Batch.step`` and took the whole batch (and the server's
    worker) with it."""
    bad = seq(tiny_llama, [4, 5], "plain", 20)
    late = seq(tiny_llama, [4, 5, 6, 7], "plain", 20)  # its prompt goes on past the shared prefix
    good = seq(tiny_llama, [6, 7], "ngram", 20)

    def broken(logits):
        raise RuntimeError("no first token")

    bad.start = late.start = broken
    batch = Batch()
    batch.add(bad, late)  # a group: the second reads the rest of its prompt a step later
    batch.add(good)
    failed = []
    while len(batch):
        failed += batch.step().failed
    assert sorted(str(e) for _, e in failed) == ["no first token"] * 2 and {s for s, _ in failed} == {bad, late}
    assert good.result.token_ids == solo(tiny_llama, [6, 7], "ngram", 20).token_ids
