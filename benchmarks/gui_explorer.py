"""Latent-space explorer: live-drag frame rate, background-grid time, and the docs' screenshots.

Run under a virtual X server (napari needs OpenGL; software rendering is what we measure):

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python benchmarks/gui_explorer.py
    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python benchmarks/gui_explorer.py \\
        --screenshots docs/images

**Drag.** A real viewer is shown at 1200x800 with a 256x256 image encoded whole and the
explorer docked. A separate thread posts ``--moves`` mouse-move events (left button held) to
the map at ``--rate`` per second along a loop through the plane, like a hand on a mouse: the
events queue up while the GUI is busy and every one is handled (nothing is dropped or
rate-limited). We count the napari canvas's draws (vispy's draw event) and call a draw
*displayed* when the explorer layer changed since the previous one; frames/s = displayed draws
over the time from the first move to the last draw after the last move.

Beside it, to read that figure: ``canvas_ceiling_per_s`` and ``layer_update_ceiling_per_s``
(what napari draws at all, in the same window, right after); ``cpu_ms_per_displayed_frame``
(CPU per frame shown, by role: the GUI thread, Mesa's llvmpipe threads that rasterise the
OpenGL canvas and compose the window, the other threads, mostly the decoding worker, and the X
server; Linux only), which does not depend on what else runs beside it as the frame rate does;
and how much the decoded mask changes along the dragged path (``path_mask_changes`` between
consecutive mouse positions, ``changed_frames_per_s_at_canvas_ceiling``: the most changed
frames per second this path allows if every frame napari can draw showed the newest position;
a path through a part of the plane where the mask stays the same, e.g. empty, shows no
changed frame however fast the drag).

**Grid.** The background 9x9 grid at 128x128: one batched ``session.decode`` of the 81
latents (best of 3), and the explorer's own row-by-row grid job from plane change to last row.

Prints one JSON object. ``--model`` defaults to the bundled synthetic ``lesions`` model (the
scene is its synthetic lesion, whose mixture components the screenshots show), otherwise an
untrained model of the default architecture (decoding cost depends on the architecture only).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _load_model(spec: str | None):
    from napari_probunet.model.modelfile import load_model

    if spec in (None, "auto"):
        try:
            return load_model("lesions"), "lesions (bundled)"
        except Exception:  # noqa: BLE001 - not trained yet
            import torch

            from napari_probunet.model.config import ModelConfig
            from napari_probunet.model.network import ProbUNet

            torch.manual_seed(0)
            return ProbUNet(ModelConfig()).eval(), "untrained, default architecture"
    return load_model(spec), spec


def _app_wait(app, condition, timeout: float) -> bool:
    """Run Qt's event loop (as the application would) until ``condition()`` or ``timeout``."""
    from qtpy.QtCore import QEventLoop, QTimer

    if condition():
        return True
    loop = QEventLoop()
    t0 = time.perf_counter()

    def check():
        if condition() or time.perf_counter() - t0 > timeout:
            loop.quit()

    timer = QTimer()
    timer.timeout.connect(check)
    timer.start(5)
    loop.exec()
    timer.stop()
    return bool(condition())


def _encode(viewer, model, image, image_name: str, roi, hypotheses: int = 16, seed: int = 0,
            layer_kwargs=None):
    """Fill the viewer's review state as the review widget would (no dependency on it)."""
    from napari_probunet.gui.dock import get_state
    from napari_probunet.review.state import EncodedRegion
    from napari_probunet.session import Session

    state = get_state(viewer)
    layer = viewer.layers[image_name]
    r0, c0, h, w = roi
    crop = np.asarray(image)[r0:r0 + h, c0:c0 + w]
    session = Session(model, "cpu")
    with state.lock:
        session.set_image(crop)
    state.model, state.session = model, session
    state.model_changed.emit()
    state.encoded = EncodedRegion(image_name, (), tuple(roi), session.image_signature, crop)
    state.image_encoded.emit()
    hyp = session.sample(hypotheses, seed=seed)
    state.hypotheses = hyp
    translate = np.asarray(layer.translate) + np.array([r0, c0]) * np.asarray(layer.scale)
    state.hypothesis_layers = [
        viewer.add_labels(hyp.labels[k], name=f"hypothesis {k + 1}", scale=layer.scale,
                          translate=translate, visible=False, metadata={"z": hyp.z[k]},
                          **(layer_kwargs or {}))
        for k in range(hypotheses)
    ]
    state.hypotheses_changed.emit()
    return state, session


def _drag_image(name: str) -> np.ndarray:
    """The image under the drag: ``lidc_nodule`` (the lidc model's own CT sample, 128x128) or
    ``lesion`` (the large synthetic lesion the lesions model is made for)."""
    if name == "lidc_nodule":
        from napari_probunet.gui.samples import sample_lidc_nodule

        return np.asarray(sample_lidc_nodule()[0][0], np.float32)
    return _large_image()


def _large_image() -> np.ndarray:
    try:
        from napari_probunet.gui.samples import sample_lesion_large

        return sample_lesion_large()[0][0]
    except Exception:  # noqa: BLE001 - sample module missing: a plain synthetic case
        from napari_probunet.data.synthetic import make_case

        return make_case("lesions", 0, 0, size=256).image


def _cpu_seconds() -> dict[str, float] | None:
    """CPU seconds so far of this process's threads by role (the GUI thread, Mesa's llvmpipe
    rasteriser threads, the others: the decoding worker above all) and of the X server that
    shows them; None where /proc is not there to read."""
    try:
        hz = os.sysconf("SC_CLK_TCK")
        out = {"gui_thread": 0.0, "llvmpipe": 0.0, "other_threads": 0.0, "x_server": 0.0}

        def used(stat_path: str) -> float:
            fields = open(stat_path).read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / hz  # utime + stime

        for tid in os.listdir("/proc/self/task"):
            name = open(f"/proc/self/task/{tid}/comm").read().strip()
            role = ("gui_thread" if tid == str(os.getpid()) else
                    "llvmpipe" if name.startswith("llvmpipe") else "other_threads")
            out[role] += used(f"/proc/self/task/{tid}/stat")
        display = os.environ.get("DISPLAY", "").encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                if display and cmd[0].endswith((b"Xvfb", b"Xorg")) and display in cmd:
                    out["x_server"] += used(f"/proc/{pid}/stat")
        return out
    except (OSError, ValueError, IndexError):
        return None


def _path_content(session, plane, points, rate: float, ceiling: float) -> dict:
    """How much the decoded mask changes along the dragged path (what bounds the measure):
    changes between consecutive mouse positions if every one were decoded and shown, and the
    most changed frames per second at napari's redraw ceiling (a frame every 1/ceiling s, at
    the position the mouse had then)."""
    masks = [session.decode(plane.latent(*p)) for p in points]
    changes = sum(not np.array_equal(a, b) for a, b in zip(masks, masks[1:]))
    seconds = (len(points) - 1) / rate
    shown = [masks[min(len(masks) - 1, round(t * rate))]
             for t in np.arange(0.0, seconds + 1e-9, 1.0 / max(ceiling, 1e-3))]
    at_ceiling = sum(not np.array_equal(a, b) for a, b in zip(shown, shown[1:]))
    return {"path_mask_changes": changes,
            "path_moves_with_a_change": round(changes / (len(points) - 1), 2),
            "changed_frames_per_s_at_canvas_ceiling": round(at_ceiling / seconds, 1)}


def bench_drag(model, size: int, moves: int, rate: float, window: tuple[int, int],
               profile: bool = False, image_name: str = "lesion") -> dict:
    import napari
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    from napari_probunet.gui import napari_compat
    from napari_probunet.gui.explorer.widget import ExplorerWidget

    image = _drag_image(image_name)
    if image.shape[0] != size:
        from skimage.transform import resize

        image = resize(image, (size, size), preserve_range=True).astype(np.float32)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(image, name="image", colormap="gray")
    explorer = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(explorer, name="Latent-space explorer", area="right")
    napari_compat.main_window(viewer).resize(*window)
    _encode(viewer, model, image, "image", (0, 0, size, size))
    if not _app_wait(app, lambda: explorer.plane is not None and explorer.idle, 120):
        raise RuntimeError("the explorer did not get ready")
    explorer.set_point(-2.0, 0.0)
    _app_wait(app, lambda: explorer.idle, 30)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.01)

    canvas = napari_compat.vispy_canvas(viewer)
    stats = {"draws": 0, "displayed": 0, "last_frames": explorer.frames, "moves": 0,
             "draw_times": []}

    def on_draw(_event=None):
        stats["draws"] += 1
        if explorer.frames != stats["last_frames"]:
            stats["displayed"] += 1
            stats["last_frames"] = explorer.frames
            stats["draw_times"].append(time.perf_counter())

    canvas.events.draw.connect(on_draw)
    explorer.map.point_moved.connect(lambda *_: stats.__setitem__("moves", stats["moves"] + 1))
    plot = explorer.map


    def path(k: int) -> QPointF:  # a loop through the plane, about one turn per 100 moves
        t = 2 * np.pi * k / 100
        u, v = 2.6 * np.cos(t), 2.6 * np.sin(2 * t) * 0.8
        return plot.to_pixel(u, v)

    def post(kind, pos, buttons):
        gp = plot.mapToGlobal(pos.toPoint())
        ev = QMouseEvent(kind, pos, QPointF(gp), Qt.MouseButton.LeftButton if kind != QEvent.Type.MouseMove
                         else Qt.MouseButton.NoButton, buttons, Qt.KeyboardModifier.NoModifier)
        QApplication.postEvent(plot, ev)

    frames0, draws0 = explorer.frames, stats["draws"]
    decodes0 = len(explorer.decode_seconds)
    paints0, paint_s0 = plot.paint_count, plot.paint_seconds
    sent = {"done": False, "t_first": None, "t_last": None}

    def mouse():
        post(QEvent.Type.MouseButtonPress, path(0), Qt.MouseButton.LeftButton)
        interval = 1.0 / rate if rate > 0 else 0.0
        t0 = time.perf_counter()
        sent["t_first"] = t0
        for k in range(1, moves + 1):
            wait = t0 + k * interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # one wake-up per move: the poster must not steal the GIL
            post(QEvent.Type.MouseMove, path(k), Qt.MouseButton.LeftButton)
        sent["t_last"] = time.perf_counter()
        post(QEvent.Type.MouseButtonRelease, path(moves), Qt.MouseButton.NoButton)
        sent["done"] = True

    thread = threading.Thread(target=mouse)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0 = _cpu_seconds()
    t_start = time.perf_counter()
    thread.start()
    _app_wait(app, lambda: sent["done"] and stats["moves"] >= moves + 2 and explorer.idle, 120)
    t_idle = time.perf_counter()
    _app_wait(app, lambda: time.perf_counter() - t_idle > 0.15, 1)  # let the last frame draw
    thread.join()
    cpu1 = _cpu_seconds()
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    t_end = stats["draw_times"][-1] if stats["draw_times"] else time.perf_counter()
    duration = t_end - sent["t_first"]
    decodes = explorer.decode_seconds[decodes0:]
    paints = plot.paint_count - paints0
    result = {
        "image": f"{size}x{size}",
        "window": f"{window[0]}x{window[1]}",
        "moves_posted": moves,
        "moves_handled": stats["moves"] - 2,  # minus press and release
        "move_rate_per_s": round(moves / (sent["t_last"] - sent["t_first"]), 1),
        "duration_s": round(duration, 3),
        "decodes": len(decodes),
        "decode_ms_median": round(1000 * float(np.median(decodes)), 2) if decodes else None,
        "layer_updates": explorer.frames - frames0,
        "canvas_draws": stats["draws"] - draws0,
        "displayed_frames": stats["displayed"],
        "displayed_frames_per_s": round(stats["displayed"] / duration, 1),
        "canvas_draws_per_s": round((stats["draws"] - draws0) / duration, 1),
        "map_repaints_per_s": round(paints / duration, 1),
        "map_repaint_ms_mean": round(1000 * (plot.paint_seconds - paint_s0) / max(1, paints), 2),
        "elapsed_s": round(time.perf_counter() - t_start, 2),
    }
    if cpu0 is not None and cpu1 is not None and stats["displayed"]:
        # CPU per frame shown, by role: what a frame costs, whatever else runs beside it
        result["cpu_ms_per_displayed_frame"] = {
            k: round(1000 * (cpu1[k] - cpu0[k]) / stats["displayed"], 1) for k in cpu0}
    result.update(_ceilings(app, explorer, canvas, stats))
    points = [plot.to_plane(path(k)) for k in range(moves + 1)]
    result.update(_path_content(explorer.state.session, explorer.plane, points, rate,
                                result["canvas_ceiling_per_s"]))
    canvas.events.draw.disconnect(on_draw)
    explorer.shutdown()
    viewer.close()
    return result


def _ceilings(app, explorer, canvas, stats, seconds: float = 1.5) -> dict:
    """What this machine allows right now, measured in the same window.

    ``canvas_ceiling_per_s``: napari canvas draws per second when nothing changes but a redraw
    is asked for each time the previous one finished. ``layer_update_ceiling_per_s``: frames
    per second of the explorer's layer update path alone (two precomputed decodes written
    alternately, each waited for on screen), i.e. the drag's frame rate if decoding were free.
    """
    session = explorer.state.session
    plane = explorer.plane
    maps = [session.decode(plane.latent(-2.0, -1.0)), session.decode(plane.latent(2.0, 1.0))]

    def run(step) -> float:
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            before = stats["draws"]
            step(n)
            t1 = time.perf_counter()
            while stats["draws"] == before and time.perf_counter() - t1 < 1.0:
                app.processEvents()
            n += 1
        return round(n / (time.perf_counter() - t0), 1)

    return {
        "canvas_ceiling_per_s": run(lambda n: canvas.update()),
        "layer_update_ceiling_per_s": run(lambda n: explorer.show_labels(maps[n % 2])),
    }


def bench_grid(model, size: int = 128, n: int = 9) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_probunet.gui.explorer.widget import ExplorerWidget
    from napari_probunet.review import plane as core
    from napari_probunet.session import Session

    image = _large_image()[64:64 + size, 32:32 + size]
    session = Session(model, "cpu")
    session.set_image(image)
    mu, sigma = session.prior()
    latents = core.LatentPlane.through_prior(mu, sigma, 0, 1 if len(mu) > 1 else None).grid_latents(n)
    import torch

    def timed(threads: int) -> list[float]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = []
            for _ in range(3):
                t0 = time.perf_counter()
                session.decode(latents)
                out.append(time.perf_counter() - t0)
            return out
        finally:
            torch.set_num_threads(before)

    times = timed(1)  # as the explorer's worker decodes
    times_default = timed(torch.get_num_threads())

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(image, name="image", colormap="gray")
    explorer = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(explorer, name="Latent-space explorer", area="right")
    _encode(viewer, model, image, "image", (0, 0, size, size), hypotheses=4)
    _app_wait(app, lambda: explorer.plane is not None and explorer.idle, 120)
    widget_times = [explorer.grid_seconds]
    for axes in ((1, 0), (0, 1)):  # two more plane changes
        if len(mu) > 1:
            explorer.set_axes(*axes)
            _app_wait(app, lambda: explorer.idle, 60)
            widget_times.append(explorer.grid_seconds)
    explorer.shutdown()
    viewer.close()
    return {
        "grid": f"{n}x{n}",
        "image": f"{size}x{size}",
        "batched_decode_s_best": round(min(times), 4),
        "batched_decode_s_all": [round(t, 4) for t in times],
        "batched_decode_default_threads_s_best": round(min(times_default), 4),
        "explorer_grid_s_best": round(min(t for t in widget_times if t is not None), 4),
        "explorer_grid_s_all": [round(t, 4) for t in widget_times if t is not None],
    }


# ------------------------------------------------------------------------------ screenshots


def _train_fallback_model():
    from napari_probunet.model.testing import train_two_mode_model

    print("no model given and none bundled: training the tiny two-mode model (a minute)...",
          file=sys.stderr)
    return train_two_mode_model(300)


def screenshots(out: Path, model_spec: str | None) -> list[str]:
    """Take the user guide's pictures: the explorer, and the assessment table with its markers
    (and, for a mixture-prior model, the explorer on the plane through its components)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_probunet.gui import napari_compat
    from napari_probunet.gui.dock import get_state
    from napari_probunet.gui.explorer.widget import ExplorerWidget
    from napari_probunet.model.modelfile import load_model

    if model_spec:
        model = load_model(model_spec)
    elif _bundled():
        model = load_model("lesions")  # the scene is its synthetic lesion
    else:
        model = _train_fallback_model()
    try:
        from napari_probunet.gui.samples import sample_lesion

        layers = sample_lesion()
    except ImportError:
        layers = None
    if layers is not None and model.config.input_size >= 64:
        image = layers[0][0]
        graders = {meta["name"]: data for data, meta, _kind in layers[1:]}
        contrast = layers[0][1].get("contrast_limits")
    else:
        from napari_probunet.model.testing import two_mode_case

        image, masks = two_mode_case(model.config.input_size)
        graders = {f"grader {k + 1}": masks[k] for k in range(len(masks))}
        contrast = (0.0, 1.0)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    from napari_probunet.gui.launch import fit_to_screen

    fit_to_screen(napari_compat.main_window(viewer))  # the screen the pictures are taken on
    viewer.add_image(image, name="lesion", colormap="gray", contrast_limits=contrast)
    for name, mask in graders.items():
        viewer.add_labels(mask, name=name, visible=False, opacity=0.5)
    explorer = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(explorer, name="Latent-space explorer", area="right")
    h, w = image.shape[:2]
    _encode(viewer, model, image, "lesion", (0, 0, h, w), hypotheses=16, seed=0)
    _app_wait(app, lambda: explorer.plane is not None and explorer.idle, 120)
    explorer.set_point(1.2, -0.8)
    _app_wait(app, lambda: explorer.idle, 30)
    explorer.select_hypothesis(2)
    explorer.set_point(1.2, -0.8)
    _app_wait(app, lambda: explorer.idle, 30)
    for layer in get_state(viewer).hypothesis_layers:  # the canvas shows the explorer layer
        layer.visible = False
    viewer.layers.selection.active = explorer.explorer_layer
    viewer.reset_view()
    total = sum(explorer.splitter.sizes())
    explorer.splitter.setSizes([total - 250, 250])
    for _ in range(40):
        app.processEvents()
        time.sleep(0.02)
    written = []
    path = out / "explorer-map.png"
    viewer.screenshot(str(path), canvas_only=False)
    written.append(str(path))

    if getattr(model, "is_mixture", False):  # the plane through the mixture's components
        explorer.x_combo.setCurrentIndex(explorer.x_combo.count() - 1)
        explorer.apply_axis_choice("x")
        _app_wait(app, lambda: explorer.idle, 60)
        explorer.splitter.setSizes([total - 120, 120])
        for _ in range(40):
            app.processEvents()
            time.sleep(0.02)
        path = out / "explorer-components.png"
        explorer.grab().save(str(path))
        written.append(str(path))
        explorer.auto_button.click()  # back to the two ranked axes
    explorer.assess(list(graders))
    _app_wait(app, lambda: explorer.idle and explorer.assessments, 300)
    for layer in viewer.layers:
        if layer.name in graders:
            layer.visible = False
    if explorer.assessments:
        explorer.table.selectRow(0)
    explorer.splitter.setSizes([total - 340, 340])
    for _ in range(40):
        app.processEvents()
        time.sleep(0.02)
    path = out / "explorer-assess.png"
    viewer.screenshot(str(path), canvas_only=False)
    written.append(str(path))

    path = out / "explorer-widget.png"
    explorer.grab().save(str(path))
    written.append(str(path))
    explorer.shutdown()
    viewer.close()
    return written


def _bundled() -> bool:
    try:
        from napari_probunet.model.modelfile import resolve_model_path

        return resolve_model_path("lesions").exists()
    except Exception:  # noqa: BLE001
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="auto",
                        help="model file, 'default', or 'auto' (bundled, else untrained)")
    parser.add_argument("--size", type=int, default=256, help="image side for the drag")
    parser.add_argument("--moves", type=int, default=200, help="mouse moves in the drag")
    parser.add_argument("--rate", type=float, default=125.0,
                        help="mouse moves per second (0: as fast as possible)")
    parser.add_argument("--window", default="1200x800", help="viewer window size")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="profile the GUI thread during the drag (to stderr)")
    parser.add_argument("--skip-drag", action="store_true")
    parser.add_argument("--image", choices=["auto", "lesion", "lidc_nodule"], default="auto",
                        help="the image under the drag; auto: the model's own kind (its CT "
                        "sample for a CT model, else the large synthetic lesion)")
    parser.add_argument("--screenshots", metavar="DIR",
                        help="take the user guide's screenshots into DIR instead")
    args = parser.parse_args(argv)

    if args.screenshots:
        model_spec = None if args.model == "auto" else args.model
        print(json.dumps({"screenshots": screenshots(Path(args.screenshots), model_spec)}))
        return 0
    import napari
    import qtpy
    import torch

    model, described = _load_model(args.model)
    window = tuple(int(x) for x in args.window.lower().split("x"))
    result = {
        "date": _dt.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "display": os.environ.get("DISPLAY", ""),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "versions": {"napari": napari.__version__, "qt": f"{qtpy.API_NAME} {qtpy.QT_VERSION}",
                     "torch": torch.__version__},
        "model": described,
        "latent_dim": model.config.latent_dim,
        "fcomb_channels": model.config.fcomb_channels,
    }
    image_name = args.image
    if image_name == "auto":
        modality = (model.config.domain or {}).get("modality")
        image_name = "lidc_nodule" if modality == "CT" else "lesion"
    result["drag_image"] = image_name
    if not args.skip_drag:
        result["drag"] = bench_drag(model, args.size, args.moves, args.rate, window,
                                    args.profile, image_name)
    if not args.skip_grid:
        result["grid"] = bench_grid(model)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
