"""Fold a model that sees neighbouring slices (``slice_context``) into a one-slice model.

The result computes exactly what the 2.5D model computes when each neighbour is the slice
itself (``probunet evaluate --neighbours none``), with one input channel: the first
convolutions' weights of the slices summed (:func:`napari_probunet.training.donor.
fold_neighbours`). The domain record is taken from ``--domain-from`` (a one-slice model trained
on the same data: the 2.5D run measured its domain on stacks of three slices). How the bundled
``lidc`` model of 2026-12-06 was made (docs/model-card-lidc.md):

    python benchmarks/fold_context_model.py runs/lidc_context/best.safetensors \\
        napari_probunet/models/lidc.safetensors --domain-from lidc
"""

from __future__ import annotations

import argparse
import copy

import torch

from napari_probunet.model.modelfile import load_model, save_model
from napari_probunet.training.donor import fold_neighbours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model file with slice_context > 0")
    parser.add_argument("out", help="the one-slice model file to write")
    parser.add_argument("--domain-from", required=True,
                        help="a one-slice model trained on the same data (its domain record)")
    args = parser.parse_args()
    wide = load_model(args.model, device="cpu")
    donor = load_model(args.domain_from, device="cpu")
    folded = fold_neighbours(wide)
    folded.config.domain = copy.deepcopy(donor.config.domain)
    x = torch.rand(2, 1, folded.config.input_size, folded.config.input_size)
    with torch.no_grad():
        a, b = wide.encode(x.repeat(1, wide.config.in_channels, 1, 1)), folded.encode(x)
    gap = float((a.features - b.features).abs().max())
    provenance = {**wide.metadata.get("provenance", {}),
                  "folded": {"from_sha256": wide.source_sha256,
                             "how": "benchmarks/fold_context_model.py: the slices' first-"
                                    "convolution weights summed (the 2.5D model given one "
                                    "slice repeated)",
                             "domain_from": {"model": args.domain_from,
                                             "sha256": donor.source_sha256},
                             "max_feature_difference": gap}}
    sha = save_model(folded, args.out, provenance)
    print(f"wrote {args.out} (sha256 {sha[:12]}); largest feature difference {gap:.2e}")


if __name__ == "__main__":
    main()
