"""Validation during training: GED and HM-IoU of the model's samples on the validation cases.

``val_samples`` samples per case (16 by default; the log's keys say ``16`` whatever the
count). Run on rank 0 every ``val_every`` steps; the lowest GED so far makes ``best.safetensors``.
A run that has diverged (non-finite encodings) scores NaN instead of stopping, so the log
shows it.
"""

from __future__ import annotations

import math

import numpy as np

from napari_probunet.errors import InputError


def validate(model, cases, n_samples: int, seed: int, device: str) -> dict[str, float]:
    """GED and Hungarian-matched IoU with ``n_samples`` samples on ``cases`` (eval mode)."""
    from napari_probunet.review.metrics import ged, hungarian_iou  # lazy: scipy, 0.5 s
    from napari_probunet.session import Session  # lazy: torch

    was_training = model.training
    session = Session(model, device=device)
    geds, hms, sigma_max = [], [], []
    for i, case in enumerate(cases):
        try:
            session.set_image(case.image)
        except InputError:  # non-finite encodings: the run has diverged; say so in the log
            geds.append(math.nan)
            hms.append(math.nan)
            continue
        hyp = session.sample(n_samples, seed=seed + i)
        geds.append(ged(hyp.labels, case.masks, model.config.num_classes))
        hms.append(hungarian_iou(hyp.labels, case.masks, model.config.num_classes))
        sigma_max.append(float(session.prior()[1].max()))
    model.train(was_training)
    return {
        "val_ged16": float(np.mean(geds)),
        "val_hm_iou16": float(np.mean(hms)),
        "val_prior_sigma_max": max(sigma_max) if sigma_max else math.nan,
    }
