"""The training loop of a drafting head: soft labels from the target's features, checkpoints, resume.

Losses (per position t of a chunk, p_t = the target's next-token distribution = softmax of its LM
head over the head's token subset applied to the feature f_t):

- eagle: the head reads [e(x_{t+1}), f_t] and predicts f_{t+1}: smooth-L1 to f_{t+1} plus
  ``cls_weight`` × KL(p_{t+1} || its readout) (EAGLE's loss, with KL for cross-entropy: same gradient). Then it is *unrolled*
  (``unroll`` > 1, EAGLE-3's training-time test): step s reads its own step s-1 prediction instead of
  the real feature and attends to the real rows up to t-s plus its own earlier predicted rows, which
  are exactly the rows and masks a depth-s draft node sees (``drafters/eagle.py``).
- medusa: block k reads f_t and is trained against p_{t+k} (the token k + 1 places ahead), by KL.

Deterministic: the batch of step i is a function of (seed, i) and the feature noise of step i is
drawn from a generator seeded with (seed, i); a checkpoint holds the head, the optimizer and the step,
so a resumed run computes what an uninterrupted one does.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..drafters import target_parts
from ..drafters.head_net import EagleHead, HeadConfig, MedusaHeads, build
from ..options import check_int, check_number
from .schedule import warmup_cosine

BIG = 1 << 40  # no upper bound worth naming


@dataclass(frozen=True)
class TrainConfig:
    """kind: "eagle" or "medusa"; subset: tokens the readout covers (the most frequent in the data);
    depth: medusa heads; unroll: eagle steps trained on their own predictions (1 = EAGLE-1);
    epochs, batch (chunks per step), lr (AdamW, warm-up then cosine), noise (uniform noise on input
    features, relative to their RMS), cls_weight (eagle: weight of the distribution loss);
    checkpoint_every: steps between checkpoints."""

    kind: str = "eagle"
    subset: int = 4096
    depth: int = 4
    unroll: int = 3
    epochs: float = 2.0
    batch: int = 4
    lr: float = 1e-3
    warmup: int = 20
    noise: float = 0.1
    cls_weight: float = 0.1
    seed: int = 0
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        if self.kind not in ("eagle", "medusa"):
            raise ValueError(f"kind must be eagle or medusa, got {self.kind!r}")
        for name in ("subset", "depth", "unroll", "batch", "checkpoint_every"):
            check_int(self, name, 1, BIG)
        check_int(self, "warmup", 0, BIG)
        check_int(self, "seed", 0, BIG)
        for name in ("epochs", "lr"):
            check_number(self, name, 0, BIG)
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be > 0, got 0")
        check_number(self, "noise", 0, BIG)
        check_number(self, "cls_weight", 0, BIG)


def frequent_tokens(tokens: torch.Tensor, size: int, vocab: int, always: list[int]) -> torch.Tensor:
    """The ``size`` most frequent token ids of ``tokens`` (ties: lower id first) plus ``always``, sorted."""
    counts = torch.bincount(tokens.flatten().to(torch.int64), minlength=vocab).to(torch.float64)
    counts -= torch.arange(vocab, dtype=torch.float64) * 1e-9  # stable tie-break
    counts[torch.tensor(always, dtype=torch.int64)] = math.inf
    return torch.topk(counts, min(size, vocab)).indices.sort().values


class Trainer:
    """Trains one head on labelled chunks; ``run`` resumes from ``checkpoint`` if it exists."""

    def __init__(self, model, config: TrainConfig, tokens: torch.Tensor, features: torch.Tensor,
                 val: list[bool], checkpoint: Path):
        self.model, self.config, self.checkpoint = model, config, checkpoint
        self.tokens = tokens.to(torch.int64)  # (N, T)
        self.features = features  # (N, T, d) float16
        self.train_idx = [i for i, v in enumerate(val) if not v]
        self.val_idx = [i for i, v in enumerate(val) if v]
        shape = target_parts.layer_shape(model)
        always = sorted(model.eos_token_ids)
        ids = frequent_tokens(self.tokens[self.train_idx], config.subset, model.vocab_size, always)
        hc = HeadConfig(kind=config.kind, subset=len(ids), depth=config.depth if config.kind == "medusa" else 0, **shape)
        torch.manual_seed(config.seed)
        self.head = build(hc, ids)
        with torch.no_grad():
            self.head.readout.weight.copy_(target_parts.lm_head_rows(model, ids))
        self.head.readout.requires_grad_(False)
        self.embed = target_parts.embed_rows(model, torch.arange(model.vocab_size))  # (vocab, d), frozen
        params = [p for p in self.head.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        self.steps = max(1, math.ceil(config.epochs * len(self.train_idx) / config.batch))
        self.step = 0
        if checkpoint.is_file():
            state = torch.load(checkpoint, weights_only=True)
            if state["config"] != asdict(config):
                raise ValueError(f"{checkpoint} was written with other training options: {state['config']}")
            self.head.load_state_dict(state["head"])
            self.opt.load_state_dict(state["opt"])
            self.step = state["step"]

    def batch(self, step: int) -> list[int]:
        """Chunk indices of ``step``: epoch e reads the training chunks in a shuffle seeded by (seed, e)."""
        n, b = len(self.train_idx), self.config.batch
        out = []
        for j in range(step * b, step * b + b):
            epoch, at = divmod(j, n)
            order = list(self.train_idx)
            random.Random(f"{self.config.seed}:{epoch}").shuffle(order)
            out.append(order[at])
        return out

    def lr(self, step: int) -> float:
        return warmup_cosine(step, self.steps, self.config.warmup, self.config.lr)

    def run(self, on_step: Callable[[int, int, dict], None] | None = None) -> dict:
        """Train to the end (from the checkpoint's step); returns the validation metrics."""
        self.head.train()
        while self.step < self.steps:
            for group in self.opt.param_groups:
                group["lr"] = self.lr(self.step)
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
            loss, metrics = self.loss(self.batch(self.step), gen)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in self.head.parameters() if p.requires_grad], 1.0)
            self.opt.step()
            self.step += 1
            if self.step % self.config.checkpoint_every == 0 or self.step == self.steps:
                self.save_checkpoint()
            if on_step:
                on_step(self.step, self.steps, metrics)
        return self.validate()

    def save_checkpoint(self) -> None:
        state = {"head": self.head.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                 "config": asdict(self.config)}
        tmp = self.checkpoint.with_name(f".{self.checkpoint.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)

    def loss(self, idx: list[int], gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        tokens = self.tokens[idx]  # (B, T)
        feats = self.features[idx].to(torch.float32)  # (B, T, d)
        if self.config.kind == "eagle":
            return eagle_loss(self.head, tokens, feats, self.embed, self.config, gen)
        return medusa_loss(self.head, feats, gen, self.config.noise)

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean top-1 agreement of the head with the target per draft depth on the validation chunks."""
        self.head.eval()
        totals: dict[str, float] = {}
        for i in self.val_idx:
            _, metrics = self.loss([i], None)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v / len(self.val_idx)
        self.head.train()
        return totals


def _noisy(feats: torch.Tensor, noise: float, gen: torch.Generator | None) -> torch.Tensor:
    if gen is None or noise == 0:
        return feats
    rms = feats.pow(2).mean(-1, keepdim=True).sqrt()
    return feats + noise * rms * (torch.rand(feats.shape, generator=gen) * 2 - 1)


def _kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) per row: the cross-entropy against the target distribution minus its
    entropy (the same gradient; 0 when the head matches the target). logits, target: (..., V')."""
    return (target * (torch.log(target.clamp(min=1e-30)) - F.log_softmax(logits, -1))).sum(-1)


def unroll_mask(M: int, s: int) -> torch.Tensor:
    """(M, (s + 1) M) bool: what row t of unroll step s sees among [step-0 rows, ..., step-s rows]:
    step-0 (real) rows at positions <= t - s, step-k rows (1 <= k <= s) at position t - s + k (its
    predicted ancestors and, for k = s, itself). Step 0 is the plain causal mask."""
    t = torch.arange(M)[:, None]
    j = torch.arange(M)[None, :]
    blocks = [j <= t - s] + [j == t - s + k for k in range(1, s + 1)]
    return torch.cat(blocks, dim=1)


def unrolled(head: EagleHead, tokens: torch.Tensor, inputs: torch.Tensor, embed: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The head's predictions at each unroll step: step s row t ≈ f_{t+1} from what a depth-s draft
    node would read (valid for t >= s). tokens (B, T), inputs (B, T-1, d) = f_0 .. f_{T-2};
    returns ``steps`` tensors (B, T-1, d)."""
    M = inputs.shape[1]
    embeds = embed[tokens[:, 1:]]  # (B, M, d): row t reads x_{t+1}
    positions = torch.arange(M)
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    x = inputs
    for s in range(steps):
        past = (torch.cat(keys, 2), torch.cat(values, 2)) if keys else None
        out, (k, v) = head(x, embeds, positions, past, unroll_mask(M, s) if s else None)
        keys.append(k)
        values.append(v)
        outs.append(out)
        x = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)  # step s+1 row t reads step s's output at t-1
    return outs


def eagle_loss(head: EagleHead, tokens: torch.Tensor, feats: torch.Tensor, embed: torch.Tensor,
               config: TrainConfig, gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
    """tokens (B, T), feats (B, T, d); rows t = 0 .. T-2 read [e(x_{t+1}), f_t] and predict f_{t+1}."""
    M = feats.shape[1] - 1
    targets = feats[:, 1:]  # (B, M, d)
    with torch.no_grad():
        p = F.softmax(head.readout(targets), -1)  # (B, M, V'): the target's next-token distributions
        want = p.argmax(-1)
    total = torch.zeros(())
    metrics: dict[str, float] = {}
    outs = unrolled(head, tokens, _noisy(feats[:, :-1], config.noise, gen), embed, config.unroll)
    for s, out in enumerate(outs):
        valid = slice(s, M)  # row t of step s needs t >= s real positions before it
        logits = head.readout(out[:, valid])
        loss = F.smooth_l1_loss(out[:, valid], targets[:, valid]) + config.cls_weight * _kl(logits, p[:, valid]).mean()
        total = total + loss / config.unroll
        metrics[f"acc@{s + 1}"] = float((logits.argmax(-1) == want[:, valid]).float().mean())
        metrics[f"loss@{s + 1}"] = float(loss.detach())
    return total, metrics


def medusa_loss(head: MedusaHeads, feats: torch.Tensor, gen: torch.Generator | None,
                noise: float) -> tuple[torch.Tensor, dict]:
    """feats (B, T, d); block k (1-based) at position t is trained against p_{t+k}."""
    T = feats.shape[1]
    with torch.no_grad():
        p = F.softmax(head.readout(feats), -1)  # (B, T, V')
        want = p.argmax(-1)
    out = head(_noisy(feats, noise, gen))  # (B, T, depth, d)
    total = torch.zeros(())
    metrics: dict[str, float] = {}
    depth = out.shape[2]
    for k in range(1, depth + 1):
        logits = head.readout(out[:, : T - k, k - 1])
        ce = _kl(logits, p[:, k:]).mean()
        total = total + ce / depth
        metrics[f"loss@{k}"] = float(ce.detach())
        metrics[f"acc@{k}"] = float((logits.argmax(-1) == want[:, k:]).float().mean())
    return total, metrics
