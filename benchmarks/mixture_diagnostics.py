"""Does a model's prior follow its image, and how do its components sit on the modes?

    python benchmarks/mixture_diagnostics.py runs/lesions_mixture_weight_head/last.safetensors

For a model trained on the synthetic ``lesions`` data (three known modes per image: core only,
core + halo, nothing), on the first ``--images`` held-out images (seed 1000):

- how much the prior varies across images: the standard deviation across images of its
  overall mean per axis, and, for a mixture, of each component's weight, with the correlation
  of each weight with the true frequency of each mode;
- the posterior's view: its sigma per axis and the Mahalanobis distance between the three
  modes' posterior means (are there clean clusters for components to sit on?);
- for a mixture, each component: its mean weight, the mode its mean decodes to (counts over
  images), and of 16 samples from it the share that decode to its commonest mode (purity) and
  the share within IoU 0.9 of some mode (clean).

docs/model.md ("Why the weights do not follow the image") quotes these figures.
"""

from __future__ import annotations

import argparse

import numpy as np

MODES = ("core", "halo", "empty")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=30)
    args = parser.parse_args(argv)

    import torch

    from napari_probunet.data.synthetic import make_case
    from napari_probunet.model.modelfile import load_model
    from napari_probunet.session import Session

    torch.set_num_threads(1)
    session = Session(load_model(args.model), device="cpu")
    rng = np.random.default_rng(0)
    means, weights, truths, q_sigma, distances = [], [], [], [], []
    decodes_to, purity, clean = None, [], []
    for i in range(args.images):
        case = make_case("lesions", 1000, i)
        session.set_image(case.image)
        modes = case.truth.modes.astype(bool)
        w, mu, sigma = session.prior_components()
        means.append(session.prior()[0])
        weights.append(w)
        truths.append(case.truth.probs)
        located = [session.locate(case.truth.modes[m]) for m in range(3)]
        q_mu = np.stack([loc.mu for loc in located])
        q_sd = np.stack([loc.sigma for loc in located])
        q_sigma.append(q_sd)
        distances.append([np.sqrt((((q_mu[a] - q_mu[b]) ** 2) / (0.5 * (q_sd[a] ** 2 + q_sd[b] ** 2))).sum())
                          for a, b in ((0, 1), (0, 2), (1, 2))])
        k = len(w)
        if k == 1:
            continue
        decodes_to = np.zeros((k, 3), int) if decodes_to is None else decodes_to
        centre = np.asarray(session.decode(mu.astype(np.float32))).reshape(k, *modes.shape[1:]).astype(bool)
        row_purity, row_clean = [], []
        for c in range(k):
            decodes_to[c, int(np.argmax([_iou(centre[c], m) for m in modes]))] += 1
            z = (mu[c] + sigma[c] * rng.standard_normal((16, mu.shape[1]))).astype(np.float32)
            labels = np.asarray(session.decode(z)).reshape(16, *modes.shape[1:]).astype(bool)
            ious = np.array([[_iou(lab, m) for m in modes] for lab in labels])
            row_purity.append(np.bincount(ious.argmax(1), minlength=3).max() / 16)
            row_clean.append(float((ious.max(1) >= 0.9).mean()))
        purity.append(row_purity)
        clean.append(row_clean)

    np.set_printoptions(precision=3, suppress=True)
    weights, truths = np.array(weights), np.array(truths)
    print(f"{args.images} images of synthetic:lesions seed 1000")
    print("prior's overall mean, std across images per axis:", np.array(means).std(0))
    print("posterior sigma per axis (mean over images and modes):", np.array(q_sigma).mean((0, 1)))
    d = np.median(np.array(distances), axis=0)
    print(f"Mahalanobis distance between the modes' posterior means (median): core-halo {d[0]:.1f}, "
          f"core-empty {d[1]:.1f}, halo-empty {d[2]:.1f}")
    if decodes_to is None:
        return
    print("component | mean weight | weight std across images | corr(weight, p(core, halo, empty)) "
          "| mean decodes to (core, halo, empty) | purity | clean")
    for c in range(weights.shape[1]):
        corr = [float(np.corrcoef(weights[:, c], truths[:, m])[0, 1]) if weights[:, c].std() > 1e-6
                else float("nan") for m in range(3)]
        print(f"c{c} | {weights[:, c].mean():.3f} | {weights[:, c].std():.4f} | "
              f"{np.round(corr, 2).tolist()} | {decodes_to[c].tolist()} | "
              f"{np.mean([p[c] for p in purity]):.2f} | {np.mean([q[c] for q in clean]):.2f}")


if __name__ == "__main__":
    main()
