"""The learning-rate schedule every training loop here uses (drafter heads, the demo dLLM)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, steps: int, warmup: int, lr: float, floor: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` down to ``floor * lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
