"""The data of a training run: its cases, the batches drawn from them, the model's domain.

One batch is ``batch_size`` cases drawn at random, one grader's mask of each at random (the
paper's recipe), or (``masks_per_case = "all"``) ``batch_size / graders`` cases, each with every
grader's mask, the image repeated once per mask; image and masks augmented identically
(:func:`~napari_probunet.data.augment.augment`). Each rank draws its own batches: its
generator is seeded with the run's seed offset by ``1000 x rank``.
"""

from __future__ import annotations

import sys

import numpy as np

from napari_probunet.data.augment import Augmentation, augment
from napari_probunet.data.context import drop_neighbours, with_slice_context
from napari_probunet.data.readers import open_cases
from napari_probunet.errors import UserError
from napari_probunet.model.config import ModelConfig
from napari_probunet.model.images import as_model_image
from napari_probunet.review.domain import fit_model_domain
from napari_probunet.training.settings import TrainConfig


class BatchSampler:
    """Draws training batches: random cases, one random grader each, augmented.

    Returns ``x (b, in_channels, h, w)`` float32 (preprocessed) and ``y (b, h, w)`` int64.
    Its NumPy generator state is part of the checkpoint, so a resumed run draws the same batches.
    """
    def __init__(self, cases, model_cfg: ModelConfig, batch_size: int, seed: int, augment: bool,
                 all_masks: bool = False, context_dropout: float = 0.0):
        self.cases = cases
        self.context_dropout = context_dropout
        self.cfg = model_cfg
        self.batch_size = batch_size
        self.all_masks = all_masks
        self.rng = np.random.default_rng(seed)
        self.aug = Augmentation() if augment else None

    def __call__(self):
        import torch

        xs, ys = [], []
        while len(ys) < self.batch_size:
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            if self.all_masks:
                masks = case.masks
                if len(ys) + masks.shape[0] > self.batch_size:
                    raise UserError(
                        f"masks_per_case = 'all': a batch of {self.batch_size} cannot hold every "
                        f"mask of cases with {masks.shape[0]} graders; make batch_size a "
                        f"multiple of {masks.shape[0]}")
            else:
                masks = case.masks[int(self.rng.integers(case.masks.shape[0]))][None]
            image = as_model_image(case.image, self.cfg.in_channels).astype(np.float32)
            image = drop_neighbours(image, self.cfg.slice_context, self.context_dropout, self.rng)
            if self.aug is not None:
                image, masks = augment(image, masks, self.rng, self.aug)
            x = self.cfg.preprocessing.apply(image).transpose(2, 0, 1)
            xs.extend([x] * masks.shape[0])
            ys.extend(masks)
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise UserError(
                f"training images differ in size ({sorted(shapes)[:3]}...); crop or resize them "
                f"to one size (the model's input_size, {self.cfg.input_size})"
            )
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys).astype(np.int64))
        s = self.cfg.stride
        if x.shape[-1] % s or x.shape[-2] % s:
            raise UserError(
                f"training images must be a multiple of {s} pixels on each side; "
                f"got {tuple(x.shape[-2:])}"
            )
        return x, y


def open_training_data(cfg: TrainConfig, model_cfg: ModelConfig, rank: int,
                       verbose: bool) -> tuple[BatchSampler, list]:
    """``(sampler, validation cases)`` of ``cfg.data`` and ``cfg.val_data`` for ``rank``.

    Records the training images' domain in ``model_cfg.domain`` where it holds none yet, so
    that the model file can warn about images unlike them
    (:mod:`napari_probunet.review.domain`); a fixed seed gives the same on a resume.
    ``verbose`` (rank 0) says so when there are too few images for it.
    """
    context = model_cfg.slice_context
    cases = with_slice_context(open_cases(cfg.data), context)
    val_cases = list(with_slice_context(open_cases(cfg.val_data), context)) if cfg.val_data else []
    if len(cases) == 0:
        raise UserError(f"no training cases in {cfg.data}")
    sampler = BatchSampler(cases, model_cfg, cfg.batch_size, cfg.seed + 1000 * rank, cfg.augment,
                           all_masks=cfg.masks_per_case == "all",
                           context_dropout=cfg.context_dropout)
    if not (model_cfg.domain or {}).get("reference"):
        try:
            model_cfg.domain = fit_model_domain(model_cfg, cases, seed=cfg.seed,
                                                training_data=cfg.data)
        except ValueError as exc:  # too few images for a reference: the model still trains
            if verbose:
                print(f"note: the model's domain check is not recorded ({exc})", file=sys.stderr)
    return sampler, val_cases
