"""The learning-rate schedule: linear warmup, then cosine, WSD (warmup-stable-decay) or constant."""

from __future__ import annotations

import math

from .config import TrainConfig

# ===================================================================== schedule

def lr_at(cfg: TrainConfig, step: int, total_steps: int | None, time_fraction: float | None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then the schedule's shape.

    cosine: from lr down to the floor (lr * min_lr_ratio) over the whole run. wsd: hold lr, then fall
    linearly to the floor over the last `cooldown_frac` of the run. constant: lr.
    The run's progress is counted over `decay_steps`, else over the run's step count (from max_steps
    or max_tokens), else, for a run bounded only by max_time, over the wall clock, so that the cosine
    or the cooldown ends at the deadline.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    total = cfg.decay_steps or total_steps
    if total is not None:
        p = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    else:
        p = time_fraction or 0.0
    p = min(max(p, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.lr_schedule == "wsd":
        cool = cfg.cooldown_frac
        left = 1.0 - p  # share of the run still to go
        return cfg.lr if left >= cool else floor + (cfg.lr - floor) * (left / cool if cool > 0 else 0.0)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
