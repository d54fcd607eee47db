"""The `recycling` drafter (Token Recycling): table and template on hand-built inputs, exactness vs plain
greedy, and the sampled output distribution against the model's exact one."""

from __future__ import annotations

import math
import random

import pytest
import torch

import paradec
from paradec.drafters import make_drafter
from paradec.drafters.trie import TokenTrie
from paradec.drafters.recycling import AdjacencyTable, RecyclingConfig, RecyclingDrafter, static_tree
from paradec.errors import ParadecError
from paradec.model import Model
from paradec.sampling import SamplingParams, target_probs

from conftest import assert_lossless, tiny_model
from test_ngram import REAL_PROMPTS


def test_static_tree_takes_the_most_probable_rank_paths_most_probable_first():
    assert static_tree(4, 2, 3, (0.5, 0.2)) == ((0,), (0, 0), (1,), (0, 0, 0))
    prior = (0.5, 0.2, 0.1, 0.05)
    tree = static_tree(20, 4, 3, prior)
    assert len(tree) == 20 and max(map(len, tree)) <= 3
    assert all(p[:-1] in tree[:i] for i, p in enumerate(tree) if len(p) > 1)  # every node's parent comes before it
    value = [math.prod(prior[r] for r in p) for p in tree]
    assert value == sorted(value, reverse=True)  # so every prefix is the best tree of its size
    assert static_tree(7, 4, 3, prior) == tree[:7]


def test_static_tree_width_and_depth_limits():
    assert static_tree(3, 1, 3) == ((0,), (0, 0), (0, 0, 0))  # k = 1: a chain
    assert static_tree(10, 3, 1) == ((0,), (1,), (2,))  # depth 1: only the root's k children


def one_hot_logits(rows: list[list[int]], vocab: int) -> torch.Tensor:
    """Logits whose top-k order is each row's list (first = highest)."""
    logits = torch.zeros(len(rows), vocab)
    for i, row in enumerate(rows):
        for rank, token in enumerate(row):
            logits[i, token] = 10.0 - rank
    return logits


def test_table_update_keeps_top_k_per_read_token_and_latest_row_wins():
    table = AdjacencyTable(vocab=10, k=2)
    assert (table.M == -1).all()
    table.update([3, 4, 3], one_hot_logits([[5, 6], [7, 8], [1, 2]], 10))
    assert table.M[3].tolist() == [1, 2]  # token 3 read twice: the later row wins
    assert table.M[4].tolist() == [7, 8]
    assert table.M[5].tolist() == [-1, -1]
    table.update([4], one_hot_logits([[9, 0]], 10))  # rows are overwritten, not merged
    assert table.M[4].tolist() == [9, 0]


def test_table_memory_is_a_few_megabytes_for_a_50k_vocabulary():
    table = AdjacencyTable(vocab=49152, k=8)
    assert table.M.element_size() * table.M.nelement() <= 2 * 2**20


def test_bfs_follows_the_template_and_skips_unknown_rows():
    table = AdjacencyTable(vocab=10, k=2)
    table.update([1, 2, 3], one_hot_logits([[2, 3], [4, 5], [6, 7]], 10))  # 1→(2,3) 2→(4,5) 3→(6,7); 4 unknown
    trie = TokenTrie(max_nodes=16)
    table.bfs(1, ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)), trie)
    # root 1 ─ 2 ─ 4 ─ (4 unknown: skipped)
    #        │   └ 5
    #        └ 3 ─ 6
    assert trie.tokens == [2, 3, 4, 5, 6]
    assert trie.parents == [-1, -1, 0, 0, 1]
    empty = TokenTrie(max_nodes=16)
    table.bfs(9, ((0,), (0, 0)), empty)
    assert len(empty) == 0


def test_seed_fills_only_unseen_rows_from_the_context_bigrams():
    table = AdjacencyTable(vocab=10, k=2)
    table.update([2], one_hot_logits([[8, 9]], 10))
    table.seed([1, 5, 1, 6, 1, 7, 2, 3])
    assert table.M[1].tolist() == [7, 6]  # most recent successors first, k of them
    assert table.M[2].tolist() == [8, 9]  # already seen by the model: kept


@pytest.mark.parametrize("bad", [dict(k=0), dict(tree_size=0), dict(max_depth=-2), dict(lookup_branches=-1),
                                 dict(persist=1), dict(seed_context="no"), dict(k=2.0),
                                 dict(min_accept=-0.5)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        RecyclingConfig(**bad)
    with pytest.raises(ParadecError):
        make_drafter("recycling", None, **bad)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("options", [{}, {"tree_size": 30, "max_depth": 8, "seed_context": False, "lookup_branches": 0},
                                     {"lookup_branches": 2, "k": 3, "min_accept": 0.8}])
def test_greedy_matches_plain_on_tiny_models(arch, options):
    model = tiny_model(arch, seed=3)
    rng = random.Random(2)
    drafter = make_drafter("recycling", model, **options)  # one drafter: its table persists across prompts
    accepted = 0
    for _ in range(3):
        prompt = [rng.randrange(3, 30) for _ in range(rng.randrange(2, 30))]
        plain = paradec.generate(model, prompt, "plain", max_new_tokens=40)
        ours = paradec.generate(model, prompt, drafter, max_new_tokens=40)
        assert ours.token_ids == plain.token_ids
        accepted += ours.stats.accepted_tokens
    assert accepted > 0


def test_greedy_matches_plain_on_smollm2(smollm2):
    prompts = [[{"role": "user", "content": text}] for text in REAL_PROMPTS]
    assert assert_lossless(smollm2, prompts, "recycling", 32) > 0


class TableTarget:
    """An exact stand-in for a runtime's target: each row's logits are the model's for (committed + the row's
    ancestors), looked up in a table computed once. Runs the real loop and verifier, no KV cache."""

    def __init__(self, logits_of: dict[tuple[int, ...], torch.Tensor], max_length: int):
        self.logits_of, self.max_length, self.length = logits_of, max_length, 0

    def prefill(self, ids):
        self.seq = list(ids)
        self.length = len(self.seq)
        return self.logits_of[tuple(self.seq)]

    def forward(self, tokens, offsets, mask, last_only=False, hidden=False):
        self.block = list(tokens)
        rows = [tuple(self.seq + [t for t, seen in zip(tokens, mask[i].tolist()) if seen]) for i in range(len(tokens))]
        return torch.stack([self.logits_of[r] for r in rows])  # (block, vocab)

    def commit(self, keep):
        self.seq += [self.block[k] for k in keep]
        self.length = len(self.seq)


class TableModel(Model):
    logits_of: dict = {}

    def target(self, layers=None, exit_head=None):
        return TableTarget(self.logits_of, self.max_length)


def exact_tables(model, prompt: list[int], depth: int, params: SamplingParams):
    """Logits after prompt + every continuation of up to ``depth`` tokens (one batched forward),
    and the exact P(2nd, 3rd generated token) summed over the 1st: (vocab, vocab) float64."""
    vocab = model.vocab_size
    tails = torch.cartesian_prod(*[torch.arange(vocab)] * depth)  # (vocab**depth, depth)
    seqs = torch.cat([torch.tensor(prompt).expand(len(tails), -1), tails], dim=1)
    with torch.no_grad():
        logits = model.hf_model(seqs).logits[:, len(prompt) - 1 :]  # (vocab**depth, depth + 1, vocab)
    table = {}
    for seq, row in zip(seqs.tolist(), logits):
        for j in range(depth + 1):
            table[tuple(seq[: len(prompt) + j])] = row[j]
    p = lambda *t: target_probs(table[tuple(prompt) + t], params)  # noqa: E731
    exact = torch.zeros(vocab, vocab, dtype=torch.float64)
    for a in range(vocab):
        pa = p(a)
        exact += p()[a] * pa[:, None] * torch.stack([p(a, b) for b in range(vocab)])
    return table, exact


def test_sampling_keeps_the_model_distribution():
    """Chi-square of the empirical (token 2, token 3) pairs against the exact model distribution.

    Token 1 comes from the prefill; tokens 2 and 3 come out of the draft-verify steps, where a tree
    of recycled candidates (deterministic, several per node) is accepted or rejected. A small
    vocabulary and a sharpened head make drafts accepted often, at both depths, so a biased
    acceptance rule would show up in the pair frequencies. The target is an exact lookup table of
    the tiny model's logits (so thousands of runs take seconds); loop, drafter and verifier are real.
    """
    vocab, runs = 12, 4000
    tiny = tiny_model("llama", seed=5, vocab=vocab)
    with torch.no_grad():
        tiny.hf_model.lm_head.weight.mul_(12.0)  # peakier distributions: drafts often right
    params = SamplingParams(temperature=1.0)
    prompt = [4, 7, 5]
    table, exact = exact_tables(tiny, prompt, 4, params)  # step 2 reads t1 t2 + a depth-2 tree
    model = TableModel(name="table", tokenizer=tiny.tokenizer, runtime=tiny.runtime, dtype=tiny.dtype, _hf=tiny.hf_model)
    model.logits_of = table
    drafter = RecyclingDrafter(model, RecyclingConfig(k=3, tree_size=6, max_depth=2, lookup_branches=0, min_accept=0.0))
    counts = torch.zeros(vocab * vocab, dtype=torch.float64)
    accepted = 0
    for seed in range(runs):
        r = paradec.generate(model, prompt, drafter, max_new_tokens=3, temperature=1.0, seed=seed)
        counts[r.token_ids[1] * vocab + r.token_ids[2]] += 1
        accepted += r.stats.accepted_tokens
    assert accepted > runs // 4  # the drafts were really exercised
    expected = exact.flatten() * runs
    big = expected >= 5  # pool the rare cells so the chi-square approximation holds
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    # Wilson-Hilferty: the chi-square(dof) quantile at p = 0.999 (z = 3.09)
    limit = dof * (1 - 2 / (9 * dof) + 3.09 * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < limit, f"chi2 {chi2:.1f} >= {limit:.1f} (dof {dof})"
    tv = 0.5 * float((counts / runs - exact.flatten()).abs().sum())
    assert tv < 0.1, f"total variation {tv:.3f}"
