"""Learning-rate schedule: linear warm-up, then linear decay (Phi-4 pretraining)."""

from __future__ import annotations


def lr_at(step: int, peak: float, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR for optimizer step `step` (0-based) of `total_steps`."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay = max(total_steps - warmup_steps, 1)
    frac = min(max(step - warmup_steps, 0) / decay, 1.0)
    return peak * (min_ratio + (1.0 - min_ratio) * (1.0 - frac))
