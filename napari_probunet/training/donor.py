"""A new run started from another model file's weights (``init_from`` in the recipe).

The architecture must match the recipe's ``[model]`` (except that a one-slice donor can start a
model that also sees neighbouring slices, ``slice_context``); the optimiser and the schedules start
fresh. A committed model file is how a long run's progress moves to a new machine without its
checkpoint. The run's model files record their starting point (the donor's name or path, its
sha256, and its own recipe, steps and date), since the donor file may later be replaced.
"""

from __future__ import annotations

import sys
from typing import Any

from napari_probunet.errors import UserError
from napari_probunet.model.modelfile import load_model


def _widened(config, donor_config, mine: dict, theirs: dict) -> dict:
    """A one-slice donor's weights for a model with ``slice_context``: each first convolution's
    image weights go to the middle slice, the neighbours' start at zero (the model starts as
    the donor and learns what the neighbours add); other tensors as they are."""
    context = config.slice_context
    if not context or donor_config.slice_context or donor_config.in_channels != 1:
        return theirs
    out = dict(theirs)
    for k, v in theirs.items():
        if k not in mine or mine[k].ndim != 4 or v.ndim != 4:
            continue
        extra = mine[k].shape[1] - v.shape[1]
        if extra != 2 * context or mine[k].shape[0] != v.shape[0]:
            continue
        wide = v.new_zeros(mine[k].shape)
        wide[:, context] = v[:, 0]  # the image (the donor's only image channel)
        wide[:, 2 * context + 1:] = v[:, 1:]  # the posterior's mask channels, if any
        out[k] = wide
    return out


def init_weights(model, source: str, verbose: bool) -> dict[str, Any]:
    """Copy the weights of a model file into ``model`` (same architecture), or explain why not.

    Returns what the model files trained from here record of their starting point: the name or
    path given, the donor's sha256 and its own recipe and steps (the donor file may later be
    replaced, e.g. a bundled model by a newer one)."""
    import torch

    donor = load_model(source, device="cpu")
    mine, theirs = model.state_dict(), donor.state_dict()
    theirs = _widened(model.config, donor.config, mine, theirs)
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


def fold_neighbours(model):
    """A one-slice model that computes exactly what ``model`` (with ``slice_context``) does
    when each neighbour is the slice itself (a single image: ``probunet evaluate --neighbours
    none``): every first convolution's weights of the ``2c + 1`` slices are summed into one
    channel. Returns a new model; the domain record and the other weights are copied."""
    import copy

    import torch

    from napari_probunet.model.network import build_model

    context = model.config.slice_context
    if not context:
        raise UserError("this model sees no neighbouring slices (slice_context = 0): nothing "
                        "to fold")
    config = copy.deepcopy(model.config)
    config.slice_context, config.in_channels = 0, 1
    folded = build_model(config).eval()
    mine, theirs = folded.state_dict(), model.state_dict()
    with torch.no_grad():
        for k, v in mine.items():
            w = theirs[k]
            if w.shape != v.shape:  # a first convolution: the slices' weights summed
                images = 2 * context + 1
                w = torch.cat([w[:, :images].sum(dim=1, keepdim=True), w[:, images:]], dim=1)
            v.copy_(w.to(v.dtype))
    return folded
