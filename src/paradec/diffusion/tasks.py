"""A synthetic task family modelled on ParallelBench: the embedded demo dLLM's training data and the
``paradec bench --suite parallel`` benchmark.

Each task asks for a short list. Some have exactly one answer whose tokens depend only on the prompt
(copy, reverse, sort, the waiting line, fill-in): decoding positions in parallel costs nothing there.
Others accept many answers (shuffle, a person joining the line *anywhere*, a Latin square with few
givens): the model's per-position marginals then mix several answers, and committing positions in
parallel can mix them into a non-answer (``dependent`` = True). That is the trade-off ParallelBench
measures; ``check`` scores any answer, not one reference.

    copy : d a c                → d a c
    reverse : d a c             → c a d
    sort : d a c                → a c d
    shuffle : d a c             → any order of d a c
    line : a b c d ; leave b    → a c d         (also: join x, front c)
    line : a b c ; join x anywhere → x inserted anywhere (also: leave any)
    fill : cat mat | the _ sat on the _ → the cat sat on the mat
    latin : 1 _ _ / _ _ _ / _ _ 2 → a 3x3 Latin square with those givens
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable

LETTERS = "abcdefghij"  # few symbols and short lists: a model small enough for one CPU core learns them in minutes
FILL_WORDS = ("cat", "dog", "fox", "bird", "mat", "log", "box", "hill")
SHORTEST, LONGEST = 4, 4  # list lengths: one length, so each task fixes where an answer token's source is
TEMPLATES = ("the _ sat on the _", "a _ ran to the _", "the _ _ is on the _", "my _ likes the _", "a _ and a _ met")
SYMBOLS = (":", ";", "|", "/", "_", "1", "2", "3", "4", "5", "6", "7", "8", "9")
WORDS = ("copy", "reverse", "sort", "shuffle", "line", "leave", "join", "front", "anywhere", "any", "fill", "latin",
         "the", "a", "sat", "on", "ran", "to", "is", "my", "likes", "and", "met")
EOS, MASK, UNK, ANSWER = "<|endoftext|>", "<|mdm_mask|>", "<unk>", "<|answer|>"  # ANSWER ends every prompt


def vocabulary() -> list[str]:
    """Every token of the demo tokenizer, in id order: EOS, MASK, UNK, ANSWER, then the words."""
    return list(dict.fromkeys([EOS, MASK, UNK, ANSWER, *LETTERS, *SYMBOLS, *WORDS, *FILL_WORDS]))


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    answer: str  # one reference answer (for training and display)
    check: Callable[[str], bool]  # is this output a correct answer?


def _items(rng: random.Random) -> list[str]:
    return rng.sample(LETTERS, rng.randint(SHORTEST, LONGEST))


def _exact(answer: str) -> Callable[[str], bool]:
    return lambda out: out.split() == answer.split()


def copy(rng):
    xs = _items(rng)
    return Example("copy", "copy : " + " ".join(xs), " ".join(xs), _exact(" ".join(xs)))


def reverse(rng):
    xs = _items(rng)
    return Example("reverse", "reverse : " + " ".join(xs), " ".join(xs[::-1]), _exact(" ".join(xs[::-1])))


def sort(rng):
    xs = _items(rng)
    return Example("sort", "sort : " + " ".join(xs), " ".join(sorted(xs)), _exact(" ".join(sorted(xs))))


def shuffle(rng):
    xs = _items(rng)
    out = xs[:]
    rng.shuffle(out)
    return Example("shuffle", "shuffle : " + " ".join(xs), " ".join(out), lambda o: sorted(o.split()) == sorted(xs))


def line(rng):
    xs = _items(rng)
    op = rng.choice(("leave", "join", "front"))
    if op == "join":
        who = rng.choice([c for c in LETTERS if c not in xs])
        out = xs + [who]
    else:
        who = rng.choice(xs)
        out = [c for c in xs if c != who]
        out = [who] + out if op == "front" else out
    prompt = f"line : {' '.join(xs)} ; {op} {who}"
    return Example("line", prompt, " ".join(out), _exact(" ".join(out)))


def line_anywhere(rng):
    xs = _items(rng)
    if rng.random() < 0.5:
        who = rng.choice([c for c in LETTERS if c not in xs])
        at = rng.randint(0, len(xs))
        out = xs[:at] + [who] + xs[at:]
        prompt = f"line : {' '.join(xs)} ; join {who} anywhere"

        def check(o: str) -> bool:
            o = o.split()
            return o.count(who) == 1 and [c for c in o if c != who] == xs
    else:
        at = rng.randrange(len(xs))
        out = xs[:at] + xs[at + 1 :]
        prompt = f"line : {' '.join(xs)} ; leave any"

        def check(o: str) -> bool:
            o = o.split()
            return len(o) == len(xs) - 1 and any(xs[:i] + xs[i + 1 :] == o for i in range(len(xs)))
    return Example("line_anywhere", prompt, " ".join(out), check)


def fill(rng):
    template = rng.choice(TEMPLATES)
    words = [rng.choice(FILL_WORDS) for _ in range(template.count("_"))]
    it = iter(words)
    out = " ".join(next(it) if w == "_" else w for w in template.split())
    return Example("fill", f"fill : {' '.join(words)} | {template}", out, _exact(out))


SQUARES = [[[(r + c * s + shift) % 3 + 1 for c in range(3)] for r in range(3)] for s in (1, 2) for shift in range(3)]
SQUARES = [[[sq[perm[r]][c] for c in range(3)] for r in range(3)] for sq in SQUARES for perm in ((0, 1, 2), (1, 0, 2))]


def _grid(cells: list[str]) -> str:
    return " / ".join(" ".join(cells[r * 3 : r * 3 + 3]) for r in range(3))


def latin(rng):
    square = rng.choice(SQUARES)
    cells = [str(v) for row in square for v in row]
    given = set(rng.sample(range(9), rng.randint(0, 5)))
    puzzle = [c if i in given else "_" for i, c in enumerate(cells)]

    def check(o: str) -> bool:
        o = [t for t in o.split() if t != "/"]
        if len(o) != 9 or any(t not in "123" for t in o) or any(puzzle[i] not in ("_", o[i]) for i in range(9)):
            return False
        rows = [o[r * 3 : r * 3 + 3] for r in range(3)]
        return all(len(set(r)) == 3 for r in rows) and all(len({rows[r][c] for r in range(3)}) == 3 for c in range(3))

    return Example("latin", "latin : " + _grid(puzzle), _grid(cells), check)


TASKS: dict[str, Callable[[random.Random], Example]] = {
    "copy": copy, "reverse": reverse, "sort": sort, "shuffle": shuffle, "line": line,
    "line_anywhere": line_anywhere, "fill": fill, "latin": latin,
}
DEPENDENT = {"shuffle", "line_anywhere", "latin"}  # many valid answers: positions depend on each other


HELD_OUT = 8  # one prompt in 8, chosen by a hash of its text, is never trained on: the benchmark's share


def held_out(prompt: str) -> bool:
    """Whether ``prompt`` is in the held-out share of the task space. The spaces are small (a copy
    prompt is one of 5,040), so training would otherwise see every benchmark example."""
    return hashlib.sha256(prompt.encode()).digest()[0] % HELD_OUT == 0


def draw(task: str, rng: random.Random, split: str) -> Example:
    """One example of ``task`` from the ``split``: "train" (never held out) or "test" (held out)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    while True:
        ex = TASKS[task](rng)
        if held_out(ex.prompt) == (split == "test"):
            return ex


def sample_examples(count: int, seed: int, tasks: list[str] | None = None, split: str = "test") -> list[Example]:
    """``count`` examples of the ``split`` drawn round-robin over ``tasks`` (default: all), deterministic
    in ``seed``. The benchmark reads "test", training and the commit filter's traces "train"."""
    rng = random.Random(seed)
    names = tasks or list(TASKS)
    return [draw(names[i % len(names)], rng, split) for i in range(count)]
