"""`auto`: it picks what pays on the given cost curve, stays exact, records its choices; and the cost
curve it reads: interpolation, and the disk cache keyed by machine, model, dtype, runtime and threads."""

from __future__ import annotations

import pytest
import torch

import paradec
import paradec.costs as costs
from paradec.costs import CostCurve, cost_curve
from paradec.drafters import make_drafter
from paradec.drafters.auto import AutoConfig, AutoDrafter
from paradec.drafters.base import Drafter, StepContext
from paradec.errors import ParadecError
from paradec.tree import AuxRows, Draft

from conftest import RUNTIMES, assert_lossless, plain_greedy, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

FLAT = {"16": 1.0}  # rows are free: drafting pays whenever anything is accepted
STEEP = {"2": 1.35, "4": 2.05, "8": 3.45, "16": 6.25}  # each extra row costs 0.35 of a one-row forward
PROMPTS = [[5, 9, 17, 33], [40, 7, 7, 19, 2, 40, 7], [3, 4, 5, 3, 4, 5, 3, 4]]


class Scripted(Drafter):
    """Drafts from the known plain continuation: ``right`` chain nodes that are correct then ``wrong``
    that are not, right only on steps where ``when(step)`` holds, with ``aux`` unverified rows."""

    def __init__(self, model, name, truth, prompt_length, right, wrong=0, aux=0, when=lambda step: True):
        self.name = name
        super().__init__(model, None)
        self.truth, self.prompt_length = truth, prompt_length
        self.right, self.wrong, self.aux, self.when = right, wrong, aux, when
        self.steps = 0

    def propose(self, ctx: StepContext) -> Draft:
        self.steps += 1
        done = len(ctx.tokens) - self.prompt_length
        good = self.truth[done : done + self.right] if self.when(self.steps) else []
        bad = [(t + 1) % self.model.vocab_size for t in self.truth[done : done + self.right + self.wrong]]
        return Draft.chain(good + bad[len(good) :])

    def aux_rows(self):
        if not self.aux:
            return None
        mask = torch.zeros(self.aux, 1 + self.aux, dtype=torch.bool)
        mask[:, 0] = True
        mask[:, 1:] = torch.eye(self.aux, dtype=torch.bool)
        return AuxRows(tokens=[3] * self.aux, offsets=list(range(1, self.aux + 1)), mask=mask)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3)


def scripted_run(model, curve, *make):
    prompt = PROMPTS[0]
    truth = plain_greedy(model, prompt, 60).token_ids
    candidates = [m(model, truth, len(prompt)) for m in make]
    auto = AutoDrafter(model, AutoConfig(costs=curve), candidates=candidates)
    result = paradec.generate(model, prompt, auto, max_new_tokens=60)
    assert result.token_ids == truth
    return result.stats


def windowed(model, truth, n):  # accepts 2 tokens a step, but brings 8 unverified rows
    return Scripted(model, "windowed", truth, n, right=2, wrong=2, aux=8)


def single(model, truth, n):  # one node, right every other step
    return Scripted(model, "single", truth, n, right=1, when=lambda step: step % 2 == 0)


def test_picks_the_cheaper_method_when_rows_cost():
    """Where rows are free the wide drafter pays most; where each row costs, its 8 extra rows make it
    lose to the one-node drafter, though that one is accepted less often."""
    model = tiny_model("llama", seed=3)
    flat = scripted_run(model, FLAT, windowed, single)
    steep = scripted_run(model, STEEP, windowed, single)
    assert flat.methods.get("windowed", 0) > 0.8 * flat.forward_passes, flat.methods
    assert steep.methods.get("single", 0) > 0.6 * steep.forward_passes, steep.methods
    assert steep.methods.get("windowed", 0) < 0.1 * steep.forward_passes, steep.methods
    for stats in (flat, steep):
        assert sum(stats.methods.values()) == stats.forward_passes


def test_cuts_drafts_to_what_the_curve_pays_for(model):
    """A chain of 12 whose first 3 nodes are right: sent whole where rows are free, cut to about the
    right part where they cost."""
    def deep(model, truth, n):
        return Scripted(model, "deep", truth, n, right=3, wrong=9)

    flat, steep = scripted_run(model, FLAT, deep), scripted_run(model, STEEP, deep)
    assert len(flat.drafted) == 12 and flat.draft_nodes / flat.forward_passes > 6  # grown from 1 node: 1, 3, 7, 12
    assert len(steep.drafted) < 8 and steep.draft_nodes / steep.forward_passes < 4.5
    assert steep.accepted_tokens / steep.forward_passes > 2  # it keeps the nodes that are accepted


def test_falls_back_to_plain_where_no_draft_pays(model):
    def hopeless(model, truth, n):
        return Scripted(model, "hopeless", truth, n, right=0, wrong=4)

    stats = scripted_run(model, STEEP, hopeless)
    assert stats.methods.get("plain", 0) > 0.85 * stats.forward_passes, stats.methods


def test_records_its_choices_in_the_stats(model):
    result = paradec.generate(model, PROMPTS[2], "auto", max_new_tokens=40, method_options={"costs": FLAT})
    stats = result.stats
    assert stats.method == "auto" and sum(stats.methods.values()) == stats.forward_passes
    assert set(stats.methods) <= {"plain", "merge", "ngram", "lookahead", "jacobi"}
    assert set(stats.methods) - {"plain"} and stats.accepted_tokens > 0
    assert stats.to_dict()["methods"] == stats.methods
    assert "auto" not in stats.methods and any(f"{m} {n}" in stats.summary() for m, n in stats.methods.items())


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("curve", [FLAT, STEEP, None], ids=["flat", "steep", "measured"])
def test_greedy_equals_plain(runtime, dtype, curve):
    model = tiny_model("qwen2", seed=1, dtype=dtype, runtime=runtime)
    options = {"costs": curve} if curve is not None else {}
    accepted = assert_lossless(model, PROMPTS, "auto", 40, **options)
    if curve is FLAT:
        assert accepted > 0  # the drafts were exercised


def test_greedy_equals_plain_across_generations_of_one_drafter(model):
    """One drafter carries what it learnt (and Token Recycling's table) into the next generation."""
    auto = make_drafter("auto", model, costs=FLAT)
    for prompt in PROMPTS * 2:
        assert paradec.generate(model, prompt, auto, max_new_tokens=30).token_ids == plain_greedy(model, prompt, 30).token_ids


def test_drafting_models_are_candidates_at_their_cost(model):
    """draft (a second model) and layerskip (the first layers) join when configured; their drafting
    forwards count in the cost, from their own measured curves."""
    auto = make_drafter("auto", model, costs=FLAT, methods=["layerskip", "draft", "ngram"], draft=model)
    for prompt in PROMPTS:
        result = paradec.generate(model, prompt, auto, max_new_tokens=30)
        assert result.token_ids == plain_greedy(model, prompt, 30).token_ids
    costs_by_name = {arm.drafter.name: arm.node_cost for arm in auto.arms}
    assert costs_by_name["ngram"] == 0 and costs_by_name["draft"] > 0 and costs_by_name["layerskip"] > 0
    assert [arm.drafter.name for arm in make_drafter("auto", model, draft=model).arms][-1] == "draft"


def test_same_text_same_choices(model):
    """Nothing is timed while decoding: the same run makes the same choices."""
    runs = [paradec.generate(model, PROMPTS[1], "auto", max_new_tokens=40, temperature=0.8, seed=7,
                             method_options={"costs": STEEP}) for _ in range(2)]
    assert runs[0].token_ids == runs[1].token_ids and runs[0].stats.methods == runs[1].stats.methods


def test_options_are_checked(model):
    for options, message in [
        ({"methods": ["ngram", "nope"]}, "auto chooses among"),
        ({"methods": []}, "non-empty"),
        ({"max_nodes": 0}, "max_nodes"),
        ({"costs": {"two": 1.5}}, "cost curve"),
        ({"costs": {"2": -1}}, "ratios positive"),
        ({"options": {"plain": {}}}, "options must map"),
        ({"options": {"draft": {"draft": "/etc/passwd"}}}, "auto's own 'draft'"),
        ({"options": {"ngram": {"max_n": 99}}}, "max_n"),
        ({"methods": ["draft"]}, "needs a draft model"),
    ]:
        with pytest.raises(ParadecError, match=message):
            make_drafter("auto", model, **options)


def test_candidates_observe_as_documented(model):
    """Token Recycling learns from every step's block; the others see only their own drafts (a draft
    proposed but not sent comes back cut to nothing)."""
    auto = make_drafter("auto", model, costs=FLAT, methods=["jacobi", "recycling"])
    seen = {arm.drafter.name: [] for arm in auto.arms}
    for arm in auto.arms:
        original = arm.drafter.observe
        arm.drafter.observe = lambda block, logits, verdict, o=original, n=arm.drafter.name: (
            seen[n].append(len(block.draft)), o(block, logits, verdict))[1]
    result = paradec.generate(model, PROMPTS[1], auto, max_new_tokens=30)
    assert len(seen["recycling"]) == result.stats.forward_passes
    assert len(seen["jacobi"]) <= result.stats.forward_passes
    assert sum(1 for n in seen["jacobi"] if n) == result.stats.methods.get("jacobi", 0)


# ---------- the cost curve ----------


def test_cost_curve_interpolates_and_never_falls():
    curve = CostCurve.of({"4": 1.6, 2: 1.5, 8: 1.2})  # 8 rows can't cost less than 4: raised to 1.6
    assert curve.points == ((1, 1.0), (2, 1.5), (4, 1.6), (8, 1.6))
    assert curve(1) == curve(0.5) == 1.0 and curve(3) == pytest.approx(1.55)
    assert CostCurve.of({1: 1.0, 4: 1.6})(8) == pytest.approx(2.4)  # the last segment goes on
    assert CostCurve.of({})(100) == 1.0


class Counting:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = costs.measure_contexts

        def measure(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(costs, "measure_contexts", measure)


def test_cost_curve_is_measured_once_and_cached_per_machine_model_dtype_runtime_threads(monkeypatch, tmp_path):
    monkeypatch.setattr(costs, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(costs, "_MEMO", {})
    monkeypatch.setattr(costs, "others_busy", lambda a, b: 0.0)  # a quiet machine (the next test: a busy one)
    counter = Counting(monkeypatch)
    base = tiny_model("llama", seed=0)
    curve = cost_curve(base)
    assert counter.calls == 1 and curve.points[0] == (1, 1.0) and curve.seconds > 0
    assert [k for k, _ in curve.points] == list(costs.CACHE_KS)
    # measured at the context lengths that fit (256 positions: 64, and 256 - 64 rows = 192), read at either
    assert curve.context == 64 and [c.context for c in curve.longer] == [192]
    assert curve(8, context=192) == curve.longer[0](8) and curve(8, context=64) == curve(8)
    assert cost_curve(base) is curve and counter.calls == 1  # this process remembers it
    costs._MEMO.clear()
    assert cost_curve(tiny_model("llama", seed=9)) == curve and counter.calls == 1  # from disk; weights don't matter
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1

    changed = [
        tiny_model("llama", seed=0, layers=3),  # another model
        tiny_model("llama", seed=0, dtype=torch.float32),  # another dtype
        tiny_model("llama", seed=0, runtime="hf"),  # another runtime
        tiny_model("llama", seed=0, dtype=torch.float32, quant="int8"),  # another quantization
    ]
    for n, other in enumerate(changed, start=2):
        cost_curve(other)
        assert counter.calls == n
    torch.set_num_threads(2)  # another thread count (the fixture sets 1 back)
    cost_curve(base)
    assert counter.calls == len(changed) + 2
    assert len(list(tmp_path.glob("*.json"))) == len(changed) + 2

    costs._MEMO.clear()
    files[0].write_text("{not json")  # a damaged file is measured again, not trusted
    torch.set_num_threads(1)
    cost_curve(base)
    assert counter.calls == len(changed) + 3


def test_a_curve_measured_on_a_busy_machine_is_used_but_not_cached(monkeypatch, tmp_path):
    """Other processes on the cores make rows look dearer or cheaper at random: such a curve serves this
    process only, and the next one measures again."""
    monkeypatch.setattr(costs, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(costs, "_MEMO", {})
    monkeypatch.setattr(costs, "others_busy", lambda a, b: 1.0)
    counter = Counting(monkeypatch)
    model = tiny_model("llama", seed=0)
    curve = cost_curve(model)
    assert cost_curve(model) is curve and counter.calls == 1 and not list(tmp_path.glob("*.json"))
    costs._MEMO.clear()
    monkeypatch.setattr(costs, "others_busy", lambda a, b: 0.1)
    cost_curve(model)
    assert counter.calls == 2 and len(list(tmp_path.glob("*.json"))) == 1


def test_the_measured_curve_follows_the_context_and_auto_reads_it_there(monkeypatch, tmp_path):
    """Rows that cost more with a longer cache (as measured) make auto draft less on a long prompt."""
    monkeypatch.setattr(costs, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(costs, "_MEMO", {})

    def measured(model, ks, contexts, *args, **kwargs):  # free rows at 64 tokens, dear ones at 192
        return [64, 192], [{k: 1.0 for k in ks}, {k: float(k) for k in ks}]

    monkeypatch.setattr(costs, "measure_contexts", measured)
    model = tiny_model("llama", seed=0)
    curve = cost_curve(model)
    assert curve(16, context=10) == 1.0 and curve(16, context=500) == 16.0 and curve(16, context=128) == 8.5
    costs._MEMO.clear()
    assert cost_curve(model)(16, context=500) == 16.0  # the contexts come back from the cache file
    short, long = [5, 6, 7] * 3, [5, 6, 7] * 64  # 192 tokens: where every row costs one forward
    assert paradec.generate(model, short, "auto", max_new_tokens=20).stats.draft_nodes > 0
    far = paradec.generate(model, long, "auto", max_new_tokens=20)
    assert far.stats.draft_nodes == 0 and far.token_ids == plain_greedy(model, long, 20).token_ids


def test_auto_measures_on_first_use_only(monkeypatch, tmp_path):
    monkeypatch.setattr(costs, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(costs, "_MEMO", {})
    counter = Counting(monkeypatch)
    model = tiny_model("llama", seed=0)
    auto = make_drafter("auto", model)
    assert counter.calls == 0  # building it measures nothing (a bad prompt fails first)
    paradec.generate(model, [5, 6], auto, max_new_tokens=3)
    paradec.generate(model, [5, 6], "auto", max_new_tokens=3)
    assert counter.calls == 1
    paradec.generate(model, [5, 6], "auto", max_new_tokens=3, method_options={"costs": STEEP})
    assert counter.calls == 1  # a curve by hand is not measured
