"""One training run in one process: the network, its optimiser and loss, the steps, the log.

:class:`TrainingRun` builds the network (the same initial weights on every rank), starts it
fresh, from a donor model file (:mod:`~.donor`) or from the run folder's checkpoint
(:mod:`~.run_folder`), then steps: a batch (:mod:`~.batches`), a posterior sample decoded
under the step's precision (:mod:`~.precision`), the loss (the negative ELBO with the KL
weight of :mod:`~.schedules`, or GECO), gradients clipped and applied. A step whose loss is not
finite on some rank is skipped by all (:mod:`~.distributed`). Every ``log_every`` steps a row
of mean losses joins the history, every ``val_every`` steps rank 0 validates
(:mod:`~.validation`), every ``checkpoint_every`` steps the checkpoint is written.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet.model.config import ModelConfig
from napari_probunet.training.batches import open_training_data
from napari_probunet.training.distributed import Ranks, weights_checksum
from napari_probunet.training.donor import init_weights
from napari_probunet.training.precision import amp_context, precision_note
from napari_probunet.training.run_folder import RunFolder
from napari_probunet.training.schedules import beta_at, lr_at
from napari_probunet.training.settings import TrainConfig, check_settings
from napari_probunet.training.validation import validate


def build_network(model_cfg: ModelConfig, cfg: TrainConfig, device):
    """The untrained network on ``device``: seeded with ``cfg.seed`` (identical initial
    weights on every rank), the posterior's mean initialised with ``cfg.posterior_init_std``
    where set, in channels-last memory format where ``cfg.channels_last``."""
    import torch

    from napari_probunet.model.network import ProbUNet

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = ProbUNet(model_cfg).to(device)
    # before any resume, which overwrites it
    if cfg.posterior_init_std > 0 and model.posterior is not None:
        with torch.no_grad():
            mu_rows = model.posterior.to_params.weight[: model_cfg.latent_dim]
            mu_rows.normal_(0.0, cfg.posterior_init_std)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _no_losses() -> dict[str, float]:
    """The running sums of the losses since the last history row, and their count."""
    return {"loss": 0.0, "ce": 0.0, "kl": 0.0, "n": 0}


class TrainingRun:
    """One training run (one process of it): the model, its optimiser and data, and the state
    a checkpoint keeps (``step``, ``best``, ``history``, the batch sampler's generator)."""

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
                 recipe_name: str | None) -> None:
        import torch

        from napari_probunet.model.losses import GECO

        self.model_cfg, self.cfg, self.recipe_name = model_cfg, cfg, recipe_name
        self.folder = RunFolder(out)
        self.ranks = Ranks.from_environment()
        self.device = self.ranks.join(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
        self.model = build_network(model_cfg, cfg, self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)
        self.geco = None
        if cfg.loss == "geco":
            self.geco = GECO(target=cfg.geco_target, min_lambda=cfg.geco_min_lambda)
        check_settings(cfg)
        self.sampler, self.val_cases = open_training_data(cfg, model_cfg, self.ranks.rank,
                                                          self.is_main)
        self.step, self.best, self.history = 0, math.inf, []

    @property
    def is_main(self) -> bool:
        """Rank 0: this process writes the run folder and prints."""
        return self.ranks.is_main

    # -- the start -------------------------------------------------------------------------------
    def start(self, resume: bool) -> None:
        """Initialise or resume the weights, choose the precision, record ``config.json``."""
        import torch

        cfg, folder = self.cfg, self.folder
        resuming = resume and folder.checkpoint.exists()
        donor = None
        if cfg.init_from and not resuming:
            donor = init_weights(self.model, cfg.init_from, self.is_main)
        elif cfg.init_from:  # a later leg: the first leg recorded where the weights came from
            donor = folder.recorded_donor()
        if resuming:
            self._resume()
        self.train_model = (torch.nn.parallel.DistributedDataParallel(self.model)
                            if self.ranks.distributed else self.model)
        self.amp_ctx, amp_used = amp_context(cfg.amp, self.device.type)
        if self.is_main:
            print(precision_note(cfg.amp, amp_used, self.device.type), file=sys.stderr)
        self.meta = {"recipe": self.recipe_name, "train_config": asdict(cfg), "amp": amp_used,
                     "world_size": self.ranks.world}
        if donor:
            self.meta["initialised_from"] = donor
        if self.is_main:
            folder.write_config(self.model_cfg, self.meta)

    def _resume(self) -> None:
        """Load the checkpoint: weights, optimiser, step, history, this rank's generator (a
        rank the last leg did not have starts a generator of its own) and GECO's state."""
        from napari_probunet.model.checkpoint import load_checkpoint

        cfg, rank, ckpt = self.cfg, self.ranks.rank, self.folder.checkpoint
        state = load_checkpoint(ckpt, self.model, self.optimizer)
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        if rank < len(state["numpy_rng"]):
            rng_state = state["numpy_rng"][rank]
        else:  # a rank the last leg did not have
            rng = np.random.default_rng(cfg.seed + 1000 * rank + self.step)
            rng_state = rng.bit_generator.state
        self.sampler.rng.bit_generator.state = rng_state
        if self.geco is not None and state.get("geco"):
            self.geco.load_state_dict(state["geco"])
        if self.is_main:
            print(f"resuming from step {self.step} ({ckpt})", file=sys.stderr)
            for change in self.folder.changed_settings(asdict(cfg)):
                print(f"  changed since the last leg: {change}", file=sys.stderr)

    # -- the steps -------------------------------------------------------------------------------
    def loop(self, bar, stop_at: int | None, time_limit_s: float | None) -> None:
        """Train to ``cfg.steps`` (or ``stop_at``, or the time limit), logging, validating and
        writing checkpoints on the way; a run stopped early writes one at the end."""
        cfg = self.cfg
        bad_steps, t0, acc = 0, time.perf_counter(), _no_losses()
        self.train_model.train()
        end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
        started = time.monotonic()
        while self.step < end:
            if self._should_stop(started, time_limit_s):
                break
            lr = lr_at(self.step, cfg)
            step_before = self.step
            terms, beta = self._step(lr)
            if terms is None:
                bad_steps += 1
                if bad_steps >= cfg.max_bad_steps:
                    raise RuntimeError(f"{bad_steps} consecutive non-finite losses at step "
                                       f"{step_before}; lower the learning rate or check the data")
                continue
            bad_steps = 0
            values = {k: float(terms[k].detach()) for k in ("loss", "ce", "kl")}
            for k, v in values.items():
                acc[k] += v
            acc["n"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.1f}", ce=f"{values['ce']:.1f}",
                                kl=f"{values['kl']:.2f}", lr=f"{lr:.1e}")
            step = self.step
            do_val = self.val_cases and (step % cfg.val_every == 0 or step == cfg.steps)
            if step % cfg.log_every == 0 or do_val or step == cfg.steps:
                self._log(acc, lr, beta, t0, do_val, bar)
                acc = _no_losses()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self.write_checkpoint()
        if self.step % cfg.checkpoint_every != 0 and self.step != cfg.steps:
            self.write_checkpoint()  # stopped early: keep everything for the resume

    def _should_stop(self, started: float, time_limit_s: float | None) -> bool:
        """The time limit, agreed on by every rank (the slowest one's clock decides)."""
        import torch

        over = time_limit_s is not None and time.monotonic() - started > time_limit_s
        stop = torch.tensor(1.0) if over else torch.tensor(0.0)
        self.ranks.all_max(stop)
        return stop.item() > 0

    def _step(self, lr: float) -> tuple[dict | None, float]:
        """One optimisation step at ``lr``; ``(None, beta)`` when the loss was not finite (on
        some rank) and the step was skipped. Advances ``self.step`` either way."""
        import torch

        from napari_probunet.model.losses import elbo_loss

        cfg, model_cfg, geco = self.cfg, self.model_cfg, self.geco
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = self.sampler()
        x, y = x.to(self.device), y.to(self.device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.amp_ctx:
            outputs = self.train_model(x, y)
        beta = beta_at(self.step, cfg, model_cfg.beta)
        kw = dict(anchor=model_cfg.prior_anchor, anchor_scope=model_cfg.prior_anchor_scope,
                  equal_weights=self.step < cfg.mixture_weight_hold_steps)
        terms = geco.loss(outputs, y, **kw) if geco else elbo_loss(outputs, y, beta=beta, **kw)
        loss = terms["loss"]
        finite = torch.isfinite(loss).float()
        self.ranks.all_min(finite)  # every rank must agree to skip
        self.optimizer.zero_grad(set_to_none=True)
        if finite.item() < 1:
            self.step += 1
            return None, beta
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return terms, beta

    # -- the log and the files -------------------------------------------------------------------
    def _log(self, acc: dict, lr: float, beta: float, t0: float, do_val, bar) -> None:
        """A row of the history: the mean losses since the last row, and the validation on
        rank 0 when due (saving ``best.safetensors`` when it improves)."""
        cfg, step = self.cfg, self.step
        row = {"step": step, "lr": lr, "seconds": round(time.perf_counter() - t0, 2),
               **{k: acc[k] / max(acc["n"], 1) for k in ("loss", "ce", "kl")}}
        if self.geco:
            row["lambda"] = self.geco.lagrange_multiplier
        elif cfg.beta_warmup_steps or cfg.beta_hold_steps:
            row["beta"] = beta
        if do_val and self.is_main:
            row.update(validate(self.model, self.val_cases, cfg.val_samples, cfg.seed,
                                str(self.device)))
            if row["val_ged16"] < self.best:
                self.best = row["val_ged16"]
                self.folder.save_model(self.model, "best", self.meta, step, self.history + [row])
            if bar is not None:
                bar.write(f"step {step}: val GED(16) {row['val_ged16']:.4f}, "
                          f"HM-IoU(16) {row['val_hm_iou16']:.4f}, best {self.best:.4f}")
        self.history.append(row)

    def write_checkpoint(self) -> None:
        """The checkpoint, ``last.safetensors`` and the log (every rank sends its generator)."""
        rngs = self.ranks.gather(self.sampler.rng.bit_generator.state)
        if not self.is_main:
            return
        self.folder.save_checkpoint(self.model, self.optimizer, {
            "step": self.step, "best": self.best, "history": self.history, "numpy_rng": rngs,
            "geco": self.geco.state_dict() if self.geco else None, "meta": self.meta})

    def finish(self, export_to: str | None) -> dict[str, Any]:
        """Copy the model to ``export_to`` (a finished run), and the summary; distributed runs
        add every rank's weight checksum (they must agree)."""
        folder, step = self.folder, self.step
        if self.is_main and export_to and step >= self.cfg.steps:
            folder.export(export_to)
        summary = {"steps": step, "best_val_ged16": self.best,
                   "model": str(folder.final_model()), "out": str(folder.path),
                   "world_size": self.ranks.world}
        if self.ranks.distributed:  # every rank must end with the same weights
            summary["rank_weight_checksums"] = self.ranks.gather(weights_checksum(self.model))
            self.ranks.barrier()
        return summary
