"""The `layerskip` method: exact greedy output, a draft that shares the target's weights, the exit-head seam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paradec
from paradec.drafters.base import make_drafter
from paradec.drafters.layerskip import LayerSkipConfig, LayerSkipDrafter
from paradec.errors import ParadecError

from conftest import tiny_model

CONFIGS = {
    "chain-default": {},
    "chain-long": dict(min_confidence=0.0, adaptive=False, max_draft=5),
    "chain-adaptive": dict(min_confidence=0.0, max_draft=8),
    "tree": dict(tree_nodes=10, branch=3, branch_below=1.0, min_confidence=0.0, max_draft=4),
    "tree-adaptive": dict(tree_nodes=8, branch=2, branch_below=0.9, min_confidence=0.01, max_draft=6),
}


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def deep():
    """4 layers, so that 1-3 layer prefixes are real early exits."""
    return tiny_model("qwen2", seed=7, layers=4)


def plain(model, prompt, n):
    return paradec.generate(model, prompt, "plain", max_new_tokens=n).token_ids


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("layers", [1, 3])
def test_greedy_equals_plain(deep, config, layers):
    for prompt in ([5, 9, 17, 33], [60, 61, 62, 63, 64, 65, 66, 67]):
        truth = plain(deep, prompt, 24)
        result = paradec.generate(deep, prompt, "layerskip", max_new_tokens=24, method_options=dict(layers=layers, **CONFIGS[config]))
        assert result.token_ids == truth, f"{config}, layers={layers}: diverged from plain greedy"


def test_all_layers_reproduce_the_target_so_every_draft_is_accepted(deep):
    """With every layer the self-draft is the target itself: this checks the layer-prefix forward
    (embedding, rotary positions, tree mask, own cache) computes what the target computes."""
    result = paradec.generate(deep, [5, 9, 17], "layerskip", max_new_tokens=41,
                              method_options=dict(layers=4, max_draft=4, min_confidence=0.0, adaptive=False))
    assert result.stats.accepted[:4] == [result.stats.forward_passes] * 4
    tree = paradec.generate(deep, [5, 9, 17], "layerskip", max_new_tokens=41,
                            method_options=dict(layers=4, max_draft=3, tree_nodes=9, branch=3, branch_below=1.0, min_confidence=0.0, adaptive=False))
    # 9 nodes, 3 per node: level 1 has 3 nodes and the likeliest gets 3 children first, so the
    # target's top-1 path is in the tree to depth 2 every step (the last one drafts no deeper than
    # the tokens still wanted)
    assert tree.stats.accepted[:2] == tree.stats.drafted[:2] and tree.stats.drafted[1] >= tree.stats.forward_passes - 1
    assert tree.token_ids == result.token_ids == plain(deep, [5, 9, 17], 41)


def test_draft_shares_the_target_weights(deep):
    """No parameter is copied: the draft is the target's runtime, run on its first layers only."""
    drafter = make_drafter("layerskip", deep, layers=2)
    target = drafter.runner.target
    assert target.runtime is deep.runtime and target.layers == 2 and target.exit_head is None
    assert drafter.n_layers == 2


def test_default_layer_count_and_bad_values(deep):
    assert make_drafter("layerskip", deep).n_layers == 1  # a quarter of 4 layers
    with pytest.raises(ParadecError, match="only 4 decoder layers"):
        make_drafter("layerskip", deep, layers=9)
    with pytest.raises(ParadecError, match="layers"):
        make_drafter("layerskip", deep, layers=-1)


class FixedHead(nn.Module):
    """A stand-in for a trained exit head: always proposes ``token``."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.vocab, self.token, self.calls = vocab, token, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, vocab)
        self.calls += 1
        logits = torch.full((hidden.shape[0], self.vocab), -10.0, dtype=hidden.dtype)
        logits[:, self.token] = 10.0
        return logits


def test_exit_head_seam(deep):
    """A later trained head plugs in as a module mapping layer-L hidden states to logits."""
    prompt = [5, 9, 17, 33]
    truth = plain(deep, prompt, 20)
    head = FixedHead(96, truth[3])
    drafter = LayerSkipDrafter(deep, LayerSkipConfig(layers=2, min_confidence=0.0, adaptive=False, max_draft=3), exit_head=head)
    result = paradec.generate(deep, prompt, drafter, max_new_tokens=20)
    assert head.calls > 0 and result.token_ids == truth
    assert result.stats.accepted_tokens >= 1  # its constant guess is right at least once


def test_real_model_greedy_equals_plain(smollm2):
    prompt = "The three primary colours are"
    truth = paradec.generate(smollm2, prompt, "plain", max_new_tokens=10).token_ids
    for options in (dict(), dict(layers=15, tree_nodes=6, branch_below=0.9)):
        result = paradec.generate(smollm2, prompt, "layerskip", max_new_tokens=10, method_options=options)
        assert result.token_ids == truth, f"layerskip {options} diverged on SmolLM2 float32"


def test_layerskip_sampling_runs_and_is_seeded(deep):
    """Distribution exactness is the shared tree code's (tests/test_draft_model.py); here: it runs
    with sampling and one seed gives one output."""
    kw = dict(max_new_tokens=16, temperature=1.0, seed=3, method_options=dict(layers=2, tree_nodes=6, branch_below=1.0, min_confidence=0.0))
    a = paradec.generate(deep, [5, 9], "layerskip", **kw)
    b = paradec.generate(deep, [5, 9], "layerskip", **kw)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 16
