"""The batch's draft switch: drafting stops for the whole batch when, at its size, verifying drafts
would cost more forward time than the tokens they bring; the output never changes."""

from __future__ import annotations

import pytest

import paradec
from paradec.costs import CostCurve, cost_curve
from paradec.decode import Sequence
from paradec.drafters import make_drafter
from paradec.parallel.batch import Batch
from paradec.serve.switch import DraftSwitch
from paradec.sampling import SamplingParams
from paradec.serve.config import ServeConfig
from paradec.serve.engine import Engine

from conftest import OracleDrafter

pytestmark = pytest.mark.usefixtures("one_thread_module")


class Fake:
    """Stands for a sequence whose drafting steps took ``rows`` rows and yielded ``tokens`` tokens."""

    def __init__(self, rows: int, tokens: int):
        self.last_step = (rows, tokens)


def test_the_worked_example_of_the_docstring():
    """c(k) = 1 + 0.1 k; 8 sequences drafting 4 rows for 2 tokens: 16 / 4.2 < 8 / 1.8 → plain steps.
    At 2 sequences drafting pays: 4 / 1.8 > 2 / 1.2."""
    curve = CostCurve.from_seconds({1: 1.1, 100: 11.0})  # c(k)/c(1) = (1 + 0.1 k) / 1.1: only ratios matter
    for size, pays in ((8, False), (2, True)):
        switch = DraftSwitch(curve, decay=0.0)
        seqs = [Fake(4, 2) for _ in range(size)]
        assert switch.max_rows(seqs) is None  # nothing known yet: draft
        switch.observe(seqs)
        assert switch.pays(seqs) is pays


def test_while_off_every_probe_every_th_step_drafts_to_refresh_the_averages():
    switch = DraftSwitch(CostCurve.of({1: 1.0, 2: 2.0}), probe_every=3, decay=0.0)  # rows cost linearly
    seqs = [Fake(5, 1) for _ in range(4)]  # 5 rows for 1 token: never pays
    switch.max_rows(seqs)
    switch.observe(seqs)
    assert [switch.max_rows(seqs) for _ in range(7)] == [0, 0, None, 0, 0, None, 0]


def run(model, jobs, switch):
    seqs = [Sequence(model, d, p, SamplingParams(), 24) for d, p in jobs]
    batch = Batch(switch)
    for s in seqs:
        batch.add(s)
    while len(batch):
        batch.step()
    return [s.result for s in seqs]


def test_a_steep_curve_turns_drafting_off_and_the_output_stays_the_same(tiny_llama):
    model = tiny_llama
    prompts = [[4, 5, 6], [7, 8], [9, 10, 11, 12], [13]]
    truths = [paradec.generate(model, p, "plain", max_new_tokens=24).token_ids for p in prompts]
    wrong = [[(t + 1) % 90 + 3 for t in truth] for truth in truths]  # drafts that always fail

    def jobs(guesses):
        return [(OracleDrafter(model, g, len(p), k=6), p) for g, p in zip(guesses, prompts)]

    steep = CostCurve.of({1: 1.0, 2: 2.0})  # every row costs as much as the first: drafts must be right
    off = run(model, jobs(wrong), DraftSwitch(steep, probe_every=8))
    free = run(model, jobs(wrong), None)
    for r, f, truth in zip(off, free, truths):
        assert r.token_ids == f.token_ids == truth
        assert 0 < r.stats.draft_nodes < f.stats.draft_nodes / 3  # the first step and the probes drafted
    flat = CostCurve.of({1: 1.0, 64: 1.0})  # rows are free: drafting always pays
    on = run(model, jobs(wrong), DraftSwitch(flat))
    assert [r.stats.draft_nodes for r in on] == [f.stats.draft_nodes for f in free]
    right = run(model, jobs(truths), DraftSwitch(steep))  # right drafts pay even when rows are dear
    assert all(r.token_ids == t and r.stats.forward_passes <= 5 for r, t in zip(right, truths))


def test_the_server_switch_reads_the_one_cached_cost_curve(tiny_llama):
    """One mechanism: the batch's switch reads paradec.costs' curve (the one auto reads), not a curve
    of its own measured at every start."""
    engine = Engine(tiny_llama, ServeConfig(method="plain"))
    try:
        assert engine.worker.batch.switch.curve is cost_curve(tiny_llama)
        assert max(k for k, _ in engine.worker.batch.switch.curve.points) == 64  # a batch's forwards reach far
    finally:
        engine.close()
    engine = Engine(tiny_llama, ServeConfig(method="plain", cost_curve="off"))
    try:
        assert engine.worker.batch.switch is None
    finally:
        engine.close()


def test_seeded_samples_under_the_switch_are_the_samples_alone(tiny_llama):
    """Review II item 3: the switch turned drafting off by batch size, and a drafted step draws other
    random numbers than a plain one, so a seeded request got another text under load than alone. The
    switch budgets greedy sequences only; sampling ones draft as alone (jacobi draws even at budget 0)."""
    model = tiny_llama
    prompts = [[4, 5, 6, 4, 5, 6], [7, 8], [9, 10, 11, 9, 10], [13, 14]]
    methods = ["jacobi", "ngram", "recycling", "lookahead"]
    steep = CostCurve.of({1: 1.0, 2: 2.0})  # every row costs as much as the first: drafting never pays
    sampled = [Sequence(model, make_drafter(m, model), p, SamplingParams(temperature=1.0, seed=i), 24)
               for i, (m, p) in enumerate(zip(methods, prompts))]
    truth = paradec.generate(model, [20, 21], "plain", max_new_tokens=24).token_ids
    greedy = Sequence(model, OracleDrafter(model, [(t + 1) % 90 + 3 for t in truth], 2, k=6), [20, 21],
                      SamplingParams(), 24)  # drafts that always fail: the switch holds it to plain steps
    batch = Batch(DraftSwitch(steep, probe_every=8))
    for s in (*sampled, greedy):
        batch.add(s)
    while len(batch):
        assert not batch.step().failed
    for s, m, p, i in zip(sampled, methods, prompts, range(4)):
        alone = paradec.generate(model, p, m, max_new_tokens=24, temperature=1.0, seed=i)
        assert s.result.token_ids == alone.token_ids, m
        assert s.result.stats.draft_nodes == alone.stats.draft_nodes, m
    assert greedy.result.token_ids == truth
    assert 0 < greedy.result.stats.draft_nodes <= 6 * 4  # the first step and the probes drafted
