"""The review as a radiologist sees it: the radiologists drawn as outlines, grey-level masks
thresholded with a notice, texts that fit a 1400x900 screen, the image fitted to the canvas
after docking, and hypotheses that File > Save writes as the whole scan.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from napari_probunet.gui import dock, napari_compat
from napari_probunet.gui.review.hypotheses import navigation_texts
from napari_probunet.gui.review.widget import ReviewWidget

pytestmark = pytest.mark.usefixtures("isolated_settings")

PLUGIN = "napari-probunet"
SCREEN = (1400, 900)


@pytest.fixture
def notes():
    """New napari notifications since the test started: ``notes()`` -> [message]."""
    start = len(notification_manager.records)
    return lambda: [str(n.message) for n in notification_manager.records[start:]]


def graders(viewer) -> list:
    return [la for la in viewer.layers if la.metadata.get("kind") == "grader"]


def review_widget(viewer) -> ReviewWidget:
    widget = ReviewWidget(viewer, load_default=False)
    viewer.window.add_dock_widget(widget, name="Probabilistic U-Net")
    return widget


# ----------------------------------------------------------------------------- radiologists


def test_radiologists_are_outlines_by_default_and_the_users_choice_stays(make_napari_viewer,
                                                                         qtbot):
    viewer = make_napari_viewer()
    # a sample opened before the widget: outlined when the widget opens
    viewer.open_sample(PLUGIN, "lidc_nodule")
    assert [la.contour for la in graders(viewer)] == [0, 0, 0, 0]  # napari's default: filled
    review_widget(viewer)
    assert [la.contour for la in graders(viewer)] == [dock.GRADER_CONTOUR] * 4
    # each keeps its own colour
    assert len({tuple(la.colormap.color_dict[1]) for la in graders(viewer)}) == 4
    # the user fills one again: a second widget (the explorer) does not undo it
    first = graders(viewer)[0]
    first.contour = 0
    from napari_probunet.gui.explorer.widget import ExplorerWidget

    explorer = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(explorer, name="Latent-space explorer")
    assert first.contour == 0
    # a sample opened after the widgets: outlined as it arrives; nothing else is
    viewer.open_sample(PLUGIN, "lesion")
    assert [la.contour for la in graders(viewer)][4:] == [dock.GRADER_CONTOUR] * 4
    viewer.add_labels(np.zeros((8, 8), np.uint8), name="my mask")
    assert viewer.layers["my mask"].contour == 0
    # removed and put back (undo of a delete): the user's choice stays
    layer = graders(viewer)[-1]
    layer.contour = 0
    viewer.layers.remove(layer)
    viewer.layers.append(layer)
    assert layer.contour == 0
    explorer.shutdown()


def test_a_case_opened_from_disk_shows_its_radiologists_as_outlines(make_napari_viewer,
                                                                    tmp_path):
    from test_lidc_slices import write_layout

    viewer = make_napari_viewer()
    review_widget(viewer)
    root = write_layout(tmp_path / "lidc", patients=("0007",), nodules=1, slices=3)
    layers = viewer.open(str(root / "LIDC-IDRI-0007" / "nodule-0"), plugin=PLUGIN)
    assert [la.contour for la in layers[1:]] == [dock.GRADER_CONTOUR] * 4
    assert layers[0].__class__.__name__ == "Image"


def _jpeg(path, mask: np.ndarray, quality: int = 75) -> None:
    from PIL import Image

    Image.fromarray(mask).save(path, quality=quality)


def test_grey_level_masks_are_thresholded_with_a_notice_naming_them(make_napari_viewer,
                                                                    tmp_path, notes):
    """A JPEG mask keeps a dozen grey levels along its border: the case reader thresholds
    it at > 127 and says which file; clean masks give no notice."""
    from PIL import Image

    folder = tmp_path / "case-7"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(folder / "image.png")
    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 24) ** 2 + (xx - 20) ** 2 < 120).astype(np.uint8) * 255
    _jpeg(folder / "mask_1.jpg", disc)
    Image.fromarray(disc).save(folder / "mask_2.png")
    raw = np.asarray(Image.open(folder / "mask_1.jpg"))
    assert len(np.unique(raw)) > 2  # the lossy file holds grey levels
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    assert [la.__class__.__name__ for la in layers] == ["Image", "Labels", "Labels"]
    for la in layers[1:]:
        assert set(np.unique(la.data)) <= {0, 1}
    np.testing.assert_array_equal(layers[1].data, (raw > 127).astype(np.uint8))
    said = [m for m in notes() if "thresholded" in m]
    assert len(said) == 1 and "mask_1.jpg" in said[0] and "mask_2.png" not in said[0]
    assert "> 127" in said[0]

    # an LIDC nodule folder with a re-encoded (grey) mask slice
    from test_lidc_slices import write_layout

    root = write_layout(tmp_path / "lidc", patients=("0009",), nodules=1, slices=2)
    nodule = root / "LIDC-IDRI-0009" / "nodule-0"
    grey = np.asarray(Image.open(nodule / "mask-2" / "slice-1.png")).copy()
    grey[grey > 0] = 200
    grey[3, 3] = 90
    Image.fromarray(grey).save(nodule / "mask-2" / "slice-1.png")
    start = len(notes())
    layers = viewer.open(str(nodule), plugin=PLUGIN)
    said = [m for m in notes()[start:] if "thresholded" in m]
    assert len(said) == 1 and "mask-2/slice-1.png" in said[0]
    assert layers[3].data[1, 3, 3] == 0 and layers[3].data[1].sum() > 0


# ----------------------------------------------------------------------------- fitting a screen


@pytest.fixture
def screen(make_napari_viewer, qtbot):
    """A shown viewer of 1400x900 with both widgets docked as the Plugins menu docks them."""
    from napari_probunet.model.testing import wait_idle

    viewer = make_napari_viewer(show=True)
    napari_compat.main_window(viewer).resize(*SCREEN)
    _, review = viewer.window.add_plugin_dock_widget(PLUGIN, "Probabilistic U-Net")
    _, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Latent-space explorer")
    qtbot.wait(300)
    yield viewer, review, explorer
    wait_idle(qtbot, review)
    explorer.shutdown()


def test_the_hypothesis_label_at_100_samples_never_widens_the_dock(screen, qtbot):
    viewer, review, _ = screen
    label = review.hypothesis_view.hypothesis_label
    before = review.width()
    full, short = navigation_texts(99, 100, 15192, "no layer yet")
    assert full == "Hypothesis 100/100 · 15192 px (no layer yet)"
    label.set_texts(full, short)
    qtbot.wait(100)
    assert review.width() == before
    # its size hint fits the room it has in the dock, and the whole dock fits the window
    assert label.sizeHint().width() <= label.width(), (label.sizeHint().width(), label.width())
    assert review.minimumSizeHint().width() <= review.width()
    assert napari_compat.main_window(viewer).minimumSizeHint().width() <= SCREEN[0]
    # what shows is the full text or its short form, never a cut-off word; the tooltip keeps all
    assert label.shown_text() in (full, short)
    assert full in label.toolTip()
    assert label.text() == full  # what scripts and tests read
    # squeezed further: cut with an ellipsis, still no wider than it is
    label.resize(60, label.height())
    assert label.shown_text().endswith("…")
    assert label.fontMetrics().horizontalAdvance(label.shown_text()) <= 60


def test_dock_tabs_are_titled_short_enough_to_read(make_napari_viewer, qtbot):
    """Tabbed as ``launch`` docks them, napari's titles "Probabilistic U-Net
    (napari-probunet)" and "Latent-space explorer (napari-probunet)" were cut off."""
    from qtpy.QtWidgets import QTabBar

    from napari_probunet.gui import launch
    from napari_probunet.gui.explorer.widget import ExplorerWidget
    from napari_probunet.model.testing import wait_idle

    viewer = make_napari_viewer(show=True)
    napari_compat.main_window(viewer).resize(*SCREEN)
    review = launch.open_review(viewer, scripted=True)
    qtbot.wait(300)
    bars = [b for b in napari_compat.main_window(viewer).findChildren(QTabBar)
            if b.isVisible() and b.count() == 2]
    assert bars, "the two docks are not tabbed"
    bar = bars[0]
    titles = [bar.tabText(i) for i in range(bar.count())]
    assert sorted(titles) == ["Latent-space explorer", "Probabilistic U-Net"]
    for i, title in enumerate(titles):
        assert bar.fontMetrics().horizontalAdvance(title) < bar.tabRect(i).width(), title
    wait_idle(qtbot, review)
    for explorer in napari_compat.main_window(viewer).findChildren(ExplorerWidget):
        explorer.shutdown()


#: napari's toast shows one line of about 40 characters until it is expanded
TOAST_FIRST_SENTENCE = 48
NOTIFY = {"show_info", "show_warning", "show_error", "_notify"}


def _message_template(node) -> str | None:
    """A notification's text with each ``{value}`` counted as 8 characters, or None when it
    is not written out (``str(exc)``: the error's own text)."""
    import ast

    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{value}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _message_template(node.left), _message_template(node.right)
        return None if left is None or right is None else left + right
    return None


def test_notifications_start_with_a_short_sentence():
    """napari's toasts show the first line only (400 px wide): each message of the GUI and
    the readers says what happened in a short first sentence, details after."""
    import ast
    import re
    from pathlib import Path

    package = Path(dock.__file__).resolve().parents[1]
    files = [*sorted((package / "gui").rglob("*.py")), package / "_reader.py"]
    long, seen = [], 0
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            text = _message_template(node.args[0]) if name in NOTIFY else None
            if text is None:
                continue
            seen += 1
            first = re.split(r"(?<=[.:;?!])\s", text, maxsplit=1)[0]
            if len(first) > TOAST_FIRST_SENTENCE:
                long.append(f"{path.name}:{node.lineno}: {first}")
    assert seen > 30
    assert not long, "\n".join(long)


def _fits(viewer, image) -> bool:
    """The whole image is on the canvas (the zoom that fits it, or less)."""
    extent = np.diff(np.asarray(image.extent.world, float)[:, -2:], axis=0)[0]
    canvas = np.asarray(viewer.canvas.size, float)  # (height, width)
    return bool(np.all(extent * viewer.scene.camera.zoom <= canvas + 1))


def _centred(viewer, image) -> bool:
    world = np.asarray(image.extent.world, float)[:, -2:]
    return bool(np.allclose(viewer.scene.camera.center[-2:], world.mean(axis=0), atol=0.5))


@pytest.mark.parametrize("moved", [False, True])
def test_the_image_is_fitted_again_after_docking_unless_the_user_moved(make_napari_viewer,
                                                                       qtbot, moved):
    viewer = make_napari_viewer(show=True)
    napari_compat.main_window(viewer).resize(*SCREEN)
    viewer.open_sample(PLUGIN, "lidc_nodule")
    qtbot.wait(200)
    image = viewer.layers[0]
    assert _fits(viewer, image) and _centred(viewer, image)
    if moved:
        viewer.scene.camera.center = (0.0, 40.0, 50.0)
        zoom = viewer.scene.camera.zoom
    widget = review_widget(viewer)
    qtbot.wait(800)
    if moved:  # the user's view stays
        np.testing.assert_allclose(viewer.scene.camera.center, (0.0, 40.0, 50.0))
        assert viewer.scene.camera.zoom == zoom
    else:  # the narrower canvas still shows the whole image, centred
        assert _centred(viewer, image)
        assert _fits(viewer, image), (viewer.scene.camera.zoom, viewer.canvas.size)
    widget.cleanup()


# ----------------------------------------------------------------------------- scan-ready


def test_file_save_of_a_hypothesis_of_a_nifti_volume_writes_the_whole_scan(
        make_napari_viewer, qtbot, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    from test_nifti_roundtrip import SIZE, SLICE, oblique_affine, write_source

    from napari_probunet import _reader, _writer
    from napari_probunet.model.modelfile import save_model
    from napari_probunet.model.testing import tiny_model, wait_idle

    model = tmp_path / "tiny.safetensors"
    save_model(tiny_model(seed=0), model, {"note": "tests"})
    viewer = make_napari_viewer()
    widget = review_widget(viewer)
    widget.model_panel.load_model_file(model)
    wait_idle(qtbot, widget)
    ((data, kwargs, _),) = _reader.read_nifti(str(write_source(tmp_path / "chest.nii.gz")))
    viewer.add_image(data, **kwargs)
    viewer.dims.set_current_step(0, SLICE)
    widget.sampler.n_spin.setValue(2)
    assert widget.sampler.sample()
    wait_idle(qtbot, widget)
    layer = widget.hypothesis_view.layers[1]
    assert layer.metadata["volume"]["affine"] == kwargs["metadata"]["source"]["affine"]

    out = tmp_path / "hypothesis.nii.gz"
    written = _writer.write_labels(str(out), layer.data, {
        "name": layer.name, "metadata": layer.metadata, "scale": list(layer.scale)})
    assert written[0] == str(out)
    img = nibabel.load(str(out))
    assert img.shape == SIZE  # the whole scan, in the file's axis order
    np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-5)
    lab = np.asarray(img.dataobj)
    hypothesis = widget.state.hypotheses.labels[1]
    np.testing.assert_array_equal(lab[:, :, SLICE].T, hypothesis)  # (x, y) -> rows, columns
    assert not lab[:, :, [z for z in range(SIZE[2]) if z != SLICE]].any()
    record = json.loads((tmp_path / "hypothesis.nii.gz.json").read_text())
    assert record["volume"]["placed"] is True and record["volume"]["slice_index"] == [SLICE]
    widget.cleanup()
