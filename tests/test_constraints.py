"""Structured output (``paradec.constraints``): constrained greedy output of every method equals plain
constrained greedy decoding token for token, outputs that end by themselves match their constraint,
forced tokens are drafted for free, bad constraints are refused before any decoding.

Two tiny tokenizers: the tests' word-level one (its grammars are compiled without forcing: vocab.py)
and a byte-level BPE trained here on a few JSON lines (llguidance reads it itself, forcing included).
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import paradec
from paradec import Constraint, ParadecError
from paradec.constraints import compile_constraint
from paradec.constraints.forced import graft, inner_step
from paradec.constraints.guide import Guide
from paradec.constraints.vocab import token_bytes, vocabulary
from paradec.model import Model
from paradec.tree import Block, Draft
from paradec.verify import Verdict

from conftest import OracleDrafter, word_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread_module")

LOSSLESS = ["forced", "ngram", "recycling", "jacobi", "lookahead", "auto"]
COSTS = {"2": 1.1, "4": 1.2, "8": 1.4, "16": 2.0}  # auto's curve by hand: tests never time the machine
W = word_tokenizer()


def wid(word: str) -> int:
    return W.convert_tokens_to_ids(word)


def options(method: str) -> dict | None:
    return {"costs": COSTS} if method == "auto" else None


# ---- models -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def words():
    from conftest import tiny_model

    return tiny_model("llama", seed=3, eos=2)


JSON_LINES = [json.dumps(x) for x in (
    {"name": "Ada", "age": 36, "tags": ["a", "b"]}, {"name": "Alan", "age": 41, "tags": []},
    {"name": "Grace", "age": 85, "tags": ["c"]}, {"city": "Paris", "country": "France"},
    {"persons": ["Angela Merkel"], "locations": ["Berlin", "Paris"]}, {"ok": True, "n": None, "x": 1.5},
)] * 4


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's kind, as SmolLM2's) of ~300 tokens, trained on a few JSON lines."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|end|>"], show_progress=False)
    tok.train_from_iterator(JSON_LINES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>")


def bpe_model(seed: int = 0, dtype: torch.dtype = torch.float64, chat: bool = False, max_positions: int = 256) -> Model:
    """A tiny random model over the byte-level BPE: JSON it can spell (``chat``: with a chat template)."""
    tok = bpe_tokenizer()
    if chat:
        tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         initializer_range=0.3, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    hf = LlamaForCausalLM(config).to(dtype).eval()
    hf.generation_config.eos_token_id = tok.eos_token_id
    return Model.from_hf(hf, tok, runtime="native", name="tiny-bpe")


@pytest.fixture(scope="module")
def bpe():
    return bpe_model()


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 5},
    "age": {"type": "integer", "minimum": 0, "maximum": 99},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 2}},
    "required": ["name", "age", "tags"], "additionalProperties": False}

WORD_REGEX = r"( w1[0-9])+ w5( w7)*"  # in the word vocabulary's bytes (every token has its leading space)
# no allowed word is a prefix of another one ("w1" of "w10"): a word vocabulary cannot spell the rest
WORD_GRAMMAR = 'start: " w3 w4 w5" (" w6" | " w7 w8") item~1..3 " w9 w5"\nitem: " w2" | " w6" | " w8"'


def word_text_matches(pattern: str, text: str) -> bool:
    """A word-level decode drops the first token's leading space, which the grammar saw."""
    return re.fullmatch(pattern, " " + text) is not None


# ---- the vocabulary ------------------------------------------------------------------------------

def test_word_vocabulary_keeps_each_tokens_leading_space(words):
    data = token_bytes(W, 100)
    assert data[wid("w7")] == b" w7" and data[wid("w12")] == b" w12"
    assert data[0] == b"<unk>" and data[96:] == [b""] * 4  # special tokens by name; ids past the tokenizer: none
    assert not vocabulary(words).canonical  # a word vocabulary cannot spell " w": no forcing by the library


def test_bpe_vocabulary_is_read_by_the_library(bpe):
    vocab = vocabulary(bpe)
    assert vocab.canonical and vocab.eos == {bpe.tokenizer.eos_token_id}
    ids = bpe.tokenizer('{"name": "Ada"}', add_special_tokens=False).input_ids
    assert vocab.tokenizer.decode_bytes(ids) == b'{"name": "Ada"}'


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("constraint,message", [
    (lambda: Constraint.regex("a(b"), "unclosed group"),
    (lambda: Constraint.grammar("start: foo"), 'unknown name: "foo"'),
    (lambda: Constraint.json_schema({"type": "objectx"}), "objectx"),
    (lambda: Constraint.json_schema("{not json"), "not valid JSON"),
    (lambda: Constraint.regex(""), "empty"),
])
def test_bad_constraints_are_refused_with_the_librarys_message(words, constraint, message):
    with pytest.raises(ParadecError, match=re.escape(message)):
        compile_constraint(constraint(), words)


def test_stop_strings_and_constraints_do_not_mix(words):
    with pytest.raises(ParadecError, match="stop strings"):
        paradec.prepare(words, "w1 w2", "plain", constraint=Constraint.regex(WORD_REGEX), stop=["w5"])


# ---- masks on a tree, forced drafts ----------------------------------------------------------------

def test_tree_rows_are_masked_by_their_paths_state(words):
    guide = Guide(compile_constraint(Constraint.grammar('start: " w3" (" w4" | " w5") " w6" | " w8"'), words))
    # root ─ w3 ─ w4 ─ w6      w3's children: w4 (legal), w9 (illegal, with a child w6 that is never reached)
    #           └ w9 ─ w6      and w8 under the root (legal; the grammar is complete after it)
    #      └ w8
    draft = Draft(tokens=[wid("w3"), wid("w4"), wid("w6"), wid("w9"), wid("w6"), wid("w8")], parents=[-1, 0, 1, 0, 3, -1])
    logits = torch.randn(1 + len(draft), words.vocab_size, dtype=torch.float64)
    masked = guide.masked_rows(Block(wid("w1"), draft), logits)
    allowed = [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in masked]
    assert allowed[0] == {wid("w3"), wid("w8")}
    assert allowed[1] == {wid("w4"), wid("w5")}
    assert allowed[2] == {wid("w6")}
    assert allowed[3] == {2}  # complete: EOS only
    assert torch.equal(masked[4], logits[4]) and torch.equal(masked[5], logits[5])  # w9 illegal: its subtree as it was
    assert allowed[6] == {2}
    assert guide.path == ()  # back at the committed state


def test_forced_tokens_and_the_committed_state(words):
    guide = Guide(compile_constraint(Constraint.grammar(WORD_GRAMMAR), words))
    assert guide.forced(10) == [wid("w3"), wid("w4"), wid("w5")]
    assert guide.forced(2) == [wid("w3"), wid("w4")]
    for w in ("w3", "w4", "w5", "w7"):
        assert guide.commit(wid(w)) is None
    assert guide.forced(10) == [wid("w8")]
    assert not guide.accepting
    for w in ("w8", "w2", "w9"):
        assert guide.commit(wid(w)) is None
    assert guide.commit(wid("w5")) == "eos" and guide.accepting  # complete: the generation ends here


def test_graft_and_the_methods_own_view():
    draft = Draft(tokens=[7, 8, 9], parents=[-1, 0, -1])
    grafted = graft([3, 4], draft)
    assert grafted.tokens == [3, 4, 7, 8, 9] and grafted.parents == [-1, 0, 1, 2, 1]
    logits = torch.arange(6 * 5, dtype=torch.float64).reshape(6, 5)
    block, rows, verdict = inner_step(Block(1, grafted), logits, Verdict([0, 1, 2, 3], [3, 4, 7, 8, 2]), 2)
    assert block.root == 4 and block.draft.tokens == [7, 8, 9] and block.draft.parents == [-1, 0, -1]
    assert torch.equal(rows, logits[2:6]) and verdict.accepted == [0, 1] and verdict.tokens == [7, 8, 2]


# ---- exactness: every method equals plain constrained greedy decoding -------------------------------

@pytest.mark.parametrize("constraint", [WORD_REGEX, WORD_GRAMMAR])
@pytest.mark.parametrize("method", LOSSLESS)
def test_word_grammar_every_method_equals_plain_constrained_greedy(words, constraint, method):
    c = Constraint.regex(constraint) if constraint == WORD_REGEX else Constraint.grammar(constraint)
    for prompt in ("w1 w2 w3", "w5 w5 w9 w40", "w17 w3 w4 w5 w7 w8 w2"):
        plain = paradec.generate(words, prompt, "plain", max_new_tokens=24, constraint=c)
        ours = paradec.generate(words, prompt, method, max_new_tokens=24, constraint=c, method_options=options(method))
        assert ours.token_ids == plain.token_ids, (method, prompt)
        assert ours.stats.forward_passes <= plain.stats.forward_passes
        assert (ours.stats.stop_reason, ours.stats.constraint) == (plain.stats.stop_reason, plain.stats.constraint)
        assert (plain.stats.stop_reason == "eos") == (plain.stats.constraint == "complete")
        if plain.stats.stop_reason == "eos":
            pattern = constraint if constraint == WORD_REGEX else r" w3 w4 w5( w6| w7 w8)( w2| w6| w8){1,3} w9 w5"
            assert word_text_matches(pattern, plain.text)


def test_the_grammar_completes_and_forced_tokens_are_free(words):
    c = Constraint.grammar(WORD_GRAMMAR)
    plain = paradec.generate(words, "w1 w2 w3", "plain", max_new_tokens=40, constraint=c)
    forced = paradec.generate(words, "w1 w2 w3", "forced", max_new_tokens=40, constraint=c)
    assert plain.stats.stop_reason == "eos" and plain.stats.constraint == "complete"
    assert forced.token_ids == plain.token_ids
    # " w3 w4 w5" at the start (the first from the prefill), " w8" after " w7", " w5" after " w9"
    assert forced.stats.forced_tokens >= 3 and plain.stats.forced_tokens == 0
    # each forced token saves a forward, but for a chain that completes the match (no bonus token follows)
    saved = plain.stats.forward_passes - forced.stats.forward_passes
    assert forced.stats.forced_tokens - 1 <= saved <= forced.stats.forced_tokens
    assert "forced" in forced.stats.methods


def test_noisy_trees_under_a_constraint_equal_plain(words):
    """Drafts that mix the right tokens with illegal ones: illegal branches are lost, never accepted."""
    from test_exactness import NoisyOracleDrafter

    c = Constraint.regex(WORD_REGEX)
    ids = W("w9 w8 w7").input_ids
    plain = paradec.generate(words, ids, "plain", max_new_tokens=30, constraint=c)
    for seed in range(6):
        drafter = NoisyOracleDrafter(words, plain.token_ids, len(ids), seed)
        ours = paradec.generate(words, ids, drafter, max_new_tokens=30, constraint=c)
        assert ours.token_ids == plain.token_ids


def test_a_dead_end_of_the_grammar_is_not_reported_complete(words):
    """" w1" is a prefix of " w1[0-9]": allowed, but no word token spells a digit after it."""
    r = paradec.generate(words, "w1 w2 w3", "plain", max_new_tokens=24, constraint=Constraint.regex(WORD_REGEX))
    assert r.token_ids[-1] == wid("w1")
    assert (r.stats.stop_reason, r.stats.constraint) == ("constraint", "incomplete")


def test_a_constraint_not_met_within_the_token_limit_says_so(words):
    c = Constraint.grammar(WORD_GRAMMAR)
    r = paradec.generate(words, "w1", "auto", max_new_tokens=5, constraint=c, method_options=options("auto"))
    assert r.stats.stop_reason == "length" and r.stats.constraint == "incomplete"
    assert "does not complete the constraint" in r.stats.summary()


@pytest.mark.parametrize("method", ["plain", *LOSSLESS])
def test_json_schema_on_a_bpe_vocabulary(bpe, method):
    """JSON the model must produce: every method equals plain; what ends by itself validates."""
    c = Constraint.json_schema(SCHEMA)
    complete = 0
    for prompt in ('{"name": "Ada", "age": 36', "Grace", '"tags"'):
        plain = paradec.generate(bpe, prompt, "plain", max_new_tokens=60, constraint=c)
        ours = paradec.generate(bpe, prompt, method, max_new_tokens=60, constraint=c, method_options=options(method))
        assert ours.token_ids == plain.token_ids, (method, prompt)
        if ours.stats.stop_reason == "eos":
            jsonschema.validate(json.loads(ours.text), SCHEMA)
            assert ours.text.startswith('{"name": "')  # one layout: keys and separators forced
            complete += 1
        else:
            assert ours.stats.constraint == "incomplete"
        if method != "plain":
            assert ours.stats.forced_tokens > 0
    assert complete >= 1


def test_oracle_drafts_under_a_schema_reach_many_tokens_per_forward(bpe):
    c = Constraint.json_schema(SCHEMA)
    ids = bpe.tokenizer("Ada", add_special_tokens=False).input_ids
    plain = paradec.generate(bpe, ids, "plain", max_new_tokens=60, constraint=c)
    oracle = paradec.generate(bpe, ids, OracleDrafter(bpe, plain.token_ids, len(ids)), max_new_tokens=60, constraint=c)
    assert oracle.token_ids == plain.token_ids
    assert oracle.stats.mean_accepted_length > 3


def test_constrained_sequences_in_a_batch_decode_as_alone(words):
    from paradec.parallel.batch import decode_together

    c = Constraint.grammar(WORD_GRAMMAR)
    prompts = ["w1 w2", "w3 w3 w3", "w40 w41"]
    alone = [paradec.generate(words, p, "ngram", max_new_tokens=30, constraint=c).token_ids for p in prompts]
    seqs = [paradec.prepare(words, p, "ngram", max_new_tokens=30, constraint=c) for p in prompts]
    assert [r.token_ids for r in decode_together(seqs)] == alone


def test_a_dead_end_in_a_draft_leaves_the_guide_usable(words):
    """A draft node at a dead end stops the library's matcher; the guide starts it again."""
    guide = Guide(compile_constraint(Constraint.regex(WORD_REGEX), words))
    draft = Draft(tokens=[wid("w1"), wid("w12"), wid("w13")], parents=[-1, 0, -1])  # " w1": a dead end
    masked = guide.masked_rows(Block(wid("w0"), draft), torch.randn(4, words.vocab_size, dtype=torch.float64))
    assert set(torch.isfinite(masked[1]).nonzero().flatten().tolist()) <= {2}
    assert guide.commit(wid("w13")) is None
    assert set(torch.isfinite(guide.masked(torch.randn(words.vocab_size))).nonzero().flatten().tolist()) >= {wid("w5")}


# ---- sampling: the masked distribution ------------------------------------------------------------

SAMPLED_REGEX = r"( w[1-5]) w7( w[0-4])( w[0-9]+)*"  # t1 in w1..w5, t2 forced w7, t3 in w0..w4


def test_constrained_sampling_draws_from_the_masked_distribution():
    """p(t1, t3) = masked p(t1) x masked p(t3 | t1, w7), against many seeded generations of plain,
    forced (w7 drafted) and a drafter of sampled trees (q, most of its tokens illegal, hung under w7)."""
    from conftest import tiny_model
    from test_sampling_distribution import RUNS, VOCAB, BadTreeDrafter, tv_threshold

    from paradec.sampling import SamplingParams, target_probs

    model = tiny_model("llama", seed=5, vocab=VOCAB, init_range=0.3)
    params = SamplingParams(temperature=1.0)
    prompt = [4, 9, 7]
    first = torch.tensor([w in {wid(f"w{i}") for i in range(1, 6)} for w in range(VOCAB)])
    third = torch.tensor([w in {wid(f"w{i}") for i in range(5)} for w in range(VOCAB)])
    with torch.inference_mode():
        hf = model.hf_model
        p1 = target_probs(hf(torch.tensor([prompt])).logits[0, -1].masked_fill(~first, -float("inf")), params)
        rows = torch.tensor([prompt + [t, wid("w7")] for t in range(VOCAB)])
        p3 = target_probs(hf(rows).logits[:, -1].masked_fill(~third, -float("inf")), params)
    exact = p1[:, None] * p3  # (VOCAB, VOCAB): t1, t3
    c = compile_constraint(Constraint.regex(SAMPLED_REGEX), model)
    for name, drafter in [("plain", lambda: "plain"), ("forced", lambda: "forced"),
                          ("bad-tree", lambda: BadTreeDrafter(model))]:
        counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
        method = drafter()
        for seed in range(RUNS):
            r = paradec.generate(model, prompt, method, max_new_tokens=4, temperature=1.0, seed=seed, constraint=c)
            assert r.token_ids[1] == wid("w7")
            counts[r.token_ids[0], r.token_ids[2]] += 1
        tv = 0.5 * (counts / RUNS - exact).abs().sum().item()
        assert tv < tv_threshold(exact), f"{name}: TV {tv:.4f} vs threshold {tv_threshold(exact):.4f}"
