"""Invariant 3: after any step the KV cache holds exactly the committed tokens."""

from __future__ import annotations

import random

import pytest
import torch

from paradec.errors import ContextOverflowError
from paradec.tree import Block, Draft, block_mask, block_positions, paths

from conftest import RUNTIMES, tiny_model


def fresh_next_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model.hf_model(torch.tensor([tokens])).logits[0, -1]


def cached_next_logits(target, root: int) -> torch.Tensor:
    """Next-token logits after the cache + root, leaving the cache as it was."""
    logits = target.forward([root], [0], torch.ones(1, 1, dtype=torch.bool))[0]
    target.commit([])
    return logits


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("arch,dtype", [("llama", torch.float64), ("qwen2", torch.float64), ("llama", torch.float32)])
def test_cache_holds_exactly_the_committed_tokens(arch, dtype, runtime):
    """Against transformers' own forward; float32 runs the native C++ kernels (and the hf runtime's
    padding of 2-3 row blocks to 4 rows)."""
    model = tiny_model(arch, seed=7, dtype=dtype, runtime=runtime)
    atol = 1e-9 if dtype == torch.float64 else 1e-4
    rng = random.Random(arch)
    target = model.target()
    committed = [rng.randrange(3, 96) for _ in range(5)]
    target.prefill(committed[:-1])  # the last token is the root of the first block
    for step in range(12):
        n = rng.randrange(0, 7)
        parents = [rng.randrange(-1, i) for i in range(n)]
        draft = Draft(tokens=[rng.randrange(96) for _ in range(n)], parents=parents)
        block = Block(committed[-1], draft)
        block_logits = target.forward(block.tokens, block_positions(block), block_mask(block))
        # every block row's logits equal a fresh forward over committed + its root-to-node path
        for path in paths(draft.parents):
            for depth in range(1, len(path) + 1):
                node = path[depth - 1]
                prefix = committed + [draft.tokens[i] for i in path[:depth]]
                assert torch.allclose(block_logits[node + 1], fresh_next_logits(model, prefix), atol=atol)
        # keep a random root-to-node path (often non-contiguous in the block) plus one new root
        path = rng.choice(paths(draft.parents))[: rng.randrange(0, 4)] if n else []
        target.commit([0] + [i + 1 for i in path])
        committed += [draft.tokens[i] for i in path] + [rng.randrange(3, 96)]
        assert target.length == len(committed) - 1
        assert target.pending == 0
        assert torch.allclose(cached_next_logits(target, committed[-1]), fresh_next_logits(model, committed), atol=atol)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_context_overflow_is_an_error_not_a_crash(runtime):
    model = tiny_model("llama", max_positions=16, runtime=runtime)
    target = model.target()
    with pytest.raises(ContextOverflowError, match="context window of 16"):
        target.prefill(list(range(3, 20)))
