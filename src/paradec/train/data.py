"""Training data: documents cut into chunks of token ids, each labelled by ONE forward of the target.

A chunk is ``chunk`` tokens of one stream of documents (documents joined with the end-of-sequence
token between them). The label of a chunk is the target's feature at every position — its
final-normed hidden state, the vector its LM head reads — computed by one teacher-forced forward
over the chunk. The target's own next-token distribution at a position is the LM head applied to
that feature, so the training loop recomputes it (restricted to the head's token subset) instead
of storing a vocabulary-sized row per token: self-distillation without running ``generate``.

On disk (``DIR/data``), written once and resumable:

    chunks.safetensors   tokens (N, chunk) int32; chunks.json: per chunk its group, split and sources
    shard-00000.safetensors ...   features (n, chunk, d) float16 for chunks [i * SHARD, (i + 1) * SHARD)

A shard is written atomically when its chunks are labelled; a restarted run labels the missing ones.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from safetensors.torch import load_file, save_file

SHARD = 16  # chunks per shard file


@dataclass(frozen=True)
class Chunk:
    tokens: list[int]
    group: str  # "text", "code" or "answers"
    sources: tuple[str, ...]  # labels of the documents it holds (a part of)


def chunk_stream(docs: Iterable[tuple[str, list[int]]], size: int, eos: int, group: str) -> Iterator[Chunk]:
    """Cut documents (label, token ids), joined by ``eos``, into chunks of ``size`` tokens; the tail
    that does not fill a chunk is dropped."""
    buf: list[int] = []
    labels: list[str] = []
    for label, ids in docs:
        buf.extend(list(ids) + [eos])
        labels.append(label)
        while len(buf) >= size:
            yield Chunk(buf[:size], group, tuple(labels))
            buf = buf[size:]
            labels = [label] if buf else []


def take(chunks: Iterator[Chunk], tokens: int) -> list[Chunk]:
    """Chunks until ``tokens`` tokens (at least one chunk if there is one)."""
    out: list[Chunk] = []
    for c in chunks:
        out.append(c)
        if sum(len(x.tokens) for x in out) >= tokens:
            break
    return out


def split(chunks: list[Chunk], val_fraction: float, seed: int) -> tuple[list[Chunk], list[bool]]:
    """A seeded shuffle of ``chunks`` and which are validation (``val_fraction`` of each group, at least one
    per group of two or more)."""
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    chunks = [chunks[i] for i in order]
    val = [False] * len(chunks)
    for group in dict.fromkeys(c.group for c in chunks):
        idx = [i for i, c in enumerate(chunks) if c.group == group]
        n = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        for i in idx[:n]:
            val[i] = True
    return chunks, val


def save_chunks(directory: Path, chunks: list[Chunk], val: list[bool]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tokens = torch.tensor([c.tokens for c in chunks], dtype=torch.int32)
    _atomic(directory / "chunks.safetensors", lambda p: save_file({"tokens": tokens}, str(p)))
    meta = [{"group": c.group, "val": v, "sources": list(c.sources)} for c, v in zip(chunks, val)]
    _atomic(directory / "chunks.json", lambda p: p.write_text(json.dumps(meta)))


def load_chunks(directory: Path) -> tuple[torch.Tensor, list[dict]] | None:
    if not (directory / "chunks.json").is_file():
        return None
    return load_file(str(directory / "chunks.safetensors"))["tokens"], json.loads((directory / "chunks.json").read_text())


@torch.inference_mode()
def label(model, tokens: torch.Tensor, directory: Path, on_chunk: Callable[[], None] | None = None) -> None:
    """Write the feature shards missing in ``directory``: one forward of ``model`` per chunk of ``tokens`` (N, T).

    The forward runs every layer and the final norm but not the LM head (an exit head that keeps one
    column): the features are what is kept."""
    target = model.target(layers=model.runtime.layers, exit_head=lambda x: x[:, :1])
    for s in range(0, len(tokens), SHARD):
        path = directory / f"shard-{s // SHARD:05d}.safetensors"
        if path.is_file():
            if on_chunk:
                for _ in range(min(SHARD, len(tokens) - s)):
                    on_chunk()
            continue
        feats = []
        for row in tokens[s : s + SHARD].tolist():
            target.reset()
            _, hidden = target.forward(row, list(range(len(row))), hidden=True)
            target.commit([])
            feats.append(hidden.to(torch.float16))
            if on_chunk:
                on_chunk()
        _atomic(path, lambda p: save_file({"features": torch.stack(feats).contiguous()}, str(p)))


def load_features(directory: Path, count: int) -> torch.Tensor:
    """(count, T, d) float16: every shard's features, in chunk order."""
    shards = [load_file(str(directory / f"shard-{i:05d}.safetensors"))["features"] for i in range(-(-count // SHARD))]
    return torch.cat(shards)[:count]


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary name, so a killed run never leaves a half-written file under ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
