"""The settings of a training run and the recipe file that holds them.

A recipe is a TOML file with a ``[model]`` table (the fields of
:class:`~napari_probunet.model.config.ModelConfig`) and a ``[train]`` table (the fields of
:class:`TrainConfig`); ``probunet train`` takes one option per ``TrainConfig`` field on top of
it (:mod:`napari_probunet.cli.train`). :func:`check_settings` refuses what the training loop
cannot run with, before the first step.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from napari_probunet.errors import UserError
from napari_probunet.model.config import ModelConfig


@dataclass
class TrainConfig:
    """Training settings (``[train]`` in a recipe file).

    Defaults follow the original where it had one.
    """

    data: str = "synthetic:lesions?n=4000&seed=1&size=64"
    val_data: str | None = "synthetic:lesions?n=64&seed=2&size=64"
    steps: int = 10000
    batch_size: int = 8  # ~10 in the original
    lr: float = 1e-4  # the original's Adam learning rate
    lr_milestones: list[float] = field(default_factory=lambda: [0.6, 0.85])  # fractions of steps
    lr_gamma: float = 0.3  # multiply the lr by this at each milestone
    warmup_steps: int = 100
    weight_decay: float = 1e-5  # the original's L2 weight
    grad_clip: float = 100.0  # max gradient norm (guards against exploding KL)
    loss: str = "elbo"  # "elbo" (fixed beta, see model config) or "geco"
    geco_target: float = 0.05  # GECO: target mean per-pixel cross-entropy (nats)
    # GECO: lambda's floor. 1 keeps the effective beta (1 / lambda) at most 1: GECO then works as
    # an adaptive KL warm-up that hands over to the plain ELBO once the target is met.
    geco_min_lambda: float = 1e-3
    # KL warm-up: the weight of KL(q || p) stays at beta_start x beta for beta_hold_steps, then
    # rises linearly to the model's beta over beta_warmup_steps (0 = off, the original's
    # setting). Lets the posterior learn to encode every ambiguity before the KL term squeezes
    # the ones the decoder does not use yet shut.
    beta_warmup_steps: int = 0
    beta_start: float = 0.0
    beta_hold_steps: int = 0
    # std of the initial weights that map the posterior net's pooled features to its mean
    # (0 = the model's own small init, 1e-3, so that q starts as a near-standard normal).
    # Larger values start q informative about every part of the mask, so the decoder can begin
    # to use each ambiguity at once instead of discovering them one after another.
    posterior_init_std: float = 0.0
    # mixture prior only: the loss sees equal weights for this many steps, so that no component
    # dies before the components have settled on the modes (docs/model.md, "A mixture prior")
    mixture_weight_hold_steps: int = 0
    # "auto": bf16 where the hardware computes it natively (CPUs with AVX-512 BF16 or AMX, GPUs
    # with bf16), else float32; "bf16", "fp16" (CUDA only) or "none" force a choice
    amp: str = "auto"
    channels_last: bool = True
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch threads per process (0 = torch's default)
    log_every: int = 25
    val_every: int = 1000
    val_samples: int = 16
    checkpoint_every: int = 500
    max_bad_steps: int = 20  # consecutive non-finite losses before giving up
    # start a new run from the weights of this model file (a path or a bundled model's name;
    # the architecture must match); the optimiser and schedule start fresh. A committed model
    # file is how a long run's progress moves to a new machine without its checkpoint.
    init_from: str | None = None
    # "one": each case of a batch with one grader's mask at random (the paper's recipe); "all":
    # each case with every grader's mask (batch_size counts masks, so it must be a multiple of
    # the graders), so every step sees the whole disagreement of the slices it draws
    masks_per_case: str = "one"
    # a model with slice_context: the chance that one side's neighbours are replaced by the
    # slice itself in a batch (data/context.py: a missing neighbour must not say "edge")
    context_dropout: float = 0.5

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def load_recipe(path: str | os.PathLike) -> tuple[ModelConfig, TrainConfig]:
    """Read a TOML recipe with ``[model]`` (ModelConfig fields) and ``[train]`` tables."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"recipe file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"recipe {p} is not valid TOML: {exc}") from exc
    unknown = set(doc) - {"model", "train"}
    if unknown:
        raise UserError(
            f"recipe {p}: unknown tables {sorted(unknown)} (expected [model] and [train])"
        )
    try:
        model_cfg = ModelConfig.from_dict(doc.get("model", {}))
        train = doc.get("train", {})
        bad = set(train) - set(TrainConfig.field_names())
        if bad:
            raise ValueError(f"unknown [train] keys {sorted(bad)}")
        return model_cfg, TrainConfig(**train)
    except (TypeError, ValueError) as exc:
        raise UserError(f"recipe {p}: {exc}") from exc


def check_settings(cfg: TrainConfig) -> None:
    """Refuse a loss, KL schedule or count the training loop cannot run with."""
    if cfg.loss not in ("elbo", "geco"):
        raise UserError(f"unknown loss {cfg.loss!r}: use 'elbo' or 'geco'")
    if cfg.masks_per_case not in ("one", "all"):
        raise UserError(f"unknown masks_per_case {cfg.masks_per_case!r}: use 'one' (a grader "
                        "at random, the paper's recipe) or 'all' (every grader's mask)")
    if not 0.0 <= cfg.context_dropout <= 1.0:
        raise UserError(f"context_dropout must lie in [0, 1], not {cfg.context_dropout}")
    holds = (cfg.beta_warmup_steps, cfg.beta_hold_steps, cfg.mixture_weight_hold_steps)
    if min(holds) < 0 or not 0.0 <= cfg.beta_start <= 1.0:
        raise UserError(f"beta_warmup_steps, beta_hold_steps and mixture_weight_hold_steps must be "
                        f">= 0 and beta_start in [0, 1] (got {holds} and {cfg.beta_start})")
    for name in ("steps", "batch_size", "log_every", "val_every", "checkpoint_every"):
        value = getattr(cfg, name)
        if value < 1:
            hint = ("; to skip validation leave val_data empty, to validate only at the end "
                    "set val_every to steps") if name == "val_every" else ""
            raise UserError(f"{name} must be at least 1 (got {value}){hint}")
