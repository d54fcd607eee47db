"""`pearl`: greedy output equal to plain (same and another tokenizer), drafting that really runs beside
verification, a sequential fallback, and the chain's bookkeeping."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import paradec
from paradec.decode import Sequence, run
from paradec.drafters.base import make_drafter
from paradec.errors import ParadecError
from paradec.model import Model
from paradec.runtime.target import Target
from paradec.sampling import SamplingParams

from conftest import perturbed, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread_module")

PROMPTS = [[5, 9, 17, 33], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
CONFIGS = {
    "chain-1": dict(max_draft=1, adaptive=False, min_confidence=0.0),
    "chain-3": dict(max_draft=3, adaptive=False, min_confidence=0.0),
    "adaptive-8": dict(max_draft=8),
    "long-16": dict(max_draft=16, min_confidence=0.0),
}



def chunk_tokenizer() -> PreTrainedTokenizerFast:
    """Another tokenizer for the word-level models' text ("w5 w17 w3"): pieces of two characters, cut
    from the start of whatever it encodes, so its pieces straddle the words' boundaries ("w1", "7 ")."""
    chars = list("w0123456789 ")
    pieces = ["<unk>", "<s>", "</s>"] + chars + [a + b for a in chars for b in chars]
    tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(".."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   clean_up_tokenization_spaces=False)


def permuted_copy(model, seed: int, scale: float = 0.0) -> Model:
    """The same model over a shuffled vocabulary (another token -> id map, the same split): its drafts are the
    target's own (perturbed by ``scale``), but every id differs."""
    hf = copy.deepcopy(perturbed(model, scale, seed).hf_model if scale else model.hf_model)
    vocab = model.vocab_size
    perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))  # new id -> old id
    with torch.no_grad():
        hf.get_input_embeddings().weight.copy_(hf.get_input_embeddings().weight[perm])
        hf.get_output_embeddings().weight.copy_(hf.get_output_embeddings().weight[perm])
    words = model.tokenizer.convert_ids_to_tokens(perm.tolist())
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    return Model.from_hf(hf, fast, runtime=model.runtime.name, name="tiny-permuted")


class OracleTarget(Target):
    """A drafting target that spells ``truth`` in its tokenizer's pieces, except at text offsets in
    ``wrong``, where it proposes a wrong piece; elsewhere (text that left the truth) anything."""

    def __init__(self, runtime):
        super().__init__()
        self.runtime, self.max_length, self.vocab_size = runtime, 512, runtime.vocab_size
        self.tokens: list[int] = []
        self.fed: list[int] = []

    def reset(self) -> None:
        self.crop(0)

    def crop(self, length: int) -> None:
        del self.tokens[length:]
        self.fed, self.length, self.pending = [], len(self.tokens), 0

    def commit(self, keep: list[int]) -> None:
        self.tokens += [self.fed[i] for i in keep]
        self.fed, self.length, self.pending = [], len(self.tokens), 0

    def _forward(self, tokens, offsets, mask, last_only, hidden=False):
        self.fed += list(tokens)
        self.pending = len(self.fed)
        rows = []
        for i in range(len(tokens)):
            rows.append(self.runtime.next_logits(self.tokens + self.fed[: len(self.fed) - len(tokens) + i + 1]))
        out = torch.stack(rows)
        return out[-1:] if last_only else out


class OracleRuntime:
    name = "oracle"
    layers = 1

    def __init__(self, tokenizer, truth: str, wrong: set[int]):
        self.tok, self.truth, self.wrong = tokenizer, truth, wrong
        self.vocab_size = len(tokenizer.get_vocab())
        self.max_length = 512

    def target(self, layers=None, exit_head=None):
        return OracleTarget(self)

    def next_logits(self, ids: list[int]) -> torch.Tensor:
        text = self.tok.decode(ids, skip_special_tokens=False)
        out = torch.zeros(self.vocab_size)
        rest = self.truth[len(text):] if self.truth.startswith(text) else ""
        token = self.tok(rest, add_special_tokens=False).input_ids[0] if rest else 3
        if len(text) in self.wrong:
            token = self.tok.convert_tokens_to_ids("99")
        out[token] = 10.0
        return out


def oracle_draft(target: Model, prompt: list[int], n: int, wrong_at: list[int]) -> Model:
    """A draft model with the 2-character tokenizer that knows plain greedy's text, wrong at the
    ``wrong_at``-th characters of the output."""
    tok = chunk_tokenizer()
    ids = prompt + plain(target, prompt, n)
    truth = target.tokenizer.decode(ids, skip_special_tokens=False)
    start = len(target.tokenizer.decode(prompt, skip_special_tokens=False))
    runtime = OracleRuntime(tok, truth, {start + i for i in wrong_at})
    return Model("oracle", tok, runtime, torch.float32)


def plain(model, prompt, n):
    return paradec.generate(model, prompt, "plain", max_new_tokens=n).token_ids


@pytest.fixture(scope="module")
def pair():
    target = tiny_model("llama", seed=3, dtype=torch.float32)
    return target, perturbed(target, 0.5, seed=1), tiny_model("qwen2", seed=4, layers=1, dtype=torch.float32)


def generate(target, prompt, n, **options):
    return paradec.generate(target, prompt, "pearl", max_new_tokens=n, method_options=dict(cost_aware=False, **options))


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_greedy_equals_plain(pair, config, overlap):
    target, near, far = pair
    accepted = 0
    for draft in (near, far, target):  # often right, rarely right, always right
        for prompt in PROMPTS:
            result = generate(target, prompt, 32, draft=draft, overlap=overlap, **CONFIGS[config])
            assert result.token_ids == plain(target, prompt, 32), f"{config}: diverged from plain greedy"
            accepted += result.stats.accepted_tokens
            assert result.stats.draft_forwards > 0
    assert accepted > 0


def test_self_draft_accepts_every_block(pair):
    """Draft == target: every block is accepted whole and every guess of the bonus token is right, which
    fails if the chain's bookkeeping (base, guesses, the draft's cache) drifts."""
    target = pair[0]
    result = generate(target, [5, 9, 17], 40, draft=target, max_draft=4, adaptive=False, min_confidence=0.0)
    s = result.stats
    assert s.accepted == s.drafted, (s.accepted, s.drafted)
    # pre-verify once (the draft reads the prompt), then 4 tokens + the bonus per step
    assert s.forward_passes <= 2 + 40 // 5
    assert result.token_ids == plain(target, [5, 9, 17], 40)


def test_layerskip_drafter(pair):
    target = pair[0]
    for layers in (1, 2):  # 2: all of the target's layers, so every block is accepted
        result = generate(target, PROMPTS[0], 24, drafter="layerskip", layers=layers, min_confidence=0.0)
        assert result.token_ids == plain(target, PROMPTS[0], 24)
    assert result.stats.accepted == result.stats.drafted


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("max_draft", [2, 5, 12])
def test_another_tokenizer_same_split(pair, overlap, max_draft):
    """A draft with another token -> id map: its text goes through the target's tokenizer."""
    target = pair[0]
    accepted = 0
    for draft in (permuted_copy(target, 7), permuted_copy(target, 8, scale=0.5)):
        for prompt in PROMPTS:
            result = generate(target, prompt, 32, draft=draft, max_draft=max_draft, overlap=overlap, min_confidence=0.0)
            assert result.token_ids == plain(target, prompt, 32)
            accepted += result.stats.accepted_tokens
    assert accepted > 32  # the permuted exact copy drafts the target's own tokens


@pytest.mark.parametrize("overlap", [True, False])
def test_another_split_with_a_tiny_model(pair, overlap):
    """A real tiny model with the 2-character tokenizer: random, so its text is mostly rejected."""
    target = pair[0]
    base = tiny_model("llama", seed=9, vocab=len(chunk_tokenizer().get_vocab()), dtype=torch.float32)
    draft = Model.from_hf(base.hf_model, chunk_tokenizer(), runtime="native", name="tiny-chunks")
    for prompt in PROMPTS:
        result = generate(target, prompt, 24, draft=draft, max_draft=6, overlap=overlap, min_confidence=0.0)
        assert result.token_ids == plain(target, prompt, 24)


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("wrong_at", [[], [0], [1, 2], [9], [40, 41, 70]])
def test_another_split_rejected_early_and_late(pair, overlap, wrong_at):
    """An oracle draft with the 2-character tokenizer, wrong at chosen characters of the output (none,
    the first, later ones): its pieces straddle the target's words, and every rejection must restart it
    from the committed text."""
    target = pair[0]
    for prompt in PROMPTS:
        draft = oracle_draft(target, prompt, 40, wrong_at)
        result = generate(target, prompt, 40, draft=draft, max_draft=6, overlap=overlap, min_confidence=0.0)
        assert result.token_ids == plain(target, prompt, 40)
        assert result.stats.accepted_tokens >= 20, result.stats.summary()  # the oracle is right almost everywhere


def test_drafting_runs_while_the_target_verifies(pair):
    """The target's verify forward waits (up to 5 s) for a draft forward that starts and ends while it
    runs: only a drafting thread that really runs beside the loop can give one."""
    target, near, _ = pair
    drafter = make_drafter("pearl", target, draft=near, cost_aware=False, min_confidence=0.0, overlap=True)
    chain, met = drafter.chain, []
    verifier = target.target()
    forward = verifier.forward

    def waiting_forward(*args, **kwargs):
        with chain.cond:
            met.append(chain.cond.wait_for(lambda: chain.overlapped > 0, timeout=5.0))
        return forward(*args, **kwargs)

    verifier.forward = waiting_forward
    seq = Sequence(target, drafter, PROMPTS[0], SamplingParams(), 16, target=verifier)
    result = yield_all(run(seq))
    assert result.token_ids == plain(target, PROMPTS[0], 16)
    assert sum(met) >= len(met) - 1 and len(met) >= 3, met  # the last step may find the draft at its limit
    assert result.stats.overlapped_forwards >= sum(met)


def yield_all(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_sequential_fallback_drafts_on_the_loop_thread(pair):
    target, near, _ = pair
    result = generate(target, PROMPTS[1], 24, draft=near, overlap=False)
    s = result.stats
    assert s.draft_forwards > 0 and s.overlapped_forwards == 0
    assert "pearl" in s.summary() and "draft forwards during verification" in s.summary()


def test_one_core_means_no_overlap(pair, monkeypatch):
    import paradec.drafters.placement as placement

    monkeypatch.setattr(placement, "machine_cpus", lambda: [0])
    drafter = make_drafter("pearl", pair[0], draft=pair[1], cost_aware=False)
    assert not drafter.placement.overlap and not drafter.chain.threaded
    monkeypatch.setattr(placement, "machine_cpus", lambda: [0, 1, 2, 3])
    p = placement.place(None, 3, None, lambda: 0.5)
    assert (p.target_cpus, p.draft_cpus) == ((0, 1, 2), (3,))
    assert placement.place(None, None, None, lambda: 0.3).draft_threads == 1


def test_seeded_sampling_repeats(pair):
    """Which tokens the draft draws depends on (seed, position) only, never on the thread's timing."""
    target, near, _ = pair
    drafter = make_drafter("pearl", target, draft=near, cost_aware=False, min_confidence=0.0)
    runs = [paradec.generate(target, PROMPTS[0], drafter, max_new_tokens=24, temperature=1.0, seed=11).token_ids
            for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


def test_measured_costs_are_read_and_cached(pair, cost_cache):
    """cost_aware: the placement's costs are measured once (tiny models: milliseconds) and cached."""
    target, near, _ = pair
    drafter = make_drafter("pearl", target, draft=near, overlap=True)
    result = paradec.generate(target, PROMPTS[0], drafter, max_new_tokens=16)
    assert result.token_ids == plain(target, PROMPTS[0], 16)
    assert drafter.costs is not None and drafter.costs.draft > 0 and drafter.cost.rows(1) == 1.0
    assert list(cost_cache.glob("overlap-*.json"))
    again = make_drafter("pearl", target, draft=near, overlap=True)
    again.begin(PROMPTS[0], SamplingParams())
    assert again.costs == drafter.costs  # read back from the cache, not measured anew


def test_errors():
    model = tiny_model("llama", seed=3, dtype=torch.float32)
    with pytest.raises(ParadecError, match="needs a draft model"):
        make_drafter("pearl", model)
    with pytest.raises(ParadecError, match="drafter must be"):
        make_drafter("pearl", model, drafter="eagle", draft="x")
    with pytest.raises(ParadecError, match="draft_threads"):
        make_drafter("pearl", model, draft=model, draft_threads=0)
    with pytest.raises(ParadecError, match="pearl drafts across tokenizers"):
        make_drafter("draft", model, draft=permuted_copy(model, 1))


def test_the_drafting_thread_ends_with_its_drafter(pair):
    import gc

    drafter = make_drafter("pearl", pair[0], draft=pair[1], cost_aware=False, overlap=True)
    thread = drafter.chain.thread
    del drafter
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_the_view_and_stats_show_the_overlap(pair):
    from paradec.viz import Trace, page_data, render

    target, near, _ = pair
    trace = Trace()
    result = paradec.generate(target, PROMPTS[0], "pearl", max_new_tokens=16, on_step=trace.step,
                              method_options=dict(draft=near, cost_aware=False, overlap=True))
    data = page_data(trace, result, target.tokenizer, PROMPTS[0])
    steps = [s["drafting"] for s in data["steps"]]
    assert all(s is not None for s in steps)
    assert sum(s["forwards"] for s in steps) == result.stats.draft_forwards > 0
    assert sum(s["overlapped"] for s in steps) == result.stats.overlapped_forwards
    assert "draft forwards ran during" in render(data)
    assert result.to_dict()["stats"]["draft_forwards"] == result.stats.draft_forwards


def test_placement_flags():
    from paradec.bench.cli import command_line
    from paradec.cli import build_parser, placement_options

    args = build_parser().parse_args(["generate", "x", "--method", "pearl", "--draft", "d", "--draft-threads", "1",
                                      "--target-threads", "1"])
    assert placement_options(args) == {"draft_threads": 1, "target_threads": 1}
    bench = build_parser().parse_args(["bench", "--draft", "d", "--draft-threads", "1"])
    assert "--draft-threads 1" in command_line(bench)
    with pytest.raises(ParadecError, match="no option"):  # another method refuses them
        make_drafter("ngram", None, draft_threads=1)
    with pytest.raises(ParadecError, match="draft_threads must be"):  # never more threads than cores
        make_drafter("pearl", None, draft="d", draft_threads=10_000)


def test_block_cost_example():
    """The worked example of ``BlockCost``'s docstring."""
    from paradec.costs import CostCurve
    from paradec.drafters.pearl import BlockCost

    curve = CostCurve.of_rows((1, 1, 1.3, 1.3, 1.7))
    cost = BlockCost(curve, 0.3, overlap=True)
    assert [round(cost.time(k), 2) for k in range(5)] == [1, 1, 1.3, 1.3, 1.7]
    values, total, kept = [0.9, 0.8, 0.7, 0.3], 0.0, 0
    for k, v in enumerate(values, start=1):
        if not cost.pays(v, k, total):
            break
        total, kept = total + v, k
    assert kept == 3
    inline = BlockCost(curve, 0.3, overlap=False)
    assert inline.time(2) == 1.3 + 2 * 0.3  # sequential: the drafting adds up
