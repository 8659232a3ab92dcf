"""Choosing a torch device, per session and never at import time."""

from __future__ import annotations

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def available_devices() -> list[str]:
    """Devices usable on this machine, best first (``"cpu"`` always last)."""
    import torch

    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(device: str | None = "auto"):
    """``"auto"`` (or ``None``) picks CUDA, then MPS, then CPU; anything else must be available."""
    import torch

    from napari_probunet.errors import UserError

    if device is None or device == "auto":
        return torch.device(available_devices()[0])
    if isinstance(device, torch.device):
        return device
    name = str(device).split(":")[0]
    if name not in DEVICE_CHOICES:
        raise UserError(f"unknown device {device!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if name not in available_devices():
        raise UserError(
            f"device {device!r} is not available on this machine "
            f"(available: {', '.join(available_devices())}); use 'auto' or 'cpu'"
        )
    return torch.device(device)
