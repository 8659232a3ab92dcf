"""What a training run writes beside its checkpoints: ``log.csv`` and ``curves.png``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def write_log(out: Path, history: list[dict[str, Any]]) -> None:
    """``log.csv`` (one row per logged step, every key seen as a column) and its curves."""
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(out / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    save_curves(out, history)


def axis_scale(key: str, values: list[float]) -> str:
    """The y scale of one curve: linear for the validation GED and for values within about a
    decade (a log axis there would show no labelled tick, as a resumed leg's KL of 1.7-10
    did); otherwise log for the cross-entropy and symlog for the KL (which may be 0)."""
    lo, hi = min(values), max(values)
    if key.startswith("val_") or (lo > 0 and hi < 20 * lo):
        return "linear"
    return "log" if lo > 0 else "symlog"


def save_curves(out: Path, rows: list[dict[str, Any]]) -> None:
    """``curves.png``: cross-entropy and KL per image (log scales where the first steps are
    orders of magnitude above the rest, :func:`axis_scale`) and the validation GED(16)."""
    import matplotlib  # lazy: importing the training modules stays cheap

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [r["step"] for r in rows]
    curves = (("ce", "cross-entropy (nats / image)"), ("kl", "KL (nats / image)"),
              ("val_ged16", "validation GED(16)"))
    for ax, (key, label) in zip(axes, curves):
        pts = [(s, float(r[key])) for s, r in zip(steps, rows) if r.get(key) not in (None, "")]
        if pts:
            ax.plot(*zip(*pts), marker="o" if key.startswith("val") else None, lw=1)
            scale = axis_scale(key, [v for _, v in pts])
            if scale == "symlog":
                ax.set_yscale("symlog", linthresh=1.0)
            else:
                ax.set_yscale(scale)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
