"""The schedules of a training run: the learning rate and the KL weight at each step.

Both are functions of the step and the settings alone, so a resumed run (or a later leg with
changed settings) follows them without any state of its own.
"""

from __future__ import annotations

from napari_probunet.training.settings import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then step decay at the milestones (fractions of ``cfg.steps``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * cfg.lr_gamma ** sum(step >= m * cfg.steps for m in cfg.lr_milestones)


def beta_at(step: int, cfg: TrainConfig, beta: float) -> float:
    """The KL weight at ``step``: ``cfg.beta_start * beta`` for ``cfg.beta_hold_steps``, then a
    linear ramp to ``beta`` over ``cfg.beta_warmup_steps``, then ``beta``."""
    ramp = step - cfg.beta_hold_steps
    if ramp >= cfg.beta_warmup_steps:
        return beta
    frac = ramp / cfg.beta_warmup_steps if ramp > 0 else 0.0
    return beta * (cfg.beta_start + (1.0 - cfg.beta_start) * frac)
