"""Open napari ready for a review: ``python -m napari_probunet.gui.launch``.

Opens a viewer with the review widget (Plugins → Probabilistic U-Net) and the latent-space
explorer docked, a sample from File → Open Sample (a real CT nodule for the LIDC model), and the
default bundled model (loaded in the background). Options::

    --sample lidc_nodule|lidc_nodule_2of4|lidc_nodule_1of4|lesion|lesion_faint|lesion_large
    --model FILE|lidc|lesions                   a model file or another bundled model
    --screenshot PATH                           sample 16 hypotheses, save a screenshot, quit
    --raters                                    (with --screenshot) show the radiologists' outlines
    --screenshots FOLDER                        the user guide's pictures (review-*.png), quit
    --bench                                     time click-to-layers on a 256x256 image, quit

Screenshots and the benchmark need a display; headless, run them under a virtual one::

    xvfb-run -a -s "-screen 0 1400x900x24" \\
        python -m napari_probunet.gui.launch --screenshots docs/images
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from napari_probunet.gui.samples import LARGE_OFFSET, sample_lesion_large
from napari_probunet.model.config import ModelConfig
from napari_probunet.model.modelfile import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_NAME,
    bundled_model,
    save_model,
)

PLUGIN = "napari-probunet"
REVIEW = "Probabilistic U-Net"
EXPLORER = "Latent-space explorer"
SAMPLES = ("lidc_nodule", "lidc_nodule_2of4", "lidc_nodule_1of4", "lesion", "lesion_faint",
           "lesion_large")


def default_sample() -> str:
    """The sample that suits the default model: a real CT nodule for the LIDC model, else the
    synthetic lesion."""
    return "lidc_nodule" if DEFAULT_MODEL_NAME == "lidc" else "lesion"


#: the window's largest size (pixels); it is made smaller to fit the screen it opens on
WINDOW = (1920, 1200)


# ----------------------------------------------------------------------------- helpers


def _app():
    from qtpy.QtWidgets import QApplication

    return QApplication.instance()


def wait_until(predicate, timeout: float = 120.0, what: str = "napari") -> None:
    """Run Qt's event loop until ``predicate()`` is true (scripts only; widgets use workers)."""
    app = _app()
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        app.processEvents()
        time.sleep(0.005)


def settle(seconds: float = 0.3) -> None:
    """Let napari finish drawing (repaints are queued events)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _app().processEvents()
        time.sleep(0.01)


def open_review(viewer, explorer: bool = True, scripted: bool = False):
    """Dock the review widget (and the explorer when installed); return the review widget.

    ``scripted`` (screenshots, benchmark): autosaves go to a temporary folder, not the user's,
    and the widget's questions are answered "no", so no dialog waits for a click.
    """
    dock, review = viewer.window.add_plugin_dock_widget(PLUGIN, REVIEW)
    if scripted:
        review.correction.recovery_dir = tempfile.mkdtemp(prefix="probunet-recovery-")
        review.correction.confirm = lambda title, text: False
    if explorer:
        try:
            # a tab beside the review: each gets the window's full height (drag the tab out
            # to see both at once)
            viewer.window.add_plugin_dock_widget(PLUGIN, EXPLORER, tabify=True)
        except Exception as exc:  # the explorer may not be there (yet): the review still works
            print(f"(latent-space explorer not docked: {exc})", file=sys.stderr)
        else:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, dock.raise_)  # the review's tab in front, once docking is done
    widen_dock(viewer, dock)
    return review


#: the review dock's width on a wide screen (at least 1600 px): 8 thumbnails a row, so the
#: gallery shows 16 hypotheses in 2 rows, all in view at 1920x1080
WIDE_DOCK = 800


def widen_dock(viewer, dock) -> None:
    """Give the review ``dock`` :data:`WIDE_DOCK` pixels where the screen is wide enough
    (on a 1366x768 laptop it keeps the width of its content, the image needs the rest)."""
    from qtpy.QtCore import Qt

    from napari_probunet.gui.napari_compat import main_window

    area = screen_geometry()
    if area is not None and area.width() >= 1600:
        main_window(viewer).resizeDocks([dock], [WIDE_DOCK], Qt.Orientation.Horizontal)


def load_model(review, model: str | None) -> None:
    """Wait for the default model, or load ``model`` (a file or a bundled model's name)
    instead; raise if none could be loaded."""
    wait_until(lambda: not review.busy, what="the bundled model")
    if model:
        if bundled_model(model) is not None:
            review.model_panel.load_bundled_model(model)
        else:
            review.model_panel.load_model_file(model)
        wait_until(lambda: not review.busy, what=f"the model {model}")
    if review.state.session is None:
        raise SystemExit("no model could be loaded: "
                         + (review.controller.model_error or "see above"))


def sample(review, n: int = 16, seed: int = 0) -> None:
    review.sampler.n_spin.setValue(n)
    review.sampler.seed_spin.setValue(seed)
    review.sampler.sample_button.click()
    wait_until(lambda: not review.busy, what="sampling")


def screen_geometry():
    """The available geometry (``QRect``: the screen less the task bars) of the screen the
    window opens on: the primary screen (None without a screen)."""
    from qtpy.QtGui import QGuiApplication

    screen = QGuiApplication.primaryScreen()
    return None if screen is None else screen.availableGeometry()


def fit_to_screen(window, largest: tuple[int, int] = WINDOW) -> tuple[int, int]:
    """Size the Qt main ``window`` to the screen it opens on (at most ``largest``), its
    frame included, and put it in the screen's top-left corner; returns its size.

    A 1366x768 laptop gets the whole available screen (the dock tabs, Sample, Export and the
    gallery in view); so does a 1920x1080 one, the gallery then showing its 16 thumbnails."""
    area = screen_geometry()
    if area is None:
        window.resize(*largest)
        return largest
    # the frame the window manager adds (title bar, borders); none under a bare X server
    frame = window.frameGeometry().size() - window.geometry().size()
    w = min(largest[0], area.width() - max(0, frame.width()))
    h = min(largest[1], area.height() - max(0, frame.height()))
    window.resize(w, h)
    window.move(area.x() + (area.width() - w - frame.width()) // 2,
                area.y() + max(0, (area.height() - h - frame.height()) // 2))
    return w, h


def _make_viewer(show: bool = True):
    import napari

    from napari_probunet.gui.napari_compat import main_window

    viewer = napari.Viewer(show=show, title="napari-probunet")
    fit_to_screen(main_window(viewer))
    return viewer


# ----------------------------------------------------------------------------- screenshots


def screenshot(viewer, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    settle()
    viewer.screenshot(str(path), canvas_only=False)
    return path


def take_main_screenshot(path: str | Path, sample_name: str = "lidc_nodule",
                         model: str | None = None, raters: bool = False) -> Path:
    """The review right after sampling 16 hypotheses of a sample (``--screenshot``);
    ``raters``: with the radiologists' masks shown (outlines, the uncertainty map hidden)."""
    viewer = _make_viewer()
    review = open_review(viewer, scripted=True)
    viewer.open_sample(PLUGIN, sample_name)
    load_model(review, model)
    sample(review)
    if raters:
        show_raters(viewer, review)
    out = screenshot(viewer, path)
    viewer.close()
    return out


def take_guide_screenshots(folder: str | Path, model: str | None = None) -> list[Path]:
    """The pictures of docs/user-guide.md (``--screenshots``): re-run after a model update.

    The review widget alone is docked, so that the image gets the room; the explorer's
    pictures are made by its own script.
    """
    folder = Path(folder)
    model = model or "lidc"  # the real CT sample with the model trained on real CT
    return [*_review_scenes(folder, model), _graders_scene(folder, model), _click_scene(folder)]


def _open_for_pictures(sample_name: str, model: str):
    viewer = _make_viewer()
    review = open_review(viewer, explorer=False, scripted=True)
    viewer.open_sample(PLUGIN, sample_name)
    load_model(review, model)
    return viewer, review


def _show_a_drawn_hypothesis(review) -> None:
    """Show a hypothesis that draws something (the first may be one of the empty ones): the
    one of median area among those that are not empty."""
    import numpy as np

    labels = review.state.hypotheses.labels
    areas = labels.reshape(len(labels), -1).sum(1)
    drawn = [int(i) for i in np.argsort(areas) if areas[i] > 0]
    if drawn:
        review.controller.show_hypothesis(drawn[len(drawn) // 2])


def _review_scenes(folder: Path, model: str) -> list[Path]:
    """Start, sampled, cycled, best fit with a brush stroke, and the widget alone."""
    import numpy as np

    viewer, review = _open_for_pictures("lidc_nodule", model)
    image = viewer.layers[0]
    viewer.layers.selection.active = image
    out = [screenshot(viewer, folder / "review-start.png")]

    sample(review)
    _show_a_drawn_hypothesis(review)
    viewer.layers.selection.active = image
    out.append(screenshot(viewer, folder / "review-main.png"))

    # the hypothesis that differs most from the first one, to show what cycling reveals
    labels = review.state.hypotheses.labels
    differs = [int(np.count_nonzero(labels[i] != labels[0])) for i in range(len(labels))]
    review.controller.show_hypothesis(int(np.argmax(differs)))
    out.append(screenshot(viewer, folder / "review-cycle.png"))

    # the middle-sized hypothesis as the best fit, with a brush stroke that adds a bulge
    areas = labels.reshape(len(labels), -1).sum(axis=1)
    review.controller.use_as_best_fit(int(np.argsort(areas)[len(areas) // 2]))
    correction = review.state.correction_layer
    viewer.layers[f"{image.name} uncertainty"].visible = False
    mask = correction.data > 0
    if mask.any():
        rows, cols = np.nonzero(mask)
        r = int(np.median(rows))
        edge = int(cols[rows == r].max())  # the lesion's right border on its middle row
        correction.brush_size = 3
        for c in range(edge - 1, edge + 4):
            correction.paint((r, c), 1, refresh=True)
    settle(0.3)
    out.append(screenshot(viewer, folder / "review-best-fit.png"))
    review.grab().save(str(folder / "review-widget.png"))
    out.append(folder / "review-widget.png")
    viewer.close()
    return out


def show_raters(viewer, review) -> None:
    """Show the radiologists who drew something (their outlines: graders are drawn as
    contours by default) over a drawn hypothesis, the uncertainty map hidden."""
    image = review.roi_tool.image_layer()
    _show_a_drawn_hypothesis(review)
    unc = review.hypothesis_view.uncertainty
    if unc is not None:
        unc.visible = False
    for layer in viewer.layers:
        if layer.metadata.get("kind") == "grader" and layer.data.any():
            layer.visible = True
    if image is not None:
        viewer.layers.selection.active = image


def _graders_scene(folder: Path, model: str) -> Path:
    """A nodule that 2 of the 4 radiologists marked: their outlines beside a hypothesis."""
    viewer, review = _open_for_pictures("lidc_nodule_2of4", model)
    sample(review)
    show_raters(viewer, review)
    path = screenshot(viewer, folder / "review-lidc.png")
    viewer.close()
    return path


def _click_scene(folder: Path) -> Path:
    """The large (synthetic) slice and the synthetic model: click on the lesion."""
    viewer, review = _open_for_pictures("lesion_large", "lesions")
    review.controller.input.set_roi_mode("click")
    settle()
    image = viewer.layers["CT slice"]
    centre = (LARGE_OFFSET[0] + 32, LARGE_OFFSET[1] + 32)
    review.roi_tool.set_click_roi(image.data_to_world(centre))
    wait_until(lambda: not review.busy, what="sampling")
    viewer.layers.selection.active = image
    path = screenshot(viewer, folder / "review-roi.png")
    viewer.close()
    return path


# ----------------------------------------------------------------------------- benchmark


def _bench_model(model: str | None) -> str:
    """The model to time: ``model``, else the bundled one, else the default architecture with
    random weights (the timing does not depend on the weights)."""
    if model:
        return model
    if DEFAULT_MODEL.exists():
        return str(DEFAULT_MODEL)
    from napari_probunet.model.network import ProbUNet

    path = Path(tempfile.mkdtemp(prefix="probunet-bench-")) / "default_architecture.safetensors"
    save_model(ProbUNet(ModelConfig(channels=(16, 32, 64, 128), input_size=64)), path,
               {"note": "random weights, for timing only"})
    return str(path)


def bench(n: int = 16, repeats: int = 5, model: str | None = None) -> dict:
    """Time the click on Sample to the layers on screen, 256x256 image, whole-image ROI, CPU.

    Three figures (medians over ``repeats``): ``first`` a new image (encode, decode, the
    uncertainty map and the shown hypothesis drawn; the hidden ones follow), ``all_layers``
    until every hypothesis layer is in the layer list, ``resample`` a new seed on the same
    image (no encoding, layers reused).
    """
    import torch

    base = sample_lesion_large()[0][0]
    model_path = _bench_model(model)
    first, all_layers, resample = [], [], []
    for k in range(repeats):
        # a fresh viewer each time: the first click on a new image, as a user meets it
        viewer = _make_viewer()
        review = open_review(viewer, explorer=False, scripted=True)
        # CPU for this run only (set_device would also remember it for the user)
        combo = review.model_panel.device_combo
        combo.blockSignals(True)
        combo.setCurrentIndex(combo.findData("cpu"))
        combo.blockSignals(False)
        load_model(review, model_path)
        done = []
        review.state.hypotheses_changed.connect(lambda done=done: done.append(1))

        def click(review=review, done=done) -> tuple[float, float]:
            done.clear()
            t0 = time.perf_counter()
            review.sampler.sample_button.click()
            wait_until(lambda: bool(done), what="sampling")
            _app().processEvents()  # the queued repaint: the layers are on screen
            t_first = time.perf_counter() - t0
            wait_until(lambda: not review.busy, what="the layers")
            _app().processEvents()
            return t_first, time.perf_counter() - t0

        viewer.add_image(base, name="CT slice")
        settle(0.1)
        # a large image starts in click mode: time the whole image
        review.controller.input.set_roi_mode("whole")
        review.sampler.n_spin.setValue(n)
        review.sampler.seed_spin.setValue(k)
        settle(0.3)
        t_first, t_all = click()
        first.append(t_first)
        all_layers.append(t_all)
        settle(0.2)
        review.sampler.seed_spin.setValue(1000 + k)
        resample.append(click()[0])
        viewer.close()
    return {
        "n": n, "image": "256x256", "device": "cpu", "repeats": repeats,
        "first_s": round(statistics.median(first), 3),
        "all_layers_s": round(statistics.median(all_layers), 3),
        "resample_s": round(statistics.median(resample), 3),
        "first_all_s": [round(t, 3) for t in first],
        "resample_all_s": [round(t, 3) for t in resample],
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_probunet.gui.launch",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", choices=SAMPLES, default=None,
                        help="the sample image to open (default: a real CT nodule with the LIDC "
                        "model, the synthetic lesion with the synthetic model)")
    parser.add_argument("--model", help="model file, or a bundled model: lidc, lesions "
                        "(default: the default bundled model)")
    parser.add_argument("--no-explorer", action="store_true", help="dock the review widget only")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--screenshot", metavar="PATH", help="sample 16, save a screenshot, quit")
    parser.add_argument("--raters", action="store_true", help="with --screenshot: show the "
                        "radiologists' masks (as outlines) over a hypothesis")
    what.add_argument("--screenshots", metavar="FOLDER",
                      help="save the user guide's pictures (review-*.png) and quit")
    what.add_argument("--bench", action="store_true",
                      help="time click-to-layers (16 hypotheses, 256x256, CPU) and quit")
    parser.add_argument("--repeats", type=int, default=5, help="benchmark repetitions")
    args = parser.parse_args(argv)
    if args.sample is None:
        chosen = bundled_model(args.model) if args.model else None
        args.sample = ("lesion" if chosen is not None and chosen.name == "lesions"
                       else "lidc_nodule" if chosen is not None else default_sample())

    if args.screenshot:
        print(take_main_screenshot(args.screenshot, args.sample, args.model, args.raters))
        return 0
    if args.screenshots:
        for path in take_guide_screenshots(args.screenshots, args.model):
            print(path)
        return 0
    if args.bench:
        print(json.dumps(bench(repeats=args.repeats, model=args.model), indent=2))
        return 0

    import napari

    from napari_probunet.gui.dock import refit_after_docking

    viewer = _make_viewer()
    review = open_review(viewer, explorer=not args.no_explorer)
    viewer.open_sample(PLUGIN, args.sample)
    refit_after_docking(viewer)  # fit the sample to the canvas once the docks have settled
    if args.sample == "lesion_large":
        review.controller.input.set_roi_mode("click")
    if args.model:
        # the default model is loading in the background: open the chosen one after it
        wait_until(lambda: not review.busy, what="the bundled model")
        if bundled_model(args.model) is not None:
            review.model_panel.load_bundled_model(args.model)
        else:
            review.model_panel.load_model_file(args.model)
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
