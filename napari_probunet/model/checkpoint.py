"""Training checkpoints without pickle: every tensor in a safetensors file, the rest in JSON.

A checkpoint holds what an exact resume needs: model weights (``model.*``), the optimizer's
per-parameter state (``optim.<index>.<name>``), the torch CPU random state, and in the JSON
header the step, optimizer hyper-parameters, scheduler state, NumPy generator state, GECO
state and the training configuration. Loading executes nothing from the file, checks that
everything a resume needs is there before it changes the model, the optimizer or the random
state, and refuses anything else with a :class:`~napari_probunet.errors.ModelFileError`.

Saving is atomic: a temporary file beside the checkpoint, named after the process
(``.checkpoint.safetensors.~<host>-<pid>.<random>.tmp``), flushed to disk and renamed over
the previous checkpoint, so a crash leaves the previous checkpoint or the new one. The next
save or resume removes the temporary files of killed processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from napari_probunet import files, limits
from napari_probunet.errors import ModelFileError

KEY = "probunet_checkpoint"
#: keys of the training state a resume reads (``geco`` and ``meta`` are optional)
STATE_KEYS = ("step", "best", "history", "numpy_rng")


def _remove_dead_temporaries(path: Path) -> None:
    files.remove_dead_temporaries(path.parent, files.temporaries_of(path.name))


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Atomically write weights, optimizer state and ``state`` (JSON-serialisable) to ``path``."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().float().cpu().contiguous()
               for k, v in model.state_dict().items()}
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
    _remove_dead_temporaries(path)
    fd, tmp = files.create_temporary(path)
    os.close(fd)
    try:
        save_file(tensors, str(tmp), metadata={KEY: json.dumps(header)})
        files.give_ordinary_mode(tmp)  # save_file replaces the file with a private (0600) one
        files.commit_replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _incomplete(path, what: str) -> ModelFileError:
    return ModelFileError(
        f"{path} is not a complete training checkpoint ({what}); it is damaged or from "
        "another program: train into another folder, or start over with --no-resume"
    )


def _check_header(path, header: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint that lacks (or garbles) anything :func:`load_checkpoint` reads."""
    if not isinstance(header, dict):
        raise _incomplete(path, f"its header is a JSON {type(header).__name__}, not an object")
    missing = [k for k in ("state", "param_groups", "optim_scalars") if k not in header]
    if missing:
        raise _incomplete(path, f"it lacks {', '.join(missing)}")
    state = header["state"]
    if not isinstance(state, dict):
        raise _incomplete(path, "its training state is not an object")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise _incomplete(path, f"its training state lacks {', '.join(missing)}")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _incomplete(path, f"its step is {str(step)[:40]!r}")
    if not isinstance(state["best"], (int, float)) or isinstance(state["best"], bool):
        raise _incomplete(path, f"its best loss is {str(state['best'])[:40]!r}")
    if not isinstance(state["history"], list):
        raise _incomplete(path, "its history is not a list")
    rngs = state["numpy_rng"]
    if not isinstance(rngs, list) or not all(
            isinstance(r, dict) and isinstance(r.get("bit_generator"), str)
            and isinstance(r.get("state"), dict) for r in rngs):
        raise _incomplete(path, "its NumPy random states are not generator states")
    if state.get("geco") is not None and not isinstance(state["geco"], dict):
        raise _incomplete(path, "its GECO state is not an object")
    if not isinstance(header["param_groups"], list) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list)
            for g in header["param_groups"]):
        raise _incomplete(path, "its optimizer settings are not parameter groups")
    scalars = header["optim_scalars"]
    if not isinstance(scalars, dict) or not all(
            isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())
            for v in scalars.values()):
        raise _incomplete(path, "its optimizer scalars are not numbers")
    rng = tensors.get("rng.torch")
    if rng is None or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise _incomplete(path, "it lacks the torch random state 'rng.torch'")
    for k in tensors:
        if k.startswith("optim."):
            parts = k.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2]:
                raise _incomplete(path, f"it holds a tensor named {k[:60]!r}")
    for idx in scalars:
        if not str(idx).isdigit():
            raise _incomplete(path, f"it holds optimizer scalars for {str(idx)[:40]!r}")


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore weights (and optimizer, torch RNG) from ``path``; return the saved ``state``.

    Everything is checked first: on a :class:`ModelFileError` the model, the optimizer and
    the random state are unchanged.
    """
    from safetensors import safe_open

    _remove_dead_temporaries(Path(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if KEY not in meta:
                raise ModelFileError(f"{path} is not a napari-probunet training checkpoint")
            limits.check("MAX_HEADER_BYTES", len(meta[KEY]),
                         f"{path}: the checkpoint's header", ModelFileError)
            header = json.loads(meta[KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ModelFileError:
        raise
    except RecursionError:
        raise _incomplete(path, "its header is nested too deeply") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read training checkpoint {path} "
                             f"({exc.strerror or exc})") from None
    except Exception as exc:
        raise ModelFileError(f"cannot read training checkpoint {path}: {exc}") from exc
    _check_header(path, header, tensors)
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(model_sd))
    unexpected = sorted(set(model_sd) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(model_sd[k].shape)} vs now {tuple(v.shape)}"
             for k, v in expected.items() if k in model_sd and model_sd[k].shape != v.shape]
    if missing or unexpected or wrong:  # another architecture
        detail = "; ".join(s for s in (
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"size mismatch for {'; '.join(wrong[:2])}" if wrong else "") if s)
        raise ModelFileError(
            f"{path} holds a model of another architecture than the one configured now "
            f"({detail[:200]}); train into another folder, or start over with --no-resume"
        )
    optim_state = None
    if optimizer is not None:
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        for idx, scalars in header["optim_scalars"].items():
            for name, value in scalars.items():
                state.setdefault(int(idx), {})[name] = torch.tensor(value)
        optim_state = {"state": state, "param_groups": header["param_groups"]}
        groups = optimizer.state_dict()["param_groups"]
        if len(groups) != len(optim_state["param_groups"]) or any(
                len(a["params"]) != len(b["params"])
                for a, b in zip(groups, optim_state["param_groups"])):
            raise _incomplete(path, "its optimizer state is for other parameters")
    before = {k: v.clone() for k, v in expected.items()}
    try:
        model.load_state_dict(model_sd)
        if optim_state is not None:
            optimizer.load_state_dict(optim_state)
        torch.set_rng_state(tensors["rng.torch"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        model.load_state_dict(before)
        raise _incomplete(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return header["state"]
