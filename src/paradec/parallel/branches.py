"""Branches of one prompt decoded together: n samples, First Finish Search, parallel extraction,
reasoning branches. Each is a group of ``Sequence``s on one ``Batch``: the shared prefix is read once,
every step is one forward for all branches, each branch keeps its own drafter and random source.

Seeds: branch i samples with ``seed + i`` (so branch 0 of a seeded call is the single seeded
generation); without a seed every branch draws its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api import Prompt, encode_prompt, prepare
from ..decode import Result, Sequence, run
from ..drafters import Drafter
from ..errors import ParadecError
from ..model import DEFAULT_DTYPE, Model, load
from .batch import Batch, decode_together

EXTRACT_INSTRUCTION = ("Extract the named entities of each type from the text below. List them separated by "
                       "semicolons, or write none.")
EXTRACT_FIELD = "{field}:"  # what each branch reads after the shared prefix; the value follows
REASON_BRANCH = "Sub-question: {question}\nAnswer:"
REASON_JOIN = "Final answer:"


def _model(model: Model | str) -> Model:
    return model if isinstance(model, Model) else load(model, DEFAULT_DTYPE)


def branches(model: Model, prompts: list[list[int]], method: str | Drafter, seed: int | None, **kwargs) -> list[Sequence]:
    """One checked ``Sequence`` per prompt (token ids), each with a drafter of its own; branch i gets
    ``seed + i``. ``kwargs``: those of ``paradec.prepare``."""
    if isinstance(method, Drafter) and len(prompts) > 1:
        raise ParadecError("several branches need a method name (each branch gets a drafter of its own), "
                           "not a Drafter instance")
    return [prepare(model, ids, method, seed=None if seed is None else seed + i, **kwargs)
            for i, ids in enumerate(prompts)]


def generate_n(model: Model | str, prompt: Prompt, n: int = 4, method: str | Drafter = "auto", *,
               seed: int | None = None, chat: bool = False, **kwargs) -> list[Result]:
    """``n`` samples of one prompt, decoded together (one forward per step for all); the prompt is
    read once. Keyword arguments as ``paradec.generate``; greedy samples are all the same text.

    >>> [r.text for r in paradec.generate_n(m, "Once upon a time", n=4, temperature=0.8, seed=1)]
    """
    model = _model(model)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ParadecError(f"n must be an integer >= 1, got {n!r}")
    ids = encode_prompt(model, prompt, chat)
    return decode_together([branches(model, [ids] * n, method, seed, **kwargs)])


@dataclass
class FirstFinish:
    """The outcome of First Finish Search: ``results[winner]`` finished first; the others hold their
    state at that moment (text and stats so far, ``stop_reason`` "outrun") unless they ended in the
    same step."""

    winner: int
    results: list[Result]

    @property
    def result(self) -> Result:
        return self.results[self.winner]


ENDED = ("eos", "stop")  # a branch that ends by itself beats one cut at the token limit in the same step


def first_finish(model: Model | str, prompt: Prompt, n: int = 4, method: str | Drafter = "auto", *,
                 seed: int | None = None, chat: bool = False, **kwargs) -> FirstFinish:
    """First Finish Search: sample ``n`` branches together and stop at the first that ends (in its
    step, one that ended by EOS or a stop string before one cut at the token limit, then the lowest
    index). Short answers tend to be the right ones; the others' partial state comes back too."""
    model = _model(model)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ParadecError(f"n must be an integer >= 1, got {n!r}")
    seqs = branches(model, [encode_prompt(model, prompt, chat)] * n, method, seed, **kwargs)
    batch = Batch()
    batch.add(*seqs)
    winner = 0
    while len(batch):
        outcome = batch.step()
        if outcome.failed:
            raise outcome.failed[0][1]
        if outcome.finished:
            ended = sorted(outcome.finished, key=lambda s: (s.stats.stop_reason not in ENDED, seqs.index(s)))
            winner = seqs.index(ended[0])
            break
    for seq in batch.sequences:
        batch.remove(seq)
        seq.finish()
        seq.stats.stop_reason = "outrun"
    return FirstFinish(winner, [s.result for s in seqs])


@dataclass
class Extraction:
    """Fields extracted from one text: ``fields[name]`` is the value its branch wrote (stripped);
    ``results[name]`` that branch's ``Result`` (token ids, stats)."""

    fields: dict[str, str]
    results: dict[str, Result]

    @property
    def forward_passes(self) -> int:
        """Forwards over all branches as decoded alone; together they need only the most of any branch."""
        return sum(r.stats.forward_passes for r in self.results.values())


def extract(model: Model | str, text: str, fields: list[str] | dict[str, str], method: str | Drafter = "auto", *,
            instruction: str = EXTRACT_INSTRUCTION, parallel: bool = True, max_new_tokens: int = 32,
            stop: list[str] | None = None, chat: bool = False, seed: int | None = None, **kwargs) -> Extraction:
    """Parallel extraction (PaDeLLM-NER style): one branch per field from the same prefix
    (``instruction`` + ``text``), each reading ``"<field>:"`` and writing that field's value up to a
    newline; all decoded together, then merged. ``fields``: names, or names → the label a branch
    reads (e.g. ``{"PER": "Persons"}``). ``parallel=False`` decodes the same branches one after
    another (the sequential baseline: same fields when greedy).
    """
    model = _model(model)
    labels = dict(fields) if isinstance(fields, dict) else {f: f for f in fields}
    if not labels:
        raise ParadecError("extract needs at least one field")
    prefix = encode_prompt(model, f"{instruction}\n\n{text.strip()}\n\n", chat)
    tok = model.tokenizer
    prompts = [prefix + tok(EXTRACT_FIELD.format(field=label), add_special_tokens=False).input_ids
               for label in labels.values()]
    seqs = branches(model, prompts, method, seed, max_new_tokens=max_new_tokens,
                    stop=["\n"] if stop is None else stop, **kwargs)
    results = decode_together([seqs]) if parallel else [_alone(s) for s in seqs]
    return Extraction({name: r.text.strip() for name, r in zip(labels, results)}, dict(zip(labels, results)))


def _alone(seq: Sequence) -> Result:
    for _ in run(seq):
        pass
    return seq.result


@dataclass
class Reasoning:
    """Independent sub-questions answered as branches, then joined: ``answers[i]`` answers
    ``sub_questions[i]``; ``final`` read them all."""

    answers: list[Result]
    final: Result


def reason(model: Model | str, question: str, sub_questions: list[str], method: str | Drafter = "auto", *,
           max_new_tokens: int = 64, answer_tokens: int = 128, stop: list[str] | None = None, chat: bool = False,
           seed: int | None = None, **kwargs) -> Reasoning:
    """Parallel reasoning branches: each sub-question is a branch after the shared ``question``
    (``"Sub-question: ...\\nAnswer:"``), decoded together (``max_new_tokens`` each, up to a blank line
    unless ``stop`` says otherwise); then one generation reads the question, every sub-question with
    its answer, and writes the final answer (``answer_tokens``)."""
    model = _model(model)
    if not sub_questions:
        raise ParadecError("reason needs at least one sub-question")
    head = f"{question.strip()}\n\n"
    prefix = encode_prompt(model, head, chat)
    tok = model.tokenizer
    prompts = [prefix + tok(REASON_BRANCH.format(question=q.strip()), add_special_tokens=False).input_ids
               for q in sub_questions]
    stop = ["\n\n"] if stop is None else stop
    answers = decode_together([branches(model, prompts, method, seed, max_new_tokens=max_new_tokens, stop=stop,
                                        **kwargs)])
    notes = "".join(REASON_BRANCH.format(question=q.strip()) + f" {a.text.strip()}\n\n"
                    for q, a in zip(sub_questions, answers))
    joined = prefix + tok(notes + REASON_JOIN, add_special_tokens=False).input_ids
    (final,) = branches(model, [joined], method, seed, max_new_tokens=answer_tokens, stop=stop, **kwargs)
    return Reasoning(answers, _alone(final))
