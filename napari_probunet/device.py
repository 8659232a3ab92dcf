"""Choosing a torch device, per session and never at import time."""

from __future__ import annotations

from napari_probunet.errors import UserError

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


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), where bf16 autocast
    roughly halves a training step. On a CPU without it (AVX2 only: most laptops) torch emulates
    bf16 and the same step is about ten times *slower* than float32."""
    import torch

    probe = getattr(torch, "cpu", None)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(probe, name, None)
        if check is not None:
            try:
                if check():
                    return True
            except Exception:  # an internal helper: treat any failure as "not native"
                pass
    return False


def auto_precision(device_type: str) -> tuple[str, str]:
    """The mixed precision ``amp = "auto"`` chooses on ``device_type``, and why.

    CUDA: bf16 where the GPU supports it (Ampere and newer), else none; CPU: bf16 only where
    it is native (:func:`cpu_bf16_native`), else float32; other devices: float32.
    """
    import torch

    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "the GPU supports bfloat16"
        return "none", "the GPU has no bfloat16: float32"
    if device_type == "cpu":
        if cpu_bf16_native():
            return "bf16", "the CPU has native bfloat16 (AVX-512 BF16 or AMX)"
        return "none", ("the CPU has no native bfloat16 (emulated bf16 is ~10x slower than "
                        "float32 there): float32")
    return "none", f"float32 on {device_type}"
