"""``probunet train``: train a Probabilistic U-Net on multi-rater data.

One training step draws a batch of cases, one grader's mask per case at random (the
paper's recipe), augments image and mask identically, decodes a posterior sample and
minimises the negative ELBO (:mod:`napari_probunet.model.losses`; or GECO). Everything needed for an
exact resume is in ``<out>/checkpoint.safetensors`` (written every ``checkpoint_every``
steps and at the end); re-running the same command resumes. ``best.safetensors`` is the
model file with the lowest validation GED(16); ``last.safetensors`` the latest.

Several processes: ``torchrun --nproc_per_node=N -m napari_probunet.cli train ...`` trains
data-parallel with ``torch.distributed`` (gloo on CPU, NCCL on CUDA); each rank draws its own
batches (the seed is offset by the rank) and rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import __version__
from napari_probunet.data.augment import Augmentation, augment
from napari_probunet.data.readers import open_cases
from napari_probunet.device import auto_precision, resolve_device
from napari_probunet.errors import InputError, UserError
from napari_probunet.model.config import ModelConfig
from napari_probunet.model.modelfile import load_model, save_model
from napari_probunet.review.domain import fit_model_domain
from napari_probunet.training.runlog import write_log


@dataclass
class TrainConfig:
    """Training settings (``[train]`` in a recipe file). Defaults follow the original where it had one."""

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
        raise UserError(f"recipe {p}: unknown tables {sorted(unknown)} (expected [model] and [train])")
    try:
        model_cfg = ModelConfig.from_dict(doc.get("model", {}))
        train = doc.get("train", {})
        bad = set(train) - set(TrainConfig.field_names())
        if bad:
            raise ValueError(f"unknown [train] keys {sorted(bad)}")
        return model_cfg, TrainConfig(**train)
    except (TypeError, ValueError) as exc:
        raise UserError(f"recipe {p}: {exc}") from exc


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


class BatchSampler:
    """Draws training batches: random cases, one random grader each, augmented.

    Returns ``x (b, in_channels, h, w)`` float32 (preprocessed) and ``y (b, h, w)`` int64.
    Its NumPy generator state is part of the checkpoint, so a resumed run draws the same batches.
    """

    def __init__(self, cases, model_cfg: ModelConfig, batch_size: int, seed: int, augment: bool):
        self.cases = cases
        self.cfg = model_cfg
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.aug = Augmentation() if augment else None

    def __call__(self):
        import torch

        from napari_probunet.session import as_model_image  # the session module loads torch

        xs, ys = [], []
        for _ in range(self.batch_size):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            mask = case.masks[int(self.rng.integers(case.masks.shape[0]))]
            image = as_model_image(case.image, self.cfg.in_channels).astype(np.float32)
            if self.aug is not None:
                image, m = augment(image, mask[None], self.rng, self.aug)
                mask = m[0]
            xs.append(self.cfg.preprocessing.apply(image).transpose(2, 0, 1))
            ys.append(mask)
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
            raise UserError(f"training images must be a multiple of {s} pixels on each side; got {tuple(x.shape[-2:])}")
        return x, y


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
    return {"val_ged16": float(np.mean(geds)), "val_hm_iou16": float(np.mean(hms)),
            "val_prior_sigma_max": max(sigma_max) if sigma_max else math.nan}


def amp_context(amp: str, device_type: str):
    """``(context, amp)``: the autocast context of a training step for ``amp`` (``"auto"``,
    ``"bf16"``, ``"fp16"`` or ``"none"``) on ``device_type``, and the precision it stands for
    (``"auto"`` resolved by :func:`~napari_probunet.device.auto_precision`)."""
    import torch

    if amp == "auto":
        amp, _ = auto_precision(device_type)
    if amp not in ("none", "bf16", "fp16"):
        raise UserError(f"unknown amp {amp!r}: use 'auto', 'bf16', 'fp16' or 'none'")
    if amp == "none":
        return contextlib.nullcontext(), "none"
    if amp == "fp16" and device_type != "cuda":
        raise UserError("fp16 mixed precision needs CUDA; use --amp bf16 or none")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type, dtype=dtype), amp


def changed_settings(config_json: Path, now: dict) -> list[str]:
    """The training settings that differ from those a run folder's ``config.json`` recorded.

    A resumed run follows the settings it is given (the schedules are functions of the step), so
    changing e.g. ``beta_hold_steps`` between legs is allowed; this says so ("key: old -> new").
    """
    try:
        before = json.loads(Path(config_json).read_text())["train_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    now = json.loads(json.dumps(now))  # tuples -> lists, as recorded
    return [f"{k}: {before[k]!r} -> {now[k]!r}" for k in sorted(now)
            if k in before and before[k] != now[k]]


def train(model_cfg: ModelConfig, cfg: TrainConfig, out: str | os.PathLike, *, resume: bool = True,
          progress: bool = True, export_to: str | None = None, recipe_name: str | None = None,
          stop_at: int | None = None, time_limit_s: float | None = None) -> dict[str, Any]:
    """Train (or resume) into ``out``; return a summary (steps, best validation GED, files).

    ``stop_at`` (a step) and ``time_limit_s`` (seconds of this run) stop early with a
    checkpoint written, so a long recipe can be run in pieces: the same command resumes.
    """
    import torch.distributed as dist

    owns_group = not dist.is_initialized()
    try:
        return _run(model_cfg, cfg, out, resume, progress, export_to, recipe_name, stop_at,
                    time_limit_s)
    finally:
        # a process group left to the interpreter's exit can abort the process ("terminate
        # called without an active exception", seen once under load): close what we opened
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _run(model_cfg, cfg, out, resume, progress, export_to, recipe_name, stop_at, time_limit_s):
    run = _TrainingRun(model_cfg, cfg, Path(out), recipe_name)
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


class _TrainingRun:
    """One training run (one process of it): the model, its optimiser and data, and the state
    a checkpoint keeps (``step``, ``best``, ``history``, the batch sampler's generator)."""

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
                 recipe_name: str | None) -> None:
        import torch
        import torch.distributed as dist

        from napari_probunet.model.losses import GECO
        from napari_probunet.model.network import ProbUNet

        self.model_cfg, self.cfg, self.out, self.recipe_name = model_cfg, cfg, out, recipe_name
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if (cfg.device in ("auto", "cuda") and torch.cuda.is_available()) else "gloo"
            dist.init_process_group(backend)
        device = resolve_device(cfg.device)
        if self.distributed and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        self.device = device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.is_main = self.rank == 0
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = ProbUNet(model_cfg).to(device)
        if cfg.posterior_init_std > 0 and model.posterior is not None:  # before any resume, which overwrites it
            with torch.no_grad():
                mu_rows = model.posterior.to_params.weight[: model_cfg.latent_dim]
                mu_rows.normal_(0.0, cfg.posterior_init_std)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.geco = GECO(target=cfg.geco_target, min_lambda=cfg.geco_min_lambda) if cfg.loss == "geco" else None
        _check_settings(cfg)
        self._open_data()
        self.step, self.best, self.history = 0, math.inf, []
        self.ckpt = out / "checkpoint.safetensors"

    def _open_data(self) -> None:
        """The training and validation cases, the batch sampler, and the model's domain."""
        cfg, model_cfg = self.cfg, self.model_cfg
        cases = open_cases(cfg.data)
        self.val_cases = list(open_cases(cfg.val_data)) if cfg.val_data else []
        if len(cases) == 0:
            raise UserError(f"no training cases in {cfg.data}")
        self.sampler = BatchSampler(cases, model_cfg, cfg.batch_size, cfg.seed + 1000 * self.rank,
                                    cfg.augment)
        if not (model_cfg.domain or {}).get("reference"):
            # record what the training images look like, so that the model file can warn about
            # images unlike them (napari_probunet.review.domain); a fixed seed gives the same on a resume
            try:
                model_cfg.domain = fit_model_domain(model_cfg, cases, seed=cfg.seed,
                                                    training_data=cfg.data)
            except ValueError as exc:  # too few images for a reference: the model still trains
                if self.is_main:
                    print(f"note: the model's domain check is not recorded ({exc})", file=sys.stderr)

    def start(self, resume: bool) -> None:
        """Initialise or resume the weights, choose the precision, record ``config.json``."""
        import torch

        from napari_probunet.model.checkpoint import load_checkpoint

        cfg, rank, ckpt, out = self.cfg, self.rank, self.ckpt, self.out
        donor = None
        if cfg.init_from and not (resume and ckpt.exists()):
            donor = _init_weights(self.model, cfg.init_from, self.is_main)
        elif cfg.init_from:  # a later leg: the first leg recorded where the weights came from
            donor = _recorded_donor(out / "config.json")
        if resume and ckpt.exists():
            state = load_checkpoint(ckpt, self.model, self.optimizer)
            self.step, self.best, self.history = state["step"], state["best"], state["history"]
            self.sampler.rng.bit_generator.state = state["numpy_rng"][rank] if rank < len(state["numpy_rng"]) \
                else np.random.default_rng(cfg.seed + 1000 * rank + self.step).bit_generator.state
            if self.geco is not None and state.get("geco"):
                self.geco.load_state_dict(state["geco"])
            if self.is_main:
                print(f"resuming from step {self.step} ({ckpt})", file=sys.stderr)
                for change in changed_settings(out / "config.json", asdict(cfg)):
                    print(f"  changed since the last leg: {change}", file=sys.stderr)
        self.train_model = (torch.nn.parallel.DistributedDataParallel(self.model)
                            if self.distributed else self.model)
        self.amp_ctx, amp_used = amp_context(cfg.amp, self.device.type)
        if self.is_main:
            why = auto_precision(self.device.type)[1] if cfg.amp == "auto" else "set by the recipe"
            print(f"precision: {'float32' if amp_used == 'none' else amp_used} on {self.device.type} "
                  f"(amp = {cfg.amp!r}: {why})", file=sys.stderr)
        self.meta = {"recipe": self.recipe_name, "train_config": asdict(cfg), "amp": amp_used,
                     "world_size": self.world}
        if donor:
            self.meta["initialised_from"] = donor
        if self.is_main:
            (out / "config.json").write_text(json.dumps({"model": self.model_cfg.to_dict(), **self.meta}, indent=2))

    def _gather_rng_states(self) -> list:
        import torch.distributed as dist

        st = self.sampler.rng.bit_generator.state
        if not self.distributed:
            return [st]
        states = [None] * self.world
        dist.all_gather_object(states, st)
        return states

    def write_checkpoint(self) -> None:
        """The checkpoint, ``last.safetensors`` and the log (every rank sends its generator)."""
        from napari_probunet.model.checkpoint import save_checkpoint  # torch

        rngs = self._gather_rng_states()
        if not self.is_main:
            return
        save_checkpoint(self.ckpt, self.model, self.optimizer, {
            "step": self.step, "best": self.best, "history": self.history, "numpy_rng": rngs,
            "geco": self.geco.state_dict() if self.geco else None, "meta": self.meta})
        save_model(self.model, self.out / "last.safetensors",
                   _provenance(self.meta, self.step, self.history))
        write_log(self.out, self.history)

    def _should_stop(self, started: float, time_limit_s: float | None) -> bool:
        """The time limit, agreed on by every rank (the slowest one's clock decides)."""
        import torch
        import torch.distributed as dist

        if time_limit_s is not None and time.monotonic() - started > time_limit_s:
            stop = torch.tensor(1.0)
        else:
            stop = torch.tensor(0.0)
        if self.distributed:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        return stop.item() > 0

    def _step(self, lr: float) -> tuple[dict | None, float]:
        """One optimisation step at ``lr``; ``(None, beta)`` when the loss was not finite (on
        some rank) and the step was skipped. Advances ``self.step`` either way."""
        import torch
        import torch.distributed as dist

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
        if self.distributed:  # every rank must agree to skip
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self.optimizer.zero_grad(set_to_none=True)
        if finite.item() < 1:
            self.step += 1
            return None, beta
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return terms, beta

    def loop(self, bar, stop_at: int | None, time_limit_s: float | None) -> None:
        """Train to ``cfg.steps`` (or ``stop_at``, or the time limit), logging, validating and
        writing checkpoints on the way; a run stopped early writes one at the end."""
        cfg = self.cfg
        bad_steps, t0, acc = 0, time.perf_counter(), {"loss": 0.0, "ce": 0.0, "kl": 0.0, "n": 0}
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
                acc = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "n": 0}
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self.write_checkpoint()
        if self.step % cfg.checkpoint_every != 0 and self.step != cfg.steps:
            self.write_checkpoint()  # stopped early: keep everything for the resume

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
            row.update(validate(self.model, self.val_cases, cfg.val_samples, cfg.seed, str(self.device)))
            if row["val_ged16"] < self.best:
                self.best = row["val_ged16"]
                save_model(self.model, self.out / "best.safetensors",
                           _provenance(self.meta, step, self.history + [row]))
            if bar is not None:
                bar.write(f"step {step}: val GED(16) {row['val_ged16']:.4f}, "
                          f"HM-IoU(16) {row['val_hm_iou16']:.4f}, best {self.best:.4f}")
        self.history.append(row)

    def finish(self, export_to: str | None) -> dict[str, Any]:
        """Copy the model to ``export_to`` (a finished run), and the summary; distributed runs
        add every rank's weight checksum (they must agree)."""
        import torch.distributed as dist

        out, step = self.out, self.step
        final = out / ("best.safetensors" if (out / "best.safetensors").exists() else "last.safetensors")
        if self.is_main and export_to and step >= self.cfg.steps:
            Path(export_to).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(final, export_to)
        summary = {"steps": step, "best_val_ged16": self.best, "model": str(final), "out": str(out),
                   "world_size": self.world}
        if self.distributed:  # every rank must end with the same weights: gather a checksum of each
            checksum = _weights_checksum(self.model)
            checksums = [None] * self.world
            dist.all_gather_object(checksums, checksum)
            summary["rank_weight_checksums"] = checksums
            dist.barrier()
        return summary


def _check_settings(cfg: TrainConfig) -> None:
    """Refuse a loss, KL schedule or count the training loop cannot run with."""
    if cfg.loss not in ("elbo", "geco"):
        raise UserError(f"unknown loss {cfg.loss!r}: use 'elbo' or 'geco'")
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


def _init_weights(model, source: str, verbose: bool) -> dict[str, Any]:
    """Copy the weights of a model file into ``model`` (same architecture), or explain why not.

    Returns what the model files trained from here record of their starting point: the name or
    path given, the donor's sha256 and its own recipe and steps (the donor file may later be
    replaced, e.g. a bundled model by a newer one)."""
    import torch

    donor = load_model(source, device="cpu")
    mine, theirs = model.state_dict(), donor.state_dict()
    wrong = sorted(k for k in set(mine) | set(theirs)
                   if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape)
    if wrong:
        raise UserError(f"init_from {source}: its architecture differs from the recipe's "
                        f"({len(wrong)} tensors differ, e.g. {wrong[0]}); use a model trained "
                        "with the same [model] settings")
    with torch.no_grad():
        for k, v in mine.items():
            v.copy_(theirs[k].to(v.dtype))
    if verbose:
        print(f"initialised from {donor.source_path} (sha256 {donor.source_sha256[:12]})",
              file=sys.stderr)
    prov = donor.metadata.get("provenance") or {}
    return {"model": source, "sha256": donor.source_sha256,
            **{k: prov[k] for k in ("recipe", "steps", "date") if k in prov}}


def _recorded_donor(config_json: Path) -> dict[str, Any] | None:
    try:
        return json.loads(config_json.read_text()).get("initialised_from")
    except (OSError, ValueError):
        return None


def _weights_checksum(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _provenance(meta: dict, step: int, history: list) -> dict[str, Any]:
    import torch

    last_val = next((r for r in reversed(history) if "val_ged16" in r), {})
    return {"trained_by": f"napari-probunet {__version__}", "torch": torch.__version__,
            "recipe": meta.get("recipe"), "data": meta["train_config"]["data"], "steps": step,
            "amp": meta["amp"], "world_size": meta["world_size"],
            "validation": {k: v for k, v in last_val.items() if k.startswith("val_")},
            "date": time.strftime("%Y-%m-%d"),
            **({"initialised_from": meta["initialised_from"]} if meta.get("initialised_from") else {})}
