"""Learning-rate and MTP-weight schedules: pure functions of the step (1-based), so a resumed
run needs nothing but the step to be back on the same curve."""

from __future__ import annotations

import math

from stages.common.training.config import MTPWeightConfig, ScheduleConfig


def learning_rate(step: int, total_steps: int, peak: float, cfg: ScheduleConfig) -> float:
    """LR used for optimizer step ``step`` (1..total_steps)."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return peak * step / cfg.warmup_steps
    if cfg.kind == "constant":
        return peak
    floor = peak * cfg.min_lr_ratio
    if cfg.kind == "cosine":
        start, span = cfg.warmup_steps, total_steps - cfg.warmup_steps
    else:  # wsd: stable until the decay window, which never starts before warmup ends
        span = max(1, round(total_steps * cfg.decay_fraction))
        start = max(cfg.warmup_steps, total_steps - span)
        span = total_steps - start
        if step <= start:
            return peak
    progress = min(1.0, (step - start) / max(1, span))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def mtp_weight(step: int, total_steps: int, cfg: MTPWeightConfig) -> float:
    """λ for step ``step``: 0 up to ``start_at`` of the run, ``initial`` up to ``switch_at``, then
    ``final``. λ = 0 means the step skips the MTP modules."""
    if step <= cfg.start_at * total_steps:
        return 0.0
    return cfg.initial if step <= cfg.switch_at * total_steps else cfg.final
