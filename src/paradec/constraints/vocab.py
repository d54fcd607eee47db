"""The model's vocabulary as the grammar library reads it: the bytes of every token id.

A grammar constrains text, a model emits token ids; the library needs each id's bytes to tell which
ids may come next. Two ways to get them, tried in order:

1. llguidance's own reader of a fast tokenizer's JSON (``llguidance.hf.from_tokenizer``): byte-level
   BPE (GPT-2, SmolLM2, Qwen, Llama 3) and SentencePiece with byte fallback (Llama 2, Mistral). These
   vocabularies can spell any text, so the library may also *force* tokens: where the grammar admits
   only one continuation it allows only the tokens that spell it as the tokenizer would.
2. Otherwise (a word-level vocabulary, as the tests' tiny models have, or a tokenizer the library
   cannot read), each token's text as it decodes after another token (``decode([a, t])`` minus
   ``decode([a])``: the leading space a tokenizer drops at the start of a decode stays). Such a
   vocabulary cannot spell every text (no token spells half a word), so its grammars are compiled
   without forcing (``Vocabulary.canonical`` is False): the mask is then every token the grammar
   admits, and a token is forced only where it is the only one.

Built once per model (about half a second for a 49k vocabulary) and kept on the model object.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from ..errors import ParadecError

INSTALL = "pip install 'paradec[structured]' (llguidance)"
_LOCK = threading.Lock()
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback tokens


def library():
    """The library, or a ParadecError that says how to install it."""
    try:
        import llguidance
    except ImportError:
        raise ParadecError(f"structured output needs the llguidance library: {INSTALL}") from None
    return llguidance


@dataclass(frozen=True)
class Vocabulary:
    """tokenizer: llguidance's ``LLTokenizer``; width: ids in a logits row (the LM head's rows, which may
    exceed the tokenizer's ids); eos: the model's end-of-sequence ids below ``width``; canonical: the
    library may force tokens (the vocabulary spells any text)."""

    tokenizer: object
    width: int
    eos: frozenset[int]
    canonical: bool


def vocabulary(model) -> Vocabulary:
    """The model's ``Vocabulary``, built on first use and kept on the model."""
    cached = getattr(model, "_structured_vocabulary", None)
    if cached is not None:
        return cached
    with _LOCK:
        cached = getattr(model, "_structured_vocabulary", None)
        if cached is None:
            cached = build(model.tokenizer, model.vocab_size, model.eos_token_ids)
            model._structured_vocabulary = cached
    return cached


def build(tokenizer, width: int, eos_ids) -> Vocabulary:
    llg = library()
    eos = frozenset(i for i in eos_ids if 0 <= i < width)
    try:
        import llguidance.hf

        llt = llguidance.hf.from_tokenizer(tokenizer, n_vocab=width, eos_token=sorted(eos) or None)
        return Vocabulary(llt, width, eos, canonical=True)
    except Exception:  # noqa: BLE001 (the library reads fewer tokenizer kinds than transformers: spell them here)
        pass
    tokens = token_bytes(tokenizer, width)
    special = sorted(i for i in tokenizer.all_special_ids if 0 <= i < width)

    class Source:  # what llguidance.TokenizerWrapper reads
        eos_token_id = min(eos) if eos else None  # None: the library adds an EOS id past ``width``, never in a row
        bos_token_id = tokenizer.bos_token_id
        special_token_ids = special

        def __call__(self, text):
            if isinstance(text, bytes):
                raise TypeError("text only")
            return tokenizer(text, add_special_tokens=False).input_ids

    source = Source()
    source.tokens = tokens
    llt = llg.LLTokenizer(llg.TokenizerWrapper(source), eos_token=sorted(eos) or None)
    return Vocabulary(llt, width, eos, canonical=False)


def token_bytes(tokenizer, width: int) -> list[bytes]:
    """Every id's bytes, ``width`` of them: a token's text as it decodes after an ordinary token (so a
    word-level or SentencePiece token keeps its leading space), a ``<0xNN>`` token its byte, a special
    token its name (the library marks it special), an id past the tokenizer nothing (never allowed).

    Example (the tests' word-level tokenizer): ``decode([w0, w7]) == "w0 w7"`` → ``w7`` is ``b" w7"``.
    """
    special = set(tokenizer.all_special_ids)
    size = min(len(tokenizer), width)
    anchor = next((i for i in range(size) if i not in special and tokenizer.decode([i])), None)
    if anchor is None:
        raise ParadecError("the tokenizer has no ordinary token: structured output cannot read its vocabulary")
    base = tokenizer.decode([anchor])
    out: list[bytes] = []
    for i in range(size):
        name = tokenizer.convert_ids_to_tokens(i)
        if i in special:
            out.append((name or "").encode())
            continue
        byte = _BYTE_TOKEN.fullmatch(name or "")
        if byte:
            out.append(bytes([int(byte.group(1), 16)]))
            continue
        text = tokenizer.decode([anchor, i])
        out.append((text[len(base):] if text.startswith(base) else tokenizer.decode([i])).encode())
    return out + [b""] * (width - size)
