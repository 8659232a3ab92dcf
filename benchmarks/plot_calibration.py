"""Plot an `probunet evaluate --out` JSON of the flips data: mode frequencies and flip rates.

    python benchmarks/plot_calibration.py runs/flips/eval.json docs/images/flips-calibration.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    r = json.loads(open(src).read())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 1.2]})
    x = range(len(r["mode_prob"]))
    ax1.bar([i - 0.2 for i in x], r["mode_prob"], width=0.4, label="true probability")
    ax1.bar([i + 0.2 for i in x], r["mode_freq"], width=0.4, label="sampled frequency (model)")
    ax1.set_xticks(list(x), r["mode_names"], rotation=90, fontsize=7)
    ax1.set_title("32 modes: frequency over all images (100 samples each)")
    ax1.legend()
    names = list(r["flip_prob"])
    ax2.plot([0, 0.5], [0, 0.5], "k:", lw=1)
    ax2.scatter([r["flip_prob"][n] for n in names], [r["flip_rate"][n] for n in names], label="model")
    ax2.scatter([r["flip_prob"][n] for n in names], [r["oracle_flip_rate"][n] for n in names],
                marker="x", label="oracle")
    for n in names:
        ax2.annotate(n, (r["flip_prob"][n], r["flip_rate"][n]), fontsize=7)
    ax2.set_xlabel("flip probability")
    ax2.set_ylabel("pixels sampled as flipped")
    ax2.set_title("per-class flip rate")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:3])
