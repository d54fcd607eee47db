"""Invariant 4: the streamed text equals the full decode of the ids whatever the chunking, and stop
strings cut at the earliest-completed match whatever the chunking (``TextStream``, ``decode``)."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import paradec
from paradec.text import TextStream

from conftest import OracleDrafter, tiny_model, word_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Café, naïve, Ünïcödé: déjà vu à la carte; señor Müller's façade.",
    "中文字符和日本語のテキスト、한국어 텍스트도 있습니다。",
    "Emoji 😀🎉👍🏽 and symbols ∑ ∞ → ≤ ≥ € £ ¥ in one line.",
    "def f(x):\n    return x ** 2  # a comment\n\n\tindented\ttabs",
]
SPECIALS = ["<s>", "</s>", "<|im_start|>"]


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 style: byte-level BPE, multi-byte characters split across tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens(["<tool>"])  # an added token that is not special: decoded, not skipped
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def metaspace_byte_fallback() -> PreTrainedTokenizerFast:
    """Llama / sentencepiece style: ``▁`` for spaces, the first one stripped on decode, characters
    outside the vocabulary as byte tokens ``<0xE4>``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    ascii_corpus = [line.encode("ascii", "ignore").decode() for line in CORPUS]
    tok.train_from_iterator(ascii_corpus * 3, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"] + SPECIALS))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   unk_token="<unk>", bos_token="<s>", eos_token="</s>")


TOKENIZERS = {"word-level": word_tokenizer, "byte-level-bpe": byte_level_bpe, "metaspace-byte-fallback": metaspace_byte_fallback}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request) -> PreTrainedTokenizerFast:
    return TOKENIZERS[request.param]()


def id_sequences(tok, rng: random.Random, count: int) -> list[list[int]]:
    """Encodings of the corpus with special tokens spliced in, and uniformly random ids.

    Random ids leave out byte-fallback tokens (``<0xE4>``): such a tokenizer decodes an invalid
    run of byte tokens as one U+FFFD per byte, also for bytes that were a whole character before
    the run went wrong, which no streaming decoder can reproduce (text shown cannot be taken back).
    Valid runs come from the encodings."""
    specials = tok.convert_tokens_to_ids([t for t in SPECIALS if t in tok.get_vocab()])
    pool = [i for t, i in tok.get_vocab().items() if not (t.startswith("<0x") and t.endswith(">"))]
    out = []
    for _ in range(count):
        if rng.random() < 0.5:
            text = " ".join(rng.sample(CORPUS, 2)) if len(tok.get_vocab()) > 100 else "w1 w2 w3 w17 w40"
            ids = tok(text, add_special_tokens=False).input_ids
            for _ in range(rng.randrange(4)):
                ids.insert(rng.randrange(len(ids) + 1), rng.choice(specials))
        else:
            ids = [rng.choice(pool) for _ in range(rng.randrange(1, 40))]
        out.append(ids)
    return out


def chunked(ids: list[int], rng: random.Random) -> list[list[int]]:
    chunks, i = [], 0
    while i < len(ids):
        n = rng.choice([1, 1, 2, 3, 8])
        chunks.append(ids[i : i + n])
        i += n
    return chunks


def stream_text(tok, chunks: list[list[int]], stop: list[str] | None = None) -> tuple[str, TextStream]:
    stream = TextStream(tok, stop)
    pieces = [stream.push(chunk, final=i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
    return "".join(pieces), stream


def test_streamed_text_is_the_full_decode_for_every_chunking(tokenizer):
    rng = random.Random(0)
    for ids in id_sequences(tokenizer, rng, 60):
        full = tokenizer.decode(ids, skip_special_tokens=True)
        for _ in range(3):
            text, stream = stream_text(tokenizer, chunked(ids, rng))
            assert text == stream.text == full, ids
            assert stream.ids == ids


def test_no_piece_splits_a_character():
    tok = byte_level_bpe()
    ids = tok("中文字符 😀🎉", add_special_tokens=False).input_ids
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # the test exercises split characters
    stream = TextStream(tok)
    assert all("\ufffd" not in stream.push([i]) for i in ids)


def test_stop_strings_cut_at_the_first_completed_match_for_every_chunking(tokenizer):
    rng = random.Random(1)
    for ids in id_sequences(tokenizer, rng, 40):
        full = tokenizer.decode(ids, skip_special_tokens=True)
        if len(full) < 4:
            continue
        stops = []  # substrings of the text: several, overlapping, in any order
        while len(stops) < 3:
            at = rng.randrange(len(full) - 1)
            stops.append(full[at : at + rng.randrange(1, 6)])
        stops = [s for s in stops if "\ufffd" not in s]  # U+FFFD marks text still incomplete
        if not stops:
            continue
        end, at = min((full.find(s) + len(s), full.find(s)) for s in stops)
        one_at_a_time, first = stream_text(tokenizer, [[i] for i in ids], stops)
        assert one_at_a_time == first.text == full[:at]
        cut = tokenizer.decode(first.ids, skip_special_tokens=True)
        assert cut[:end] == full[:end]  # the kept ids hold the stop string...
        assert len(tokenizer.decode(first.ids[:-1], skip_special_tokens=True).rstrip("\ufffd")) < end  # ...and no more ids than needed
        for _ in range(3):
            text, stream = stream_text(tokenizer, chunked(ids, rng), stops)
            assert (text, stream.ids, stream.stopped) == (first.text, first.ids, True)


def test_the_earliest_stop_string_wins_whatever_its_place_in_the_list():
    tok = word_tokenizer()
    ids = tok("w1 w2 w3 w4 w5", add_special_tokens=False).input_ids
    for stop in ([" w4", " w2"], [" w2", " w4"]):
        text, stream = stream_text(tok, [ids], stop)
        assert text == "w1" and stream.ids == ids[:2]


def test_no_quadratic_redecoding_after_a_stop_string():
    """Finding the ids to keep after a hit costs a few decodes of a few ids, not one decode per id."""
    tok = word_tokenizer()
    decoded = []  # length of every decode call
    stream = TextStream(tok, stop=[" w9"])
    stream.decode = lambda ids: decoded.append(len(ids)) or tok.decode(ids, skip_special_tokens=True)
    stream.push(tok("w1 w2 w3 " * 300, add_special_tokens=False).input_ids)
    decoded.clear()
    stream.push(tok("w5 w9 w7", add_special_tokens=False).input_ids)
    assert stream.stopped and stream.text.endswith("w3 w5")
    assert sum(decoded) < 30, decoded


def test_several_stop_strings_give_the_same_text_with_multi_token_steps():
    """Issue 10 item 1: plain and a drafter accepting 8 tokens a step stopped at different strings."""
    model = tiny_model("llama", seed=0)
    prompt, stop = [5, 6, 7], [" w46", " w70"]
    truth = paradec.generate(model, prompt, "plain", max_new_tokens=40).token_ids
    plain = paradec.generate(model, prompt, "plain", max_new_tokens=40, stop=stop)
    fast = paradec.generate(model, prompt, OracleDrafter(model, truth, len(prompt)), max_new_tokens=40, stop=stop)
    assert fast.stats.accepted_tokens > 0
    assert plain.text == fast.text == "w76 w7 w73 w1"
    assert plain.token_ids == fast.token_ids == truth[:7]
    assert plain.stats.stop_reason == fast.stats.stop_reason == "stop"
