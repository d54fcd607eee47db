"""Trained drafting heads (`eagle`, `medusa`): shapes, drafting == training semantics, exactness on both
runtimes, exact sampling, head files refused with clear reasons, the cost-aware tree budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import paradec
from paradec.drafters import head_file, target_parts
from paradec.drafters.base import make_drafter
from paradec.costs import CostCurve, StepCost
from paradec.drafters.eagle import EagleRunner
from paradec.drafters.head_net import HeadConfig, build
from paradec.errors import ParadecError
from paradec.sampling import SamplingParams
from paradec.train.loop import unroll_mask, unrolled

from conftest import RUNTIMES, assert_lossless, tiny_model
from test_sampling_distribution import VOCAB as SMALL_VOCAB, empirical_joint, exact_joint, tv_threshold

pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one thread is fastest


def random_head(model, kind: str, subset: int | None = None, seed: int = 0, depth: int = 3):
    shape = target_parts.layer_shape(model)
    subset = subset or model.vocab_size
    torch.manual_seed(seed)
    ids = torch.randperm(model.vocab_size)[:subset].sort().values
    head = build(HeadConfig(kind=kind, subset=subset, depth=depth if kind == "medusa" else 0, **shape), ids)
    with torch.no_grad():
        for p in head.parameters():  # larger than the initialisation, so that drafts vary
            p.add_(torch.randn(p.shape) * 0.05)
        head.readout.weight.copy_(target_parts.lm_head_rows(model, ids))
    return head.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3)


@pytest.fixture(scope="module")
def heads(model, tmp_path_factory):
    """A random head of each kind for ``model``, saved as head files."""
    folder = tmp_path_factory.mktemp("heads")
    out = {}
    for kind in ("eagle", "medusa"):
        path = folder / f"{kind}.safetensors"
        head_file.save(path, random_head(model, kind, subset=64), model, {"note": "random, for tests"})
        out[kind] = str(path)
    return out


def test_head_shapes(model):
    eagle = random_head(model, "eagle", subset=40)
    d, c = eagle.config.hidden, eagle.config
    out, (k, v) = eagle(torch.randn(2, 5, d), torch.randn(2, 5, d), torch.arange(5))
    assert out.shape == (2, 5, d) and k.shape == v.shape == (2, c.kv_heads, 5, c.head_dim)
    logits = eagle.readout(out)
    assert logits.shape == (2, 5, 40)
    full = eagle.readout.full(logits[0], model.vocab_size)
    assert full.shape == (5, model.vocab_size)
    outside = torch.ones(model.vocab_size, dtype=torch.bool)
    outside[eagle.readout.token_ids] = False
    assert torch.isinf(full[:, outside]).all() and torch.isfinite(full[:, ~outside]).all()
    medusa = random_head(model, "medusa", subset=40, depth=4)
    assert medusa(torch.randn(3, d)).shape == (3, 4, d)


def test_unroll_mask_is_what_a_draft_node_sees():
    # step 2, row 4: real rows 0..2, its step-1 ancestor at position 3, itself (step 2, position 4)
    mask = unroll_mask(6, 2)
    row = mask[4].view(3, 6)
    assert row[0].tolist() == [True, True, True, False, False, False]
    assert row[1].tolist() == [False, False, False, True, False, False]
    assert row[2].tolist() == [False, False, False, False, True, False]
    assert unroll_mask(4, 0).equal(torch.ones(4, 4, dtype=torch.bool).tril())


def test_drafting_computes_what_training_unrolls(model):
    """The runner's cached rows and tree rows give the training loop's unrolled predictions: a depth-s
    node sees exactly what unroll step s trains on (so the head drafts as it was trained)."""
    head = random_head(model, "eagle")
    T, n = 12, 7  # tokens x_0..x_11; the root is x_7
    tokens = torch.randint(3, model.vocab_size, (1, T))
    feats = torch.randn(1, T, head.config.hidden)
    embed = target_parts.embed_rows(model, torch.arange(model.vocab_size))
    with torch.no_grad():
        outs = unrolled(head, tokens, feats[:, :-1], embed, steps=4)
    runner = EagleRunner(model, head)
    runner.add_features(feats[0, :3])
    runner.sync(tokens[0, :4].tolist())  # a first step: rows 0..2
    runner.add_features(feats[0, 3:n])
    runner.sync(tokens[0, : n + 1].tolist())  # rows 3..6 join from the cache
    assert torch.allclose(runner.out[-1], outs[0][0, n - 1], atol=1e-5)
    for depth in (1, 2, 3):  # a chain of the true next tokens
        ancestors = [list(range(depth - 2, -1, -1))]
        runner.feed([depth - 1], [int(tokens[0, n + depth])], [depth], ancestors)
        assert torch.allclose(runner.out[depth - 1], outs[depth][0, n - 1 + depth], atol=1e-5), depth


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", ["eagle", "medusa"])
@pytest.mark.parametrize("options", [
    dict(cost_aware=False),  # a chain of up to 8 nodes
    dict(cost_aware=False, tree_nodes=12, branch=3, branch_below=1.0),
    dict(row_costs=[1.0] * 4 + [1.2] * 4 + [2.0]),  # cost-aware: trees while rows are cheap
])
def test_greedy_equals_plain(model, heads, runtime, kind, options):
    target = model if runtime == "native" else tiny_model("llama", seed=3, runtime="hf")
    prompts = [[5, 9, 17, 33], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [7] * 12]
    accepted = assert_lossless(target, prompts, kind, 24, head=heads[kind], **options)
    assert accepted > 0


def test_cost_aware_trees_follow_the_cost_of_rows(model, heads):
    flat = paradec.generate(model, [5, 9, 17, 33], "eagle", max_new_tokens=16,
                            method_options=dict(head=heads["eagle"], row_costs=[1.0] * 40))
    steep = paradec.generate(model, [5, 9, 17, 33], "eagle", max_new_tokens=16,
                             method_options=dict(head=heads["eagle"], row_costs=[1.0, 3.0, 5.0, 7.0]))
    assert flat.stats.draft_nodes > 16  # rows cost nothing: the tree grows to its cap
    assert steep.stats.draft_nodes == 0  # a second row costs 3: no node of a random head pays


def test_step_cost_rule():
    cost = StepCost(CostCurve.of_rows((1.0, 1.4, 1.5, 1.6)))  # StepCost's docstring's worked example
    assert cost.pays(0.4, 0, 0.0, 1) and not cost.pays(0.39, 0, 0.0, 1)
    assert cost.pays(0.14, 1, 0.9, 1) and not cost.pays(0.13, 1, 0.9, 1)
    # the one convention (costs.py): a forward of 4 rows measured cheaper than 2 or 3 is raised, never counted on
    dip = CostCurve.of_rows((2.0, 3.0, 3.4, 2.4, 2.6))
    assert [dip(k) for k in range(1, 6)] == pytest.approx([1.0, 1.5, 1.7, 1.7, 1.7])
    assert dip(7) == pytest.approx(1.7)  # past the curve: its last segment goes on (flat here)
    assert StepCost(CostCurve.of_rows((1.0, 1.0)), draft_cost=0.5).pays(0.6, 1, 1.0, 1, new_forward=True) is False
    with pytest.raises(ValueError):
        CostCurve.of_rows((1.0, -1.0))


def test_step_cost_reads_the_curve_at_the_context_length():
    short = CostCurve.of({2: 1.1, 4: 1.3}, context=64)
    long = CostCurve.of({2: 1.5, 4: 2.5}, context=2048)
    curve = CostCurve(short.points, context=64, longer=(long,))
    cost = StepCost(curve)
    assert cost.at(64).step(3, 0) == pytest.approx(1.3) and cost.at(4096).step(3, 0) == pytest.approx(2.5)
    assert cost.at(1056).step(3, 0) == pytest.approx(1.9)  # halfway: interpolated
    assert cost.at(64).pays(0.2, 0, 0.0, 0) and not cost.at(2048).pays(0.2, 0, 0.0, 0)


@pytest.fixture(scope="module")
def small():
    return {rt: tiny_model("llama", seed=5, vocab=SMALL_VOCAB, init_range=0.3, runtime=rt) for rt in RUNTIMES}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", ["eagle", "medusa"])
def test_sampling_keeps_the_target_distribution(small, tmp_path, runtime, kind):
    """Drafted trees (siblings drawn without replacement from q, cost-aware sizes) leave the first two
    tokens' joint distribution at the model's (invariant 2)."""
    model = small[runtime]
    path = tmp_path / f"{kind}.safetensors"
    head_file.save(path, random_head(model, kind, subset=12, seed=1), model, {})
    params = SamplingParams(temperature=1.0)
    drafter = make_drafter(kind, model, head=str(path), row_costs=[1.0, 1.0, 1.0, 1.1, 1.2], branch=3)
    p = exact_joint(model, params)
    tv = 0.5 * (empirical_joint(model, drafter, params) - p).abs().sum().item()
    assert tv < tv_threshold(p), f"TV {tv:.4f} vs threshold {tv_threshold(p):.4f}"


def test_head_file_errors(model, heads, tmp_path):
    eagle = heads["eagle"]
    with pytest.raises(ParadecError, match="does not exist"):
        make_drafter("eagle", model, head=str(tmp_path / "none.safetensors"))
    lonely = tmp_path / "lonely.safetensors"
    shutil.copy(eagle, lonely)
    with pytest.raises(ParadecError, match="no manifest"):
        make_drafter("eagle", model, head=str(lonely))
    bad = tmp_path / "bad.safetensors"
    shutil.copy(eagle, bad)
    shutil.copy(head_file.manifest_path(Path(eagle)), head_file.manifest_path(bad))
    raw = bytearray(bad.read_bytes())
    raw[-5] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(ParadecError, match="checksum mismatch"):
        make_drafter("eagle", model, head=str(bad))
    with pytest.raises(ParadecError, match="holds a medusa head"):
        make_drafter("eagle", model, head=heads["medusa"])
    other = tiny_model("llama", seed=11)  # same sizes and tokenizer, other weights
    with pytest.raises(ParadecError, match="another model.*LM head"):
        make_drafter("eagle", other, head=eagle)
    wider = tiny_model("llama", seed=3, vocab=128)
    with pytest.raises(ParadecError, match="another model.*vocab"):
        make_drafter("eagle", wider, head=eagle)
    with pytest.raises(ParadecError, match="no trained eagle head ships for model 'tiny-llama'.*train-drafter"):
        make_drafter("eagle", model)


def test_manifest_records_the_checksum(heads):
    path = Path(heads["eagle"])
    manifest = json.loads(head_file.manifest_path(path).read_text())
    assert manifest["sha256"] == head_file.sha256_of(path) and manifest["kind"] == "eagle"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_feature_drafters_in_a_batch_decode_as_alone(model, heads, runtime):
    """EAGLE and Medusa in one batch with a plain and an n-gram sequence: every sequence's tokens and
    steps are its own alone. Two branches share a prompt prefix (read once, forked), one goes on past
    it: their drafters get the prefix's hidden states and then the rest's."""
    from paradec.decode import Sequence
    from paradec.parallel.batch import Batch, decode_together

    target = model if runtime == "native" else tiny_model("llama", seed=3, runtime="hf")
    greedy = SamplingParams(temperature=0.0)
    cases = [("eagle", [5, 9, 17, 33, 2]), ("medusa", [5, 9, 17, 33, 2, 40, 41]), ("plain", [7] * 6),
             ("ngram", [40, 41, 42, 40, 41]), ("eagle", [60, 61, 62])]

    def drafter(method):
        return make_drafter(method, target, **({"head": heads[method], "cost_aware": False} if method in heads else {}))

    alone = [paradec.generate(target, p, drafter(m), max_new_tokens=16) for m, p in cases]
    batch = Batch()
    seqs = [Sequence(target, drafter(m), p, greedy, 16) for m, p in cases]
    results = decode_together([seqs[:2], *seqs[2:]], batch)  # the first two: one group sharing 5 tokens
    for (method, _), ours, ref in zip(cases, results, alone):
        assert ours.token_ids == ref.token_ids, method
        assert ours.stats.forward_passes == ref.stats.forward_passes, method
    assert sum(r.stats.accepted_tokens for r in results[:2]) > 0  # the heads' drafts were used
    assert batch.counters.forwards < sum(r.stats.forward_passes + 1 for r in alone)


@pytest.mark.parametrize("kind", ["eagle", "medusa"])
def test_shipped_heads_are_checked_recorded_and_benchmarked(kind):
    """The smollm2-135m heads ship with a manifest whose SHA-256 matches and that records how they were
    trained; the benchmark's default methods include them."""
    from paradec.bench.runner import default_methods

    path = head_file.SHIPPED / f"smollm2-135m.{kind}.safetensors"
    manifest = json.loads(head_file.manifest_path(path).read_text())
    assert manifest["sha256"] == head_file.sha256_of(path) and manifest["kind"] == kind
    training = manifest["training"]
    assert training["command"].startswith("paradec train-drafter") and training["seed"] == 0
    assert training["minutes"]["train"] > 0 and "held_out" in training["data"]
    assert kind in default_methods()


def test_a_heads_drafting_cost_counts_the_bytes_it_reads(tmp_path):
    """A float32 head beside a 4-bit target reads ~7x more bytes per parameter than the target: its cost
    in target forwards is the ratio of bytes (a parameter count made SmolLM2's head look 5x cheaper than
    it is, and merge and auto asked it when it did not pay)."""
    model = tiny_model("llama", seed=3, dtype=torch.float32, quant="int4")
    path = tmp_path / "eagle.safetensors"
    head_file.save(path, random_head(model, "eagle", subset=64), model, {})
    drafter = make_drafter("eagle", model, head=str(path))
    head = drafter.runner.head
    head_bytes = sum(t.numel() * t.element_size() for t in [*head.parameters(), head.readout.weight])
    w = model.runtime.weights
    linears = [w.lm_head] + [x for layer in w.layers for x in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    assert drafter.drafting_cost() == pytest.approx(head_bytes / sum(x.nbytes for x in linears))
