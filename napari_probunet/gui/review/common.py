"""What the parts of the review widget share: settings, shortcuts, colours, dialogs, helpers."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

from qtpy.QtCore import QSettings, QSize, Qt
from qtpy.QtWidgets import QFileDialog, QLabel, QMessageBox, QSizePolicy

from napari_probunet.review import export
from napari_probunet.review.controller import is_bundle_record

#: keyboard shortcuts, bound on the viewer while the widget is open
KEY_NEXT = "."
KEY_PREVIOUS = ","
KEY_ACCEPT = "Shift-Enter"
KEY_SAMPLE = "Control-Enter"
KEY_EXPORT = "Control-Shift-E"
#: whole-image sampling is refused above this many pixels (use an ROI)
WHOLE_IMAGE_LIMIT = 1024 * 1024
#: autosave the correction this long after the last edit
AUTOSAVE_MS = 2000
#: the region modes (the controller's ``ROI_MODES``) as the Input box shows them
ROI_LABELS = ("Whole image", "Rectangle (Shapes layer)", "Click on the lesion")
#: the "Slices" choice for a 3D/4D stack
SLICE_LABELS = ("Current slice", "All slices")
#: colours of label values 1, 2, ... (hypotheses, correction)
HYPOTHESIS_COLOURS = [(0.25, 0.8, 1.0), (0.6, 1.0, 0.3), (1.0, 0.45, 0.8), (0.7, 0.55, 1.0)]
CORRECTION_COLOURS = [(1.0, 0.72, 0.1), (1.0, 0.35, 0.2), (0.95, 0.95, 0.3), (1.0, 0.5, 0.6)]
EXPORT_FILTERS = {
    "TIFF (*.tif *.tiff)": ".tif",
    "PNG (*.png)": ".png",
    "NumPy (*.npy)": ".npy",
    "NIfTI (*.nii.gz *.nii)": ".nii.gz",
}


def colormap(num_classes: int, colours):
    """napari's colormap for label values 1 .. num_classes - 1 in ``colours`` (0: transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    table = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for c in range(1, num_classes):
        table[c] = (*colours[(c - 1) % len(colours)], 1.0)
    return DirectLabelColormap(color_dict=table)


def remove_layers(viewer, layers) -> None:
    """Remove several layers the way napari's "delete selected layers" does, keeping the
    user's selection.

    They are selected and removed in one batch (one scene-graph update, one garbage
    collection). Removing Labels layers one by one without a repaint in between, and then
    adding a layer, crashes napari 0.9.2 in ``glDrawArrays`` with software OpenGL (the same
    class of bug as napari issue #8471); its own batched removal of the selection does not.
    """
    ours = [la for la in layers if la in viewer.layers]
    if not ours:
        return
    selection = viewer.layers.selection
    active = selection.active
    keep = [la for la in selection if la not in ours]
    selection.clear()
    selection.update(ours)
    viewer.layers.remove_selected()
    selection.clear()
    selection.update([la for la in keep if la in viewer.layers])
    if active is not None and active in viewer.layers:
        selection.active = active


def settings() -> QSettings:
    """Where the review remembers the device and the model and export folders."""
    return _settings()


def _settings() -> QSettings:  # (tests point it at a temporary file)
    return QSettings("napari-probunet", "review")


def is_bundle_layer(layer) -> bool:
    """A layer that the bundle reader made (its metadata names the bundle format)."""
    return is_bundle_record(getattr(layer, "metadata", None))


def show_job_error(exc: BaseException, what: str, log) -> None:
    """A job's error as a notification: a UserError's own message, anything else logged with
    its traceback and told as "``what`` failed. <type>: <message>. The previous hypotheses are
    unchanged." """
    from napari.utils.notifications import show_error

    from napari_probunet.errors import UserError

    if isinstance(exc, UserError):
        show_error(str(exc))
        return
    log.error("%s failed", what.lower(), exc_info=exc)
    show_error(f"{what} failed. {type(exc).__name__}: {exc}. The previous hypotheses are "
               "unchanged.")


def keybinding(key: str):
    from app_model.types import KeyBinding

    return KeyBinding.from_str(key)


def run_all(callbacks: list[Callable[[], None]]) -> None:
    """Call and forget each callback (last first), ignoring their errors."""
    while callbacks:
        callback = callbacks.pop()
        with suppress(Exception):
            callback()


def html(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ElidedLabel(QLabel):
    """A one-line label that never widens its dock: it shows its full text where that fits,
    else its short form, else the short form cut with "…"; the tooltip always holds the full
    text (then ``about``, what the label means). Its size hint is the short form's;
    :meth:`text` is the full text, :meth:`shown_text` what is on screen."""

    def __init__(self, text: str = "", about: str = "") -> None:
        super().__init__()
        self.about = about
        self.full, self.short = text, text
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.set_texts(text)

    def set_texts(self, full: str, short: str | None = None) -> None:
        """Show ``full`` (or ``short`` where ``full`` does not fit)."""
        self.full, self.short = full, full if short is None else short
        self.setToolTip("\n".join(t for t in (full, self.about) if t))
        self.updateGeometry()
        self._fit()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        self.set_texts(text)

    def text(self) -> str:
        """The full text (what the label means, whatever fits on screen)."""
        return self.full

    def shown_text(self) -> str:
        """What the label shows now (the full text, the short form, or that cut)."""
        return QLabel.text(self)

    def text_width(self, text: str) -> int:
        return self.fontMetrics().horizontalAdvance(text) + 2 * self.margin() + 4

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(self.text_width(self.short), super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(self.text_width("…"), super().minimumSizeHint().height())

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        width = self.width()
        if self.text_width(self.full) <= width:
            shown = self.full
        else:
            shown = self.fontMetrics().elidedText(self.short, Qt.TextElideMode.ElideRight,
                                                  max(0, width - self.text_width("")))
        if shown != QLabel.text(self):
            QLabel.setText(self, shown)


# ----------------------------------------------------------------------------- dialogs


def ask_yes_no(parent, title: str, text: str) -> bool:
    answer = QMessageBox.question(
        parent, title, text,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def ask_save_path(parent, default: str) -> str | None:
    path, chosen = QFileDialog.getSaveFileName(
        parent, "Export the correction", default, ";;".join(EXPORT_FILTERS),
        options=QFileDialog.Option.DontConfirmOverwrite,  # the widget asks itself
    )
    if not path:
        return None
    if export.mask_suffix(path) not in export.SUFFIXES:
        path += EXPORT_FILTERS.get(chosen, ".tif")
    return path


def ask_model_path(parent, folder: str) -> str | None:
    path, _ = QFileDialog.getOpenFileName(
        parent, "Open a Probabilistic U-Net model file", folder,
        "Model files (*.safetensors);;All files (*)")
    return path or None


def readable_time(iso: str, now=None) -> str:
    """An ISO 8601 time (``"2026-12-05T21:55:12+00:00"``, what autosaves record) in the
    computer's local time, as a person says it: ``"today at 22:55"``, ``"yesterday at 09:10"``
    or ``"on Sat 5 Dec 2026 at 22:55"`` (to follow "autosaved"). A time without an offset is
    taken as local; text that is no ISO time comes back as it is. ``now``: the local "now"
    (tests)."""
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00")).astimezone()
    except ValueError:
        return str(iso)
    now = now or dt.datetime.now().astimezone()
    clock = when.strftime("%H:%M")
    days = (now.date() - when.date()).days
    if days == 0:
        return f"today at {clock}"
    if days == 1:
        return f"yesterday at {clock}"
    return f"on {when.strftime('%a')} {when.day} {when.strftime('%b %Y')} at {clock}"
