"""Do a mixture prior's weights follow the slice? The weight on "no nodule", by radiologists.

    python benchmarks/lidc_mixture_weights.py lidc [--part test] [--limit 600]

For a model with a mixture prior on the LIDC-IDRI slices (the patient split of the bundled
``lidc`` model), on each slice of ``--part``: the prior's components (``Session.prior_components``),
their means decoded, and the summed weight of the components whose mean decodes to an empty
mask. Printed by how many of the four radiologists marked the slice, beside the share of their
masks that are empty (what a calibrated weight would be), with the correlation over slices.
For a single Gaussian there is one component, so its "empty weight" is 0 or 1 per slice.
docs/model-card-lidc.md quotes the figures.
"""

from __future__ import annotations

import argparse

import numpy as np

SPLIT = "fractions=0.75,0.05,0.2&seed=0&by=patient"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data", default="../shared/data/lidc-idri-slices")
    parser.add_argument("--part", default="test", choices=("train", "val", "test"))
    parser.add_argument("--limit", type=int, default=0, help="first N slices (0 = all)")
    args = parser.parse_args(argv)

    import torch

    from napari_probunet.model.modelfile import load_model
    from napari_probunet.session import Session
    from napari_probunet.training.evaluate import open_data

    torch.set_num_threads(1)
    cases, _ = open_data(f"{args.data}#part={args.part}&{SPLIT}")
    session = Session(load_model(args.model), device="cpu")
    n = len(cases) if args.limit <= 0 else min(args.limit, len(cases))
    empty_weight, empty_masks, marked = [], [], []
    for i in range(n):
        case = cases[i]
        session.set_image(case.image)
        w, mu, _sigma = session.prior_components()
        decoded = np.asarray(session.decode(mu.astype(np.float32))).reshape(len(w), -1)
        empty_weight.append(float(w[decoded.max(axis=1) == 0].sum()))
        drawn = np.asarray(case.masks).reshape(len(case.masks), -1).max(axis=1) > 0
        empty_masks.append(1.0 - drawn.mean())
        marked.append(int(drawn.sum()))
    empty_weight, empty_masks, marked = map(np.asarray, (empty_weight, empty_masks, marked))
    print(f"{args.model} on {n} {args.part} slices: components {len(w)}")
    print("radiologists marking  slices  weight on 'no nodule' (mean, sd)  empty masks")
    for k in sorted(set(marked.tolist())):
        sel = marked == k
        print(f"  {k} of {len(drawn)}{sel.sum():>18}{empty_weight[sel].mean():>14.2f} "
              f"({empty_weight[sel].std():.2f}){empty_masks[sel].mean():>18.2f}")
    print(f"correlation over slices: {np.corrcoef(empty_weight, empty_masks)[0, 1]:.2f}")


if __name__ == "__main__":
    main()
