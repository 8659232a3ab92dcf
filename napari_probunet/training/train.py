"""``probunet train``: train a Probabilistic U-Net on multi-rater data.

One training step draws a batch of cases, one grader's mask per case at random (the
paper's recipe), augments image and mask identically, decodes a posterior sample and
minimises the negative ELBO (:mod:`napari_probunet.model.losses`; or GECO). Everything
needed for an exact resume is in ``<out>/checkpoint.safetensors`` (written every
``checkpoint_every`` steps and at the end); re-running the same command resumes.
``best.safetensors`` is the model file with the lowest validation GED(16);
``last.safetensors`` the latest.

Several processes: ``torchrun --nproc_per_node=N -m napari_probunet.cli train ...`` trains
data-parallel with ``torch.distributed`` (gloo on CPU, NCCL on CUDA); each rank draws its own
batches (the seed is offset by the rank) and rank 0 writes logs and checkpoints.

This module is the entry point, :func:`train`. The parts, in ``training/``: the settings and
recipes (:mod:`~.settings`), the learning-rate and KL schedules (:mod:`~.schedules`), the
batches (:mod:`~.batches`), the step's precision (:mod:`~.precision`), one run and its steps
(:mod:`~.run`), validation (:mod:`~.validation`), the run folder: checkpoints, model files,
``config.json`` (:mod:`~.run_folder`, with the log of :mod:`~.runlog`), a start from another
model's weights (:mod:`~.donor`) and the glue of several processes (:mod:`~.distributed`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from napari_probunet.model.config import ModelConfig
from napari_probunet.training.distributed import closing_process_group
from napari_probunet.training.run import TrainingRun
from napari_probunet.training.settings import TrainConfig


def train(model_cfg: ModelConfig, cfg: TrainConfig, out: str | os.PathLike, *,
          resume: bool = True, progress: bool = True, export_to: str | None = None,
          recipe_name: str | None = None, stop_at: int | None = None,
          time_limit_s: float | None = None) -> dict[str, Any]:
    """Train (or resume) into ``out``; return a summary (steps, best validation GED, files).

    ``stop_at`` (a step) and ``time_limit_s`` (seconds of this run) stop early with a
    checkpoint written, so a long recipe can be run in pieces: the same command resumes.
    """
    with closing_process_group():
        run = TrainingRun(model_cfg, cfg, Path(out), recipe_name)
        run.start(resume)
        bar = None
        if progress and run.is_main:
            from tqdm import tqdm  # lazy, like torch: importing this module stays cheap

            bar = tqdm(total=cfg.steps, initial=run.step, desc="train", file=sys.stderr,
                       dynamic_ncols=True)
        run.loop(bar, stop_at, time_limit_s)
        if bar is not None:
            bar.close()
        return run.finish(export_to)
