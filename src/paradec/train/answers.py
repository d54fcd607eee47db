"""The target's own answers to prompts built from held-out-safe records: text that looks like what a
drafter sees when it runs (a chat prompt, then the model's reply), labelled like every other chunk.

Prompts come from the same records and files as ``sources.py`` (never the benchmark's): a question
(with its passage or options when the record has them), a document to summarise, a sentence to
translate, a Python function (signature and docstring) to complete. Answers are greedy, generated
through paradec's own loop with a lossless method (so they are the model's greedy answers exactly,
only faster), and appended to a JSON-lines file one by one: an interrupted run resumes there.
"""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path
from typing import Callable, Iterator

from .sources import HeldOut, code_files, record_text, text_records

MAX_PASSAGE = 1500  # characters of a passage or document put into a prompt
LANGUAGES = ("French", "Spanish", "German")


def _field(record: dict, *names: str) -> str:
    for n in names:
        value = record.get(n)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def text_prompt(record, rng: random.Random) -> str | None:
    """One instruction from a data-set record, or None when the record fits no template."""
    if not isinstance(record, dict):
        return None
    question = _field(record, "question")
    passage = _field(record, "passage", "context", "contract")[:MAX_PASSAGE]
    options = _field(record, "options")
    document = _field(record, "document", "dialogue", "src", "section_text")[:MAX_PASSAGE]
    text = _field(record, "text")
    if question and passage:
        lead = rng.choice(["Use the text below to answer the question.", "Read this and answer the question that follows."])
        return f"{lead}\n\n{passage}\n\nQuestion: {question}"
    if question and options:
        return f"{question}\n{options}\n\n" + rng.choice(["Pick the best option and explain why.", "Which option is right? Explain."])
    if question:
        return question if rng.random() < 0.5 else f"{rng.choice(['Please answer:', 'Question:'])} {question}"
    if document:
        return f"{rng.choice(['Summarize this text briefly.', 'Give a short summary of the following.'])}\n\n{document}"
    if text and len(text.split()) <= 40:
        return f"Translate into {rng.choice(LANGUAGES)}:\n\n{text}"
    if text:
        return f"{rng.choice(['What is the main point of this text?', 'Write a short reply to this.'])}\n\n{text[:MAX_PASSAGE]}"
    return None


def functions(source: str) -> Iterator[str]:
    """Signature + docstring of each documented top-level function of a Python file (the body left out)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) and node.body:
            doc = node.body[0]
            if isinstance(doc, ast.Expr) and doc.end_lineno and doc.end_lineno - node.lineno < 40:
                yield "\n".join(lines[node.lineno - 1 : doc.end_lineno])


def prompts(held: HeldOut, seed: int, roots: dict[str, Path] | None = None) -> Iterator[tuple[str, str]]:
    """(label, prompt) pairs, text and code alternating (three text prompts per code prompt), in a seeded order."""
    rng = random.Random(seed)
    texts = ((label, text_prompt(r, rng)) for label, r in text_records(held, seed, roots))
    texts = ((label, p) for label, p in texts if p and not held.derived(p))
    codes = ((f"{label}:{i}", f"Complete the following Python function.\n\n```python\n{fn}\n```")
             for label, src in code_files(held, seed, roots) for i, fn in enumerate(functions(src)))
    codes = ((label, p) for label, p in codes if not held.derived(p))
    while True:
        batch = [next(texts, None), next(texts, None), next(texts, None), next(codes, None)]
        batch = [b for b in batch if b is not None]
        if not batch:
            return
        yield from batch


def generate_answers(load_model: Callable[[], object], held: HeldOut, count: int, max_new_tokens: int, path: Path,
                     seed: int, method: str = "recycling", on_answer: Callable[[], None] | None = None,
                     roots: dict[str, Path] | None = None) -> list[dict]:
    """``count`` answers (token ids of the chat prompt and of the reply), appended to ``path`` as they
    come; those already in ``path`` (an earlier, interrupted run) are kept and not generated again.
    ``load_model`` gives the model that answers; it is called only if an answer is missing."""
    from ..api import encode_prompt, generate

    done = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    for _ in done[:count]:
        if on_answer:
            on_answer()
    if len(done) >= count:
        return done[:count]
    model = load_model()
    stream = prompts(held, seed, roots)
    for _ in range(len(done)):  # the same seed gives the same prompts: skip those answered
        next(stream, None)
    with open(path, "a", encoding="utf-8") as out:
        for label, prompt in stream:
            if len(done) >= count:
                break
            ids = encode_prompt(model, prompt, chat=True)
            if len(ids) + max_new_tokens > model.max_length:
                ids = ids[-(model.max_length - max_new_tokens):]
            result = generate(model, ids, method, max_new_tokens=max_new_tokens)
            eos = sorted(model.eos_token_ids)[:1] if result.stats.stop_reason == "eos" else []
            row = {"source": label, "prompt": ids, "answer": result.token_ids + eos}
            out.write(json.dumps(row) + "\n")
            out.flush()
            done.append(row)
            if on_answer:
                on_answer()
    return done[:count]
