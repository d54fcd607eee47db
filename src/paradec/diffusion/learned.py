"""A learned commit filter (Learn2PD-style): a tiny model, trained on the dLLM's own decoding traces,
that says which masked positions already hold their final token.

Traces come from the reference decode (one token per step): at every step, each masked position's
features (``features``) and whether its current candidate equals the token the reference decode
finally put there. The filter is a two-layer MLP over those features; decoding commits the
positions it scores at or above ``threshold`` (and always the most confident one).

Train one for any diffusion LM (prompts: a JSON-lines file of strings, or the synthetic tasks) with the
trainer, ``paradec.train.commit_filter``:

    python -m paradec.train.commit_filter --model DIR --out DIR/commit_filter.safetensors [--prompts FILE]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ParadecError
from ..options import PATH, check_number
from . import rules
from .decoders import Decoder, DecoderConfig, Selection, StepView, register

FEATURES = ("confidence", "second", "gap", "entropy", "position", "progress", "left_decided", "right_decided",
            "left_confidence", "right_confidence", "left_run")
FILENAME = "commit_filter.safetensors"


def features(view: StepView) -> torch.Tensor:
    """(n, len(FEATURES)) float32 for the block's n positions (only masked rows are used).

    confidence, second: the two highest probabilities; gap: their logit difference / 10, clipped to 3;
    entropy / log(vocab); position in the block and the block's decided fraction, both in [0, 1];
    whether each neighbour is decided (left of the block: yes; right: no) and its confidence if not
    (1 if decided); left_run: decided positions immediately to the left / n.
    """
    logits = view.logits.to(torch.float64)
    n, vocab = logits.shape
    p = torch.softmax(logits, -1)
    top = p.topk(2, -1).values
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1) / math.log(vocab)
    gap = (rules.top2_gap(logits) / 10).clamp(max=3)
    decided = ~view.masked
    conf = torch.where(decided, torch.ones(n, dtype=torch.float64), top[:, 0])
    left_decided = torch.cat([torch.ones(1, dtype=torch.bool), decided[:-1]])
    right_decided = torch.cat([decided[1:], torch.zeros(1, dtype=torch.bool)])
    left_conf = torch.cat([torch.ones(1, dtype=torch.float64), conf[:-1]])
    right_conf = torch.cat([conf[1:], torch.zeros(1, dtype=torch.float64)])
    run, runs = 0, []
    for i in range(n):
        runs.append(run)
        run = run + 1 if bool(decided[i]) else 0
    cols = [top[:, 0], top[:, 1], gap, entropy, torch.arange(n) / max(n - 1, 1), torch.full((n,), view.progress),
            left_decided.double(), right_decided.double(), left_conf, right_conf, torch.tensor(runs) / n]
    return torch.stack([c.to(torch.float64) for c in cols], 1).float()


class CommitFilter(torch.nn.Module):
    """features (m, F) → probability (m,) that the candidate is final."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x).squeeze(-1))

    def save(self, path: Path, meta: dict) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata={"features": ",".join(FEATURES), "meta": json.dumps(meta)})

    @classmethod
    def load(cls, path: Path) -> "CommitFilter":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            names = (f.metadata() or {}).get("features", "")
        if names != ",".join(FEATURES):
            raise ParadecError(f"the commit filter '{path}' was trained on other features ({names or 'unknown'}); retrain it")
        state = load_file(str(path))
        model = cls(hidden=state["net.0.weight"].shape[0])
        model.load_state_dict(state)
        return model.eval()


@dataclass(frozen=True)
class LearnedConfig(DecoderConfig):
    threshold: float = 0.9  # commit where the filter's probability is at least this
    filter: str | None = field(default=None, metadata=PATH)  # path of the filter; default: commit_filter.safetensors in the model's directory

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "threshold", 0.0, 1.0)
        if self.filter is not None and not isinstance(self.filter, str):
            raise ValueError(f"filter must be a path, got {self.filter!r}")


@register
class Learned(Decoder):
    name = "learned"
    Config = LearnedConfig

    def __init__(self, model, config: LearnedConfig):
        super().__init__(model, config)
        path = Path(config.filter) if config.filter else (Path(model.directory) / FILENAME if model.directory else None)
        if path is None or not path.is_file():
            raise ParadecError(f"no commit filter for '{model.name}' ({path or 'no model directory'}); train one with: "
                               f"python -m paradec.train.commit_filter --model MODEL --out PATH")
        self.filter = CommitFilter.load(path)

    def select(self, view: StepView) -> Selection:
        _, confidence = view.candidates()
        order = rules.ranked(confidence)
        with torch.inference_mode():
            score = self.filter(features(view))
        return Selection.of(view, order[:1] + [i for i in order[1:] if score[i] >= self.config.threshold])
