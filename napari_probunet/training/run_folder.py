"""The run folder: what a training run writes, and what a later leg reads back.

``<out>/``

- ``config.json``: the model configuration, the training settings, the precision and the
  world size of the latest leg (and where the weights came from, for ``init_from``);
- ``checkpoint.safetensors``: everything an exact resume needs (weights, optimiser, step,
  best validation GED, history, every rank's batch generator, GECO's state);
- ``last.safetensors`` and ``best.safetensors``: model files with their provenance, the
  latest and the one with the lowest validation GED;
- ``log.csv`` and ``curves.png`` (:mod:`~napari_probunet.training.runlog`).

Only rank 0 writes here.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from napari_probunet import __version__
from napari_probunet.model.config import ModelConfig
from napari_probunet.model.modelfile import save_model
from napari_probunet.training.runlog import write_log


class RunFolder:
    """The files of one run under ``path`` (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoint = path / "checkpoint.safetensors"
        self.config_json = path / "config.json"

    # -- config.json -------------------------------------------------------------------------------
    def changed_settings(self, now: dict) -> list[str]:
        """The training settings ``now`` that differ from those ``config.json`` recorded.

        A resumed run follows the settings it is given (the schedules are functions of the
        step), so changing e.g. ``beta_hold_steps`` between legs is allowed; this says so
        ("key: old -> new").
        """
        try:
            before = json.loads(self.config_json.read_text())["train_config"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        now = json.loads(json.dumps(now))  # tuples -> lists, as recorded
        return [f"{k}: {before[k]!r} -> {now[k]!r}" for k in sorted(now)
                if k in before and before[k] != now[k]]

    def recorded_donor(self) -> dict[str, Any] | None:
        """Where the first leg's weights came from (``init_from``), as it recorded it."""
        try:
            return json.loads(self.config_json.read_text()).get("initialised_from")
        except (OSError, ValueError):
            return None

    def write_config(self, model_cfg: ModelConfig, meta: dict[str, Any]) -> None:
        """``config.json``: the model configuration and the run's ``meta``."""
        self.config_json.write_text(json.dumps({"model": model_cfg.to_dict(), **meta}, indent=2))

    # -- checkpoints and model files ---------------------------------------------------------------
    def save_checkpoint(self, model, optimizer, state: dict[str, Any]) -> None:
        """The checkpoint (``state``: step, best, history, numpy_rng, geco, meta), then
        ``last.safetensors`` and the log."""
        from napari_probunet.model.checkpoint import save_checkpoint  # torch

        save_checkpoint(self.checkpoint, model, optimizer, state)
        self.save_model(model, "last", state["meta"], state["step"], state["history"])
        write_log(self.path, state["history"])

    def save_model(self, model, name: str, meta: dict[str, Any], step: int,
                   history: list[dict[str, Any]]) -> None:
        """``<name>.safetensors``: the model file, with its provenance."""
        save_model(model, self.path / f"{name}.safetensors", model_provenance(meta, step, history))

    def final_model(self) -> Path:
        """``best.safetensors`` where validation made one, else ``last.safetensors``."""
        best = self.path / "best.safetensors"
        return best if best.exists() else self.path / "last.safetensors"

    def export(self, export_to: str | Path) -> None:
        """Copy :meth:`final_model` to ``export_to`` (its folder made where needed)."""
        Path(export_to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.final_model(), export_to)


def model_provenance(meta: dict[str, Any], step: int, history: list) -> dict[str, Any]:
    """What a model file records of the run that trained it: the versions, recipe, data,
    steps, precision, world size, the last validation and (``init_from``) its starting point."""
    import torch

    last_val = next((r for r in reversed(history) if "val_ged16" in r), {})
    donor = meta.get("initialised_from")
    return {
        "trained_by": f"napari-probunet {__version__}",
        "torch": torch.__version__,
        "recipe": meta.get("recipe"),
        "data": meta["train_config"]["data"],
        "steps": step,
        "amp": meta["amp"],
        "world_size": meta["world_size"],
        "validation": {k: v for k, v in last_val.items() if k.startswith("val_")},
        "date": time.strftime("%Y-%m-%d"),
        **({"initialised_from": donor} if donor else {}),
    }
