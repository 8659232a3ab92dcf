"""Which ambiguities has a model's latent space learnt? (a training diagnostic)

For each image and each of its true modes (synthetic data) or graders' masks, encode the mask
with the posterior, decode at the posterior mean, and score the reconstruction per class: the
fraction of the class's pixels given the mask's label. A flip the latent encodes is
reconstructed (accuracy near 1); a flip it ignores is decoded the same way for every mode, so
with synthetic data, where every true mode counts once, its two labels together score 0.5. The
same score at the prior mean is printed for comparison.

    python benchmarks/latent_usage.py runs/flips/last.safetensors "synthetic:flips?n=8&seed=1000&size=64"

Unlike `probunet evaluate`, which judges the samples, this looks inside: it tells a slow run
whose flips are still unlearnt apart from one whose prior is miscalibrated.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_probunet.data import open_cases
from napari_probunet.model.modelfile import load_model


def latent_usage(model, cases) -> dict[str, np.ndarray]:
    """Per-class reconstruction accuracy from the posterior mean and from the prior mean."""
    k = model.config.num_classes
    hits = {"posterior": np.zeros(k), "prior": np.zeros(k)}
    total = np.zeros(k)
    model.eval()
    for case in cases:
        masks = case.truth.modes if case.truth is not None else np.asarray(case.masks)
        y = torch.from_numpy(masks.astype(np.int64))
        image = model.config.preprocessing.apply(np.asarray(case.image))
        x = torch.from_numpy(np.asarray(image, np.float32))
        x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
        with torch.no_grad():
            enc = model.encode(x)
            feats = enc.features.expand(len(y), -1, -1, -1)
            q_mu, _ = model.posterior_params(x.expand(len(y), -1, -1, -1), y)
            for name, z in (("posterior", q_mu), ("prior", enc.prior_mu.expand(len(y), -1))):
                pred = model.fcomb(feats, z).argmax(1)
                hits[name] += np.bincount(y[pred == y].numpy(), minlength=k)[:k]
        total += np.bincount(masks.ravel(), minlength=k)[:k]
    flips = getattr(cases[0].truth, "flip_classes", None) or []
    out = {}
    with np.errstate(invalid="ignore"):
        for name, h in hits.items():
            out[name] = h / total
            # per flipping object, both labels together: 1 = the flip is encoded
            out[f"{name}_objects"] = np.array([(h[a] + h[b]) / (total[a] + total[b])
                                               for a, b in flips])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data", help="a folder, or synthetic:KIND?n=N&seed=S&size=H")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    cases = open_cases(args.data)
    usage = latent_usage(model, cases)
    names = model.config.class_names
    print(f"{'class':<16}{'from posterior':>16}{'from prior mean':>17}")
    for c, name in enumerate(names):
        print(f"{name:<16}{usage['posterior'][c]:>16.3f}{usage['prior'][c]:>17.3f}")
    flips = getattr(cases[0].truth, "flip_classes", None) or []
    if flips:
        print("\nflipping objects, both labels (1 = the latent encodes the flip):")
        for (a, _), post, prior in zip(flips, usage["posterior_objects"], usage["prior_objects"]):
            print(f"{names[a]:<16}{post:>16.3f}{prior:>17.3f}")


if __name__ == "__main__":
    main()
