"""Hypothesis gallery and hypothesis layers at N = 16 and N = 100, and the gallery's screenshot.

Run under a virtual X server (napari needs OpenGL; software rendering is what we measure):

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python benchmarks/gui_gallery.py
    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python benchmarks/gui_gallery.py \\
        --screenshot docs/images/review-gallery.png

A real viewer at 1400x900 with the review widget docked (the explorer too, as ``launch`` docks
them), the LIDC model and its 128x128 CT sample, whole-image region, CPU. For each N, from the
click on *Sample* (medians over ``--repeats``, a new seed each time, the region encoded once
before):

- ``first_s``: the first hypothesis and the uncertainty map on screen (the state holds the
  hypotheses and Qt has repainted);
- ``gallery_s``: every thumbnail of the gallery drawn (``gallery.pending == 0``);
- ``all_layers_s``: every hypothesis layer in the layer list (the widget no longer busy);
- ``gallery_build_ms``: the gallery's own work: the time spent in rendering thumbnails and
  filling its grid, summed over its batches (the GUI thread is free between batches).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _viewer(sample: str, model: str):
    from napari_probunet.gui import launch

    viewer = launch._make_viewer()
    review = launch.open_review(viewer, scripted=True)
    # (the window fits the screen it opens on: launch.fit_to_screen)
    viewer.open_sample(launch.PLUGIN, sample)
    review.model_panel.device_combo.blockSignals(True)
    review.model_panel.device_combo.setCurrentIndex(review.model_panel.device_combo.findData("cpu"))
    review.model_panel.device_combo.blockSignals(False)
    launch.load_model(review, model)
    return viewer, review


def _click(review, n: int, seed: int) -> dict:
    from napari_probunet.gui import launch

    app = launch._app()
    gallery = getattr(review, "gallery", None)
    done: list[int] = []
    review.state.hypotheses_changed.connect(lambda: done.append(1))
    review.sampler.n_spin.setValue(n)
    review.sampler.seed_spin.setValue(seed)
    launch.settle(0.3)
    if gallery is not None:
        gallery.build_seconds = 0.0
    t0 = time.perf_counter()
    review.sampler.sample_button.click()
    launch.wait_until(lambda: bool(done), what="sampling")
    app.processEvents()
    first = time.perf_counter() - t0
    out = {"first_s": first}
    if gallery is not None:
        launch.wait_until(lambda: gallery.pending == 0 and len(gallery.thumbnails) == n,
                          what="the gallery")
        out["gallery_s"] = time.perf_counter() - t0
    launch.wait_until(lambda: not review.busy, timeout=600, what="the layers")
    app.processEvents()
    out["all_layers_s"] = time.perf_counter() - t0
    if gallery is not None:
        out["gallery_build_ms"] = gallery.build_seconds * 1000
    layers = review.hypothesis_view.layers
    out["layers_in_viewer"] = sum(la in review.viewer.layers for la in layers)
    return out


def bench(ns=(16, 100), repeats: int = 3, sample: str = "lidc_nodule",
          model: str = "lidc") -> dict:
    import torch

    torch.set_num_threads(1)
    results: dict = {}
    for n in ns:
        runs = []
        for k in range(repeats):
            viewer, review = _viewer(sample, model)  # a fresh viewer: no layers to reuse
            runs.append(_click(review, n, seed=k))
            viewer.close()
        keys = runs[0].keys()
        results[str(n)] = {key: round(statistics.median(r[key] for r in runs), 3) for key in keys}
        results[str(n)]["runs"] = runs
    return {
        "date": _dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "region": "128x128", "model": model, "repeats": repeats, "results": results,
    }


def screenshot(path: Path, n: int = 16, sample: str = "lidc_nodule", model: str = "lidc") -> Path:
    """The review right after sampling, the gallery open, one hypothesis shortlisted and one
    rejected (an empty one, else the smallest), the largest shown."""
    from napari_probunet.gui import launch

    viewer, review = _viewer(sample, model)
    launch.sample(review, n=n, seed=0)
    gallery = review.gallery
    launch.wait_until(lambda: gallery.pending == 0, what="the gallery")
    labels = review.state.hypotheses.labels
    areas = labels.reshape(len(labels), -1).sum(1)
    first = list(range(min(len(labels), 9)))  # the first three rows of the grid
    drawn = sorted((i for i in first if areas[i] > 0), key=lambda i: -int(areas[i]))
    empty = [i for i in first if areas[i] == 0]
    if len(drawn) >= 2:
        gallery.select(drawn[0])
        gallery.mark(drawn[1], "shortlist")
    if empty or len(drawn) >= 3:  # an empty one, else the smallest outline
        gallery.mark(empty[0] if empty else drawn[-1], "reject")
    viewer.layers.selection.active = viewer.layers[0]
    review.hypothesis_view.uncertainty.visible = False  # the shown hypothesis, not the map
    _scroll_to(gallery.box)  # the review widget scrolls: bring the gallery in
    gallery.scroll_to_current()
    out = launch.screenshot(viewer, path)
    viewer.close()
    return out


def refine_screenshot(path: Path, n: int = 16, sample: str = "lidc_nodule",
                      model: str = "lidc") -> Path:
    """The review after one inside click at the sampled region's centre: the hypotheses steered
    by it in the gallery and the layers, the click shown on the image."""
    from napari_probunet.gui import launch

    viewer, review = _viewer(sample, model)
    launch.sample(review, n=n, seed=0)
    launch.wait_until(lambda: review.gallery.pending == 0, what="the gallery")
    refined: list[int] = []
    review.state.hypotheses_changed.connect(lambda: refined.append(1))
    review.prompts.refine_button.setChecked(True)
    height, width = review.state.hypotheses.labels.shape[-2:]
    review.prompts.add_click(height / 2, width / 2, inside=True)
    launch.wait_until(lambda: bool(refined) and not review.busy, what="the refinement")
    launch.wait_until(lambda: review.gallery.pending == 0, what="the gallery")
    review.hypothesis_view.uncertainty.visible = False
    _scroll_to(review.prompts.box)
    out = launch.screenshot(viewer, path)
    viewer.close()
    return out


def _scroll_to(box) -> None:
    """Bring ``box`` into view in the review widget's scroll area."""
    from qtpy.QtWidgets import QScrollArea

    parent = box.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    if parent is not None:
        parent.ensureWidgetVisible(box, 0, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, nargs="+", default=[16, 100])
    parser.add_argument("--screenshot", metavar="PNG", help="take the screenshot instead")
    parser.add_argument("--refine-screenshot", metavar="PNG",
                        help="the screenshot after one inside click (Refine by clicks)")
    args = parser.parse_args(argv)
    if args.refine_screenshot:
        print(refine_screenshot(Path(args.refine_screenshot)))
        return 0
    if args.screenshot:
        print(screenshot(Path(args.screenshot)))
        return 0
    print(json.dumps(bench(tuple(args.n), args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
