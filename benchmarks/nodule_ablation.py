"""Which of the two rules makes 3D hypotheses nodules? An ablation on the validation nodules.

    .venv/bin/python benchmarks/nodule_ablation.py [--part val] [--model lidc] [--n 16]

For every nodule of the LIDC-IDRI slices set's ``--part`` (the click at the centre of the
radiologists' union, the nodule's own slices), GED(n) and HM-IoU(n) in 3D of four ways of
drawing the hypotheses (``docs/scans.md``):

- ``shared + connected``: one draw per hypothesis shared by the slices, the piece connected to
  the click (what the package does);
- ``shared``: the shared draws, every piece kept;
- ``independent + connected``: every slice drawn on its own, the piece connected to the click;
- ``independent``: every slice drawn on its own, every piece kept (the behaviour before).

Also the share of non-empty hypotheses with a gap along z. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

VARIANTS = {"shared + connected": ("shared", True), "shared": ("shared", False),
            "independent + connected": ("independent", True),
            "independent": ("independent", False)}


def flat(masks):
    """``(k, S, H, W)`` -> ``(k, S * H, W)``: 3D masks as the 2D metrics take them."""
    return masks.reshape(masks.shape[0], -1, masks.shape[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="val")
    parser.add_argument("--model", default="lidc")
    parser.add_argument("--n", type=int, default=16)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from napari_probunet.data.measure import z_gaps
    from napari_probunet.model.modelfile import load_model
    from napari_probunet.review.metrics import ged, hungarian_iou
    from napari_probunet.review.nodule import NoduleRequest, sample_nodule
    from napari_probunet.review.seeds import seed_for_index
    from napari_probunet.session import Session
    from napari_probunet.training.evaluate import open_data
    from napari_probunet.training.evaluate_nodules import nodules_of_slices, paired

    spec = (f"../shared/data/lidc-idri-slices#part={args.part}&fractions=0.75,0.05,0.2"
            "&seed=0&by=patient")
    cases, _ = open_data(spec)
    nodules = nodules_of_slices(cases)
    session = Session(load_model(args.model), device="cpu")
    scores = {v: {"ged": [], "hm_iou": [], "gaps": []} for v in VARIANTS}
    t0 = time.perf_counter()
    for i, truth in enumerate(nodules):
        for name, (coupling, connect) in VARIANTS.items():
            hyp = sample_nodule(session, NoduleRequest(
                truth.volume, truth.spacing, truth.click(), n=args.n,
                seed=seed_for_index(0, i), coupling=coupling, connect=connect,
                slices=truth.slices))
            h, t = paired(hyp, truth)
            scores[name]["ged"].append(ged(flat(h), flat(t)))
            scores[name]["hm_iou"].append(hungarian_iou(flat(h), flat(t)))
            scores[name]["gaps"] += [z_gaps(m) > 0 for m in hyp.labels if m.any()]
    out = {"part": args.part, "model": args.model, "n": args.n, "n_nodules": len(nodules),
           "seconds": round(time.perf_counter() - t0, 1)}
    for name, s in scores.items():
        out[name] = {f"ged{args.n}_3d": float(np.mean(s["ged"])),
                     f"hm_iou{args.n}_3d": float(np.mean(s["hm_iou"])),
                     "share_with_gaps": float(np.mean(s["gaps"])) if s["gaps"] else None}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
