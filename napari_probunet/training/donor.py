"""A new run started from another model file's weights (``init_from`` in the recipe).

The architecture must match the recipe's ``[model]``; the optimiser and the schedules start
fresh. A committed model file is how a long run's progress moves to a new machine without its
checkpoint. The run's model files record their starting point (the donor's name or path, its
sha256, and its own recipe, steps and date), since the donor file may later be replaced.
"""

from __future__ import annotations

import sys
from typing import Any

from napari_probunet.errors import UserError
from napari_probunet.model.modelfile import load_model


def init_weights(model, source: str, verbose: bool) -> dict[str, Any]:
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
