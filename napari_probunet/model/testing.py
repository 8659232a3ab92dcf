"""Small real models and images for tests, docs and benchmarks (no mocks).

:func:`two_mode_case` is the smallest truly ambiguous problem: one image whose two graders
disagree (a core versus core + halo). :func:`train_two_mode_model` overfits a tiny Probabilistic
U-Net to it in a few seconds; its samples then reproduce both masks, about half the time each.
"""

from __future__ import annotations

import numpy as np

from napari_probunet.model.config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    """A Probabilistic U-Net small enough to train in seconds on a CPU (32x32 inputs)."""
    base = dict(channels=(8, 16, 32), convs_per_block=1, latent_dim=2, fcomb_channels=16,
                input_size=32)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **overrides):
    """An untrained, seeded tiny model (eval mode)."""
    import torch

    from napari_probunet.model.network import build_model

    torch.manual_seed(seed)
    return build_model(tiny_config(**overrides)).eval()


#: model settings added after the first model files were written; a file without them must load
#: as it was trained (the paper's Gaussian, PyTorch's init, the anchor on each image)
LATER_SETTINGS = ("latent_distribution", "mixture_components", "mixture_weights",
                  "mixture_sigma_max", "weight_init", "prior_anchor_scope", "slice_context")


def rewrite_metadata(src, dst, change) -> None:
    """Copy the model file ``src`` to ``dst`` with ``change(meta)`` applied to its
    ``probunet`` metadata (a dict) first; the tensors are copied byte for byte."""
    import json
    import struct
    from pathlib import Path

    data = Path(src).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["probunet"])
    change(meta)
    header["__metadata__"]["probunet"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    Path(dst).write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def write_early_model_file(path, seed: int = 0):
    """A tiny Gaussian model's file as the first versions wrote it: without
    :data:`LATER_SETTINGS` in its configuration. Returns the model it holds."""
    from napari_probunet.model.modelfile import save_model

    model = tiny_model(seed)
    save_model(model, path)
    rewrite_metadata(path, path, lambda m: [m["config"].pop(k, None) for k in LATER_SETTINGS])
    return model


def two_mode_case(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``image (size, size)`` float32 in [0, 1] and ``masks (2, size, size)`` uint8: core vs
    core+halo."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    core, halo = r < size * 0.16, r < size * 0.32
    image = np.full((size, size), 0.1, np.float32)
    image[halo] = 0.35
    image[core] = 0.9
    masks = np.stack([core, halo]).astype(np.uint8)
    return image, masks


def train_two_mode_model(steps: int = 400, seed: int = 0, size: int = 32, lr: float = 3e-3):
    """Overfit a tiny model to :func:`two_mode_case` (each step: batch of 8, random grader)."""
    import torch

    from napari_probunet.model.losses import elbo_loss
    from napari_probunet.model.network import build_model

    torch.manual_seed(seed)
    cfg = tiny_config(input_size=size)
    model = build_model(cfg)
    image, masks = two_mode_case(size)
    x = torch.from_numpy(cfg.preprocessing.apply(image[..., None]).transpose(2, 0, 1))
    x = x[None].repeat(8, 1, 1, 1)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        if step == int(0.7 * steps):
            for group in opt.param_groups:
                group["lr"] = lr / 10
        y = torch.from_numpy(masks[rng.integers(0, 2, size=8)].astype(np.int64))
        terms = elbo_loss(model(x, y), y, beta=cfg.beta, anchor=cfg.prior_anchor,
                          anchor_scope=cfg.prior_anchor_scope)
        opt.zero_grad()
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
    return model.eval()


def wait_idle(qtbot, widget, timeout: int = 60_000) -> None:
    """Wait (processing Qt events) until the review widget is no longer ``busy``: no model
    loading, no sampling run, no hypothesis layers still to add."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)
