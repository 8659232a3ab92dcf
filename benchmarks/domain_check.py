"""How often the domain check (napari_probunet.review.domain) warns: in-domain vs clearly foreign images.

    python benchmarks/domain_check.py --model lidc \
        --data "../shared/data/lidc-idri-slices#part=test&fractions=0.75,0.05,0.2&seed=0&by=patient"

Reports the share of images flagged (any warning, as the widget would show it) for:
- the given in-domain data (the LIDC test patients) and, if present, ../shared/data/lidc-crops;
- foreign images: 10 random 128x128 crops of each of scikit-image's bundled pictures (natural
  photographs, microscopy: 'cell' phase contrast, 'immunohistochemistry'; astronomy, text,
  textures; a CT phantom), the synthetic 'lesions' images at 128x128, and the package's own
  synthetic samples. Colour pictures are counted twice: as given (colour) and converted to grey.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

SKIMAGE_PICTURES = ("astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass",
                    "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page",
                    "retina", "rocket", "text", "clock", "shepp_logan_phantom")


def foreign_images(size: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    import skimage.data

    from napari_probunet.data.synthetic import SyntheticDataset

    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for name in SKIMAGE_PICTURES:
        picture = getattr(skimage.data, name)()
        crops = []
        for _ in range(10):
            y = rng.integers(0, picture.shape[0] - size + 1)
            x = rng.integers(0, picture.shape[1] - size + 1)
            crops.append(picture[y:y + size, x:x + size])
        out[name] = crops
        if picture.ndim == 3:
            out[f"{name} (grey)"] = [(c[..., :3] @ [0.299, 0.587, 0.114]).astype(np.uint8)
                                     for c in crops]
    out["synthetic lesions"] = [c.image for c in SyntheticDataset("lesions", 20, seed=0, size=size)]
    out["synthetic flips"] = [c.image for c in SyntheticDataset("flips", 20, seed=0, size=size)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lidc")
    parser.add_argument("--data", required=True, help="in-domain data (e.g. the test split)")
    parser.add_argument("--crops", default="../shared/data/lidc-crops")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--foreign-seed", type=int, default=0,
                        help="which random crops of the pictures (0: the reported set; 1: the "
                        "development set the threshold's percentile was chosen on)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from napari_probunet.data.readers import open_cases
    from napari_probunet.model.modelfile import load_model
    from napari_probunet.review.domain import check_image

    config = load_model(args.model).config
    result: dict = {"model": args.model, "foreign_seed": args.foreign_seed, "in_domain": {},
                    "foreign": {}}
    for label, spec in (("data", args.data), ("crops", args.crops)):
        if label == "crops" and not Path(spec).exists():
            continue
        checks = [check_image(config, c.image) for c in open_cases(spec)]
        result["in_domain"][label] = {"spec": spec, "n": len(checks),
                                      "flagged": float(np.mean([not c.ok for c in checks]))}
    total = flagged = 0
    for name, images in foreign_images(config.input_size, args.foreign_seed).items():
        hits = [not check_image(config, im).ok for im in images]
        result["foreign"][name] = float(np.mean(hits))
        total, flagged = total + len(hits), flagged + sum(hits)
    result["foreign_flagged"] = flagged / total
    result["foreign_n"] = total
    for label, r in result["in_domain"].items():
        print(f"in-domain {label:<6} {r['n']:>5} images: {r['flagged']:.1%} flagged  ({r['spec']})")
    print(f"foreign         {total:>5} images: {result['foreign_flagged']:.1%} flagged")
    for name, share in result["foreign"].items():
        print(f"    {name:<28} {share:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
