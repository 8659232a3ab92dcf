"""``probunet info``: show what a model file contains, without building the network.

The description itself (header checked as loading checks it, sha256, weights finite or not)
is :func:`napari_probunet.model.modelfile.describe_model`; weights that are finite are then
probed for diversity (:mod:`napari_probunet.model.sanity`: a model whose hypotheses would all be
identical is BROKEN too). This module parses the arguments and prints the description, as a
table or (``--json``) as JSON; the exit code is 2 for a BROKEN model, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json

from napari_probunet.errors import UserError
from napari_probunet.model import modelfile


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="default",
                        help="model file, or a bundled model: lidc, lesions, default (= "
                        f"{modelfile.DEFAULT_MODEL_NAME})")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the description; exit code 2 if the model is broken (its ``weights`` say so)."""
    described = modelfile.describe_model(args.model)
    info = described.to_dict()
    if info["weights"] == "finite":  # finite, but can it give diverse hypotheses?
        info["weights"] = _diversity(described.path)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_table(described.path, described.metadata, info)
    return 2 if str(info["weights"]).startswith("BROKEN") else 0


def _diversity(path) -> str:
    """``"finite"``, or ``"BROKEN: ..."`` if every hypothesis of the model would be the same
    (:func:`napari_probunet.model.sanity.diversity_problem`, on fixed probe images)."""
    from napari_probunet.model.sanity import diversity_problem  # lazy: torch

    try:
        problem = diversity_problem(modelfile.load_model(path))
    except UserError as exc:
        return f"BROKEN: {exc}"
    return "finite" if problem is None else f"BROKEN: {path.name}: {problem}"


def _print_table(path, meta: dict, info: dict) -> None:
    """The description as aligned ``key value`` lines: file, size, weights, the configuration
    that matters to a user, the domain the model was trained on and its provenance."""
    cfg = meta.get("config", {})
    bundled = modelfile.bundled_model_of(path)
    if bundled is not None:
        print(f"bundled      {bundled.name}: {bundled.title}")
    print(f"model file   {path}")
    print(f"sha256       {info['sha256']}")
    print(f"size         {info['bytes'] / 1e6:.2f} MB, format {meta['format_version']}")
    print(f"weights      {info['weights']}")
    for key in ("class_names", "channels", "latent_dim", "input_size", "beta", "preprocessing"):
        print(f"{key:<12} {cfg.get(key)}")
    if cfg.get("deterministic"):
        print("kind         deterministic U-Net (baseline): every sample is the same map")
    elif cfg.get("latent_distribution") == "mixture":
        if cfg.get("mixture_weights") == "unet":
            source = "a head on the U-Net's features"
        else:
            source = "the prior net"
        print(f"prior        a mixture of {cfg.get('mixture_components')} Gaussians, "
              f"weights from {source}")
    else:
        print("prior        one axis-aligned Gaussian (the paper's)")
    domain = cfg.get("domain") or {}
    for key in ("modality", "description", "intensity", "training_data"):
        if domain.get(key):
            print(f"{key:<12} {domain[key]}")
    if domain.get("reference"):
        print(f"domain check {len(domain['reference'])} reference images, threshold "
              f"{domain.get('threshold', 0):.2f} (napari_probunet.review.domain)")
    for key, value in (meta.get("provenance") or {}).items():
        print(f"{key:<12} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
