"""The precision of a training step: float32, or bf16 / fp16 autocast.

``amp = "auto"`` chooses bf16 where the hardware computes it natively
(:func:`~napari_probunet.device.auto_precision`), else float32. ``probunet bench`` times the
training step under the same context.
"""

from __future__ import annotations

import contextlib

from napari_probunet.device import auto_precision
from napari_probunet.errors import UserError


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


def precision_note(amp: str, used: str, device_type: str) -> str:
    """The line a run prints about its precision: what ``amp`` (the setting) became (``used``,
    from :func:`amp_context`) on ``device_type``, and why."""
    why = auto_precision(device_type)[1] if amp == "auto" else "set by the recipe"
    return (f"precision: {'float32' if used == 'none' else used} on {device_type} "
            f"(amp = {amp!r}: {why})")
