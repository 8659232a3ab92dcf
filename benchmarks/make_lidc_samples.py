"""Write napari_probunet/samples/lidc_test_slices.npz: the real CT samples of File > Open Sample.

    python benchmarks/make_lidc_samples.py [--data ../shared/data/lidc-idri-slices]

The slices come from the LIDC model's *test* patients (never trained on, never used for a
choice) and were picked by the radiologists' masks alone, never by the model's output: among
test slices whose marked masks average 150-600 pixels, for 4, 2 and 1 radiologists marking,
the slice at the 25th (4 and 2 marking) or 50th (1 marking) percentile of agreement (the
intersection over the union of the marked masks). LIDC-IDRI is CC BY 3.0 (Armato III et al.,
Medical Physics 38(2), 2011); these 128x128 PNG crops are from the public "LIDC-IDRI slices" set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SPLIT = "#part=test&fractions=0.75,0.05,0.2&seed=0&by=patient"
OUT = Path(__file__).resolve().parents[1] / "napari_probunet" / "samples" / "lidc_test_slices.npz"
PICKS = ((4, 0.25), (2, 0.25), (1, 0.5))  # (radiologists marking, agreement percentile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/lidc-idri-slices")
    args = parser.parse_args()
    from napari_probunet.data.readers import open_cases

    test = open_cases(args.data + SPLIT)
    by_marked: dict[int, list] = {}
    for i in range(len(test)):
        masks = test[i].masks.reshape(test[i].n_graders, -1) > 0
        drawn = masks.any(axis=1)
        if not drawn.any():
            continue
        areas = masks.sum(axis=1)[drawn]
        if not 150 <= areas.mean() <= 600:
            continue
        union = np.logical_or.reduce(masks[drawn]).sum()
        agreement = np.logical_and.reduce(masks[drawn]).sum() / union
        by_marked.setdefault(int(drawn.sum()), []).append((agreement, i))
    images, masks, ids = [], [], []
    for marked, q in PICKS:
        ranked = sorted(by_marked[marked])
        _, i = ranked[int(q * len(ranked))]
        case = test[i]
        images.append(case.image.astype(np.uint8))
        masks.append(case.masks)
        ids.append(case.case_id)
        print(f"{marked} marking: {case.case_id}")
    np.savez_compressed(OUT, images=np.stack(images), masks=np.stack(masks), ids=np.array(ids))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
