"""How far can any model tell a slice that all four radiologists marked from one that one of
them marked? (issue #28: "empty samples within 10 points of the empty masks in every row").

A calibrated model draws an empty hypothesis with its estimate of P(a radiologist leaves this
slice empty). To be within 10 points of the radiologists in every row it must predict about
0.75 where one of four marked and about 0 where four did. This script fits that probability
from **oracle** features, taken from the radiologists' own masks and the set's layout, which no
image model is given: the slice's place in its nodule (first or last, distance to the nearest
end, the nodule's length in slices, relative position), the largest radiologist's outline on
the slice, the union's on its neighbours, the nodule's largest outline on any slice, and the
contrast inside the union against a ring around it ("image-side": what a model could in
principle read from the scan); and, apart, how many radiologists marked the nodule on any
slice (their opinion of the nodule as a whole, which no scan shows). A small network (one
hidden layer) is fitted on the training patients' slices with the share of empty masks as a
soft target and scored by binary cross-entropy on the validation patients, beside a constant
(the training mean) and the bound for knowing the row exactly.

    python benchmarks/lidc_empty_oracle.py [--split val] [--out result.json]
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np
import torch
from scipy import ndimage

from napari_probunet.data.readers import open_cases

SPEC = "../shared/data/lidc-idri-slices#part={}&fractions=0.75,0.05,0.2&seed=0&by=patient"
NAMES = ("first or last slice", "slices to the nearest end", "log nodule length",
         "distance from the nodule's middle", "log largest outline", "log neighbours' union",
         "contrast inside vs ring", "intensity inside", "log nodule's largest outline",
         "radiologists marking the nodule on any slice")


def features(part: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X (n, 8), share of empty masks (n,))`` of one split's slices."""
    cases = open_cases(SPEC.format(part))
    nodules = cases.ids_of("nodule")
    numbers = [int(s.rsplit("slice-", 1)[1]) for s in cases.ids_of("slice")]
    where = {(n, s): i for i, (n, s) in enumerate(zip(nodules, numbers))}
    extent = collections.defaultdict(list)
    for n, s in zip(nodules, numbers):
        extent[n].append(s)
    rows, target = [], []
    for i in range(len(cases)):
        case = cases[i]
        union = case.masks.max(axis=0) > 0
        areas = case.masks.reshape(len(case.masks), -1).astype(bool).sum(axis=1)
        lo, hi = min(extent[nodules[i]]), max(extent[nodules[i]])
        s = numbers[i]
        image = np.asarray(case.image, np.float64)
        ring = ndimage.binary_dilation(union, iterations=3) & ~union
        inside = image[union].mean() if union.any() else image.mean()
        contrast = inside - (image[ring].mean() if ring.any() else image.mean())
        rows.append([float(s in (lo, hi)), min(s - lo, hi - s), np.log(hi - lo + 1),
                     abs((s - lo) / max(hi - lo, 1) - 0.5), np.log1p(areas.max()), 0.0,
                     contrast / 255, inside / 255, 0.0, 0.0])
        target.append(1.0 - float((areas > 0).mean()))
    x = np.array(rows, np.float64)
    marked = collections.defaultdict(lambda: np.zeros(4, bool))
    largest = collections.defaultdict(float)
    for i, n in enumerate(nodules):
        areas = cases[i].masks.reshape(len(cases[i].masks), -1).astype(bool).sum(axis=1)
        marked[n] |= areas > 0
        largest[n] = max(largest[n], x[i, 4])
    x[:, 8] = [largest[n] for n in nodules]
    x[:, 9] = [marked[n].sum() for n in nodules]
    for i, (n, s) in enumerate(zip(nodules, numbers)):
        around = [where.get((n, s + d)) for d in (-1, 1)]
        x[i, 5] = np.log1p(max([int(cases[j].masks.max(axis=0).astype(bool).sum())
                                for j in around if j is not None], default=0))
    return x, np.array(target)


def bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def fit(x_train, y_train, x_eval, seed: int = 0, steps: int = 2000) -> np.ndarray:
    """P(empty) on ``x_eval`` from a one-hidden-layer network fitted on the soft targets."""
    torch.manual_seed(seed)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-9
    x = torch.tensor((x_train - mu) / sd, dtype=torch.float32)
    y = torch.tensor(y_train, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], y).backward()
        opt.step()
    with torch.no_grad():
        z = torch.tensor((x_eval - mu) / sd, dtype=torch.float32)
        return torch.sigmoid(net(z)[:, 0]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--out", help="also write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x_train, y_train = features("train")
    x_eval, y_eval = features(args.split)
    entropy = np.where((y_eval > 0) & (y_eval < 1), -(y_eval * np.log(np.clip(y_eval, 1e-9, 1))
                       + (1 - y_eval) * np.log(np.clip(1 - y_eval, 1e-9, 1))), 0.0)
    result = {"split": args.split, "slices": len(y_eval), "train_slices": len(y_train),
              "bce_constant": bce(np.full_like(y_eval, y_train.mean()), y_eval),
              "bce_knowing_the_row": float(entropy.mean()), "features": {}}
    for name, cols in (("place in the nodule", [0, 1, 2, 3]), ("outline sizes", [4, 5]),
                       ("contrast", [6, 7]), ("image-side", list(range(9))),
                       ("radiologists on the nodule", [9]), ("all", list(range(len(NAMES))))):
        p = fit(x_train[:, cols], y_train, x_eval[:, cols])
        rows = {}
        for k in (1, 2, 3, 4):
            sel = np.isclose(y_eval, 1 - k / 4)
            rows[f"{k} of 4"] = {"slices": int(sel.sum()),
                                 "p_empty": round(float(p[sel].mean()), 3),
                                 "empty_masks": 1 - k / 4}
        result["features"][name] = {"columns": [NAMES[c] for c in cols],
                                    "bce": bce(p, y_eval), "rows": rows}
    print(f"{args.split}: {result['slices']} slices; BCE of P(empty): constant "
          f"{result['bce_constant']:.3f}, knowing the row exactly "
          f"{result['bce_knowing_the_row']:.3f}")
    for name, r in result["features"].items():
        per = ", ".join(f"{k}: {v['p_empty']:.2f}" for k, v in r["rows"].items())
        print(f"  oracle {name:20s} BCE {r['bce']:.3f}; P(empty) by row marked {per}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
