"""How much of a model's GED(16) / oracle ratio is the luck of the draw?

    python benchmarks/ged_seeds.py lesions runs/other/last.safetensors --seeds 10

GED(16) compares 16 samples with the graders' masks, and the oracle's GED(16) (16 draws from
the true mode distribution) is itself a random number: on the 200 held-out ``lesions``
images it varies by more than 10% from one sampling seed to the next, and the ratio inherits
that. This evaluates each model with ``--seeds`` sampling seeds on the same images (seed ``s``
draws the same oracle samples for every model, so the comparisons are paired) and prints, per
model, the mean and standard deviation over seeds of its GED(16), the oracle's, their ratio,
the ratio of the means, and the model's mean GED(16) over the oracle's expected GED(16) (in
closed form: ``oracle_expected_ged16`` of ``probunet evaluate``). docs/model.md quotes the
figures.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="bundled model names or model files")
    parser.add_argument("--data", default="synthetic:lesions?n=200&seed=1000&size=64")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--json", help="write the per-seed figures to this file")
    args = parser.parse_args(argv)

    import torch

    from napari_probunet.model.modelfile import load_model
    from napari_probunet.session import Session
    from napari_probunet.training.evaluate import evaluate_model, open_data

    torch.set_num_threads(1)
    cases, spec = open_data(args.data)
    n = args.samples
    table = {}
    for name in args.models:
        session = Session(load_model(name), device="cpu")
        rows = []
        for seed in range(args.seeds):
            r = evaluate_model(session, cases, n_samples=[n], seed=seed, progress=False)
            rows.append((r[f"ged{n}"], r[f"oracle_ged{n}"]))
            expected = r[f"oracle_expected_ged{n}"]  # the same for every seed and model
        model, oracle = np.array(rows).T
        ratio = model / oracle
        table[name] = {"ged": model.tolist(), "oracle_ged": oracle.tolist(),
                       "oracle_expected_ged": expected}
        print(f"{name}: GED({n}) {model.mean():.4f} +- {model.std(ddof=1):.4f}, oracle "
              f"{oracle.mean():.4f} +- {oracle.std(ddof=1):.4f}; ratio per seed {ratio.mean():.3f} "
              f"+- {ratio.std(ddof=1):.3f} (min {ratio.min():.3f}, max {ratio.max():.3f}, seed 0 "
              f"{ratio[0]:.3f}); ratio of means {model.mean() / oracle.mean():.3f}; the oracle's "
              f"expected GED({n}) {expected:.4f}, the model's mean over it {model.mean() / expected:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": spec, "samples": n, "models": table}, f, indent=1)


if __name__ == "__main__":
    main()
