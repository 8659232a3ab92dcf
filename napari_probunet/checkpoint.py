"""Training checkpoints without pickle: every tensor in a safetensors file, the rest in JSON.

A checkpoint holds what an exact resume needs: model weights (``model.*``), the optimizer's
per-parameter state (``optim.<index>.<name>``), the torch CPU random state, and in the JSON
header the step, optimizer hyper-parameters, scheduler state, NumPy generator state, GECO
state and the training configuration. Loading executes nothing from the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from napari_probunet.errors import ModelFileError

KEY = "probunet_checkpoint"


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Atomically write weights, optimizer state and ``state`` (JSON-serialisable) to ``path``."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, float]] = {}
    for idx, pstate in opt["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = float(value)
    tensors["rng.torch"] = torch.get_rng_state()
    header = {"state": state, "param_groups": opt["param_groups"], "optim_scalars": scalars}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={KEY: json.dumps(header)})
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore weights (and optimizer, torch RNG) from ``path``; return the saved ``state``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if KEY not in meta:
                raise ModelFileError(f"{path} is not a napari-probunet training checkpoint")
            header = json.loads(meta[KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"cannot read training checkpoint {path}: {exc}") from exc
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd)
    except RuntimeError as exc:  # missing keys or shape mismatches: another architecture
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        raise ModelFileError(
            f"{path} holds a model of another architecture than the one configured now "
            f"({detail[:200]}); train into another folder, or start over with --no-resume"
        ) from exc
    if optimizer is not None:
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        for idx, scalars in header["optim_scalars"].items():
            for name, value in scalars.items():
                state.setdefault(int(idx), {})[name] = torch.tensor(value)
        optimizer.load_state_dict({"state": state, "param_groups": header["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return header["state"]
