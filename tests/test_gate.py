"""The one cost gate and the one table of per-dtype defaults, shared by every gated method."""

from __future__ import annotations

import random

import pytest
import torch

from paradec.drafters import METHODS, make_drafter
from paradec.drafters.defaults import BY_DTYPE
from paradec.drafters.gate import CostGate, GatedConfig

GATED = ("ngram", "recycling", "jacobi", "lookahead")


class Dtyped:
    """A stand-in model: only its dtype and runtime's name are read when the drafter is built."""

    def __init__(self, dtype, runtime="hf"):
        self.dtype = dtype
        self.runtime = type("Runtime", (), {"name": runtime})()


def gate(min_accept, probe_every, accept_decay) -> CostGate:
    return CostGate(GatedConfig(min_accept=min_accept, probe_every=probe_every, accept_decay=accept_decay))


def test_every_gated_method_uses_the_one_gate_config():
    assert {m for m, cls in METHODS.items() if issubclass(cls.Config, GatedConfig)} == set(GATED)
    assert set(BY_DTYPE) == set(GATED)


def test_moving_average_closes_the_gate_and_probes():
    """The worked example of gate.py: min_accept 0.5, decay 0.8, probe every 4th step, all rejected."""
    g = gate(0.5, 4, 0.8)
    allowed = []
    for _ in range(12):
        allowed.append(g.allow())
        if allowed[-1]:
            g.record(0)
    assert allowed == [True] * 4 + [False, False, False, True] * 2
    g.record(3)  # a probe that is accepted reopens the gate (0.33 * 0.8 + 0.6 = 0.86)
    assert g.allow() and g.allow()


def old_patience_pause(outcomes: list[int], patience: int, pause: int) -> list[bool]:
    """The patience/pause gate Jacobi and Lookahead had: which steps drafted, given each drafted
    step's accepted count in turn."""
    misses = paused = 0
    drafted, it = [], iter(outcomes)
    while len(drafted) < 200:
        if paused:
            paused -= 1
            drafted.append(False)
            continue
        drafted.append(True)
        misses = 0 if next(it) else misses + 1
        if patience and pause and misses >= patience:
            misses, paused = 0, pause
    return drafted


@pytest.mark.parametrize("pause", [1, 8, 10])
def test_decay_zero_is_the_old_patience_one_gate(pause):
    """The float32 defaults of jacobi (1, 8) and lookahead (1, 10) keep their meaning exactly."""
    rng = random.Random(pause)
    outcomes = [rng.choice([0, 0, 0, 1, 2]) for _ in range(200)]
    g, it, drafted = gate(1, pause + 1, 0), iter(outcomes), []
    while len(drafted) < 200:
        drafted.append(g.allow())
        if drafted[-1]:
            g.record(next(it))
    assert drafted == old_patience_pause(outcomes, 1, pause)


def test_min_accept_zero_or_probe_every_one_never_skips():
    for g in (gate(0, 4, 0.8), gate(5, 1, 0.8)):
        for _ in range(20):
            assert g.allow()
            g.record(0)


@pytest.mark.parametrize("method", GATED)
def test_defaults_come_from_the_one_table_by_dtype(method):
    for dtype, column in ((torch.bfloat16, 0), (torch.float16, 0), (torch.float32, 1), (torch.float64, 1), (None, 1)):
        config = make_drafter(method, Dtyped(dtype)).config
        for option, values in BY_DTYPE[method].items():
            assert getattr(config, option) == values[column], (method, dtype, option)
    for dtype in (torch.bfloat16, torch.float32):  # rows cost on the native runtime in every dtype
        config = make_drafter(method, Dtyped(dtype, runtime="native")).config
        for option, values in BY_DTYPE[method].items():
            assert getattr(config, option) == values[1], (method, dtype, option)


def test_the_measured_defaults():
    """docs/sweeps/*.md: ngram/recycling gate at 0.15 (bf16) / 0.3 (f32) accepted tokens per drafted
    step, probing every 4th step; jacobi/lookahead off in bf16, in f32 8 / 10 plain steps after a miss."""
    f32, bf16 = Dtyped(torch.float32), Dtyped(torch.bfloat16)

    def gates(method, model):
        config = make_drafter(method, model).config
        return config.min_accept, config.probe_every, config.accept_decay

    assert gates("ngram", f32) == gates("recycling", f32) == (0.3, 4, 0.8)
    assert gates("ngram", bf16) == gates("recycling", bf16) == (0.15, 4, 0.8)
    assert gates("jacobi", f32) == (1, 9, 0) and gates("lookahead", f32) == (1, 11, 0)
    assert gates("jacobi", bf16)[0] == gates("lookahead", bf16)[0] == 0
    ngram = make_drafter("ngram", f32).config
    assert (ngram.max_depth, ngram.max_nodes) == (4, 6)
    recycling = make_drafter("recycling", bf16).config
    assert (recycling.tree_size, recycling.max_depth, recycling.lookup_depth) == (12, 5, 8)


def test_explicit_options_win_over_the_table():
    config = make_drafter("jacobi", Dtyped(torch.float32), min_accept=0.5, probe_every=2).config
    assert (config.min_accept, config.probe_every, config.accept_decay) == (0.5, 2, 0)
    config = make_drafter("ngram", Dtyped(torch.float32), min_depth=7).config
    assert config.max_depth == 7  # the dtype's depth (4) is raised to an explicit min_depth
