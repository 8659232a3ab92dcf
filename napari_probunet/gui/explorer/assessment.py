"""The explorer's "Assess annotations" box: which layers to assess, and the table of results.

:class:`AssessmentPanel` holds the list of candidate Labels layers (ticked ones are assessed),
the button, the table (one row per annotation: KL, IoU, its place on the plane, a flag) and the
line that states the flagging rule. :func:`read_annotations` takes the part of each layer that
lies on the encoded region (on the GUI thread: it reads napari layers); :func:`assessment_job`
is the work the explorer's worker runs (arrays in, assessments out).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_probunet.errors import UserError
from napari_probunet.gui.explorer.layer import LAYER_KEY
from napari_probunet.review import plane as core
from napari_probunet.review.assess import FIT_IOU, KL_MARGIN, MIN_FIT_IOU

ASSESS_TEXT = "Assess ticked annotations"


#: the assessment table shows this many rows without scrolling (a LIDC nodule has 4 graders)
MAX_ROWS_SHOWN = 6


def candidate_names(viewer, skip_layers) -> list[str]:
    """Labels layers that may be annotations: not a hypothesis, not the explorer's own."""
    from napari.layers import Labels

    skip = {id(x) for x in skip_layers}
    return [layer.name for layer in viewer.layers
            if isinstance(layer, Labels) and id(layer) not in skip
            and layer.metadata.get(LAYER_KEY) != "explorer"]


def read_annotations(viewer, names: list[str], g) -> tuple[list, dict[str, str]]:
    """The masks ``[(name, (h, w) mask)]`` of the layers ``names`` on the encoded region of
    ``g`` (a :class:`~napari_probunet.gui.explorer.layer.RegionGeometry`), and an error per
    layer that cannot be assessed (missing, or not covering the whole region)."""
    masks, errors = [], {}
    for name in names:
        if name not in viewer.layers:
            errors[name] = "no such layer"
            continue
        layer = viewer.layers[name]
        try:
            mask, coverage = core.crop_to_region(
                layer.data, layer.scale, layer.translate, g.image_scale, g.image_translate,
                g.roi, g.slice_index)
        except (ValueError, IndexError, TypeError) as exc:
            errors[name] = str(exc)
            continue
        if coverage < 0.999:
            errors[name] = (f"covers only {coverage:.0%} of the region; place it over the "
                            "image region that was encoded")
            continue
        masks.append((name, mask))
    return masks, errors


def assessment_job(session, masks: list, reference=None) -> Iterator:
    """A one-step worker job: ``(reference, assessments, {name: error})`` for ``masks``.

    ``reference`` (the model's own samples of this image) is computed unless given; it does
    not change while the model and the region stay.
    """
    from napari_probunet.review import assess as assess_mod

    ref = reference or assess_mod.reference(session)
    found, failed = [], {}
    for name, mask in masks:
        try:
            found.append(assess_mod.assess_mask(session, mask, name, ref))
        except UserError as exc:
            failed[name] = str(exc)
    yield ref, found, failed


def _rule_tooltip(ref) -> str:
    return (
        f"An annotation is marked when the model finds it less likely (KL to the prior) "
        f"than {ref.quantile:.0%} of its own samples of this image, by more than "
        f"{KL_MARGIN:.0f} nat, or reconstructs it worse (IoU at the posterior mean) than "
        f"{ref.quantile:.0%} of them and below {FIT_IOU:.1f}. Where the model cannot "
        f"redraw its own samples (their IoU below {MIN_FIT_IOU:.2f}), fit is not judged. "
        "A mark says the model finds the annotation unusual, not that it is wrong: the "
        "model can be the one that is wrong. See docs/explorer.md.")


class AssessmentPanel(QGroupBox):
    """The "Assess annotations" box (see the module docstring).

    Attributes: ``annotation_list``, ``assess_button``, ``table``, ``rule_label`` (the Qt
    widgets); ``assessments`` (table order), ``errors`` (``{name: why}``, listed after them)
    and ``reference`` (the model's own samples, reused while the model and region stay).
    """

    def __init__(self) -> None:
        super().__init__("Assess annotations")
        box_layout = QVBoxLayout(self)
        self.annotation_list = QListWidget()
        self.annotation_list.setToolTip(
            "tick the Labels layers that are annotations of this image (graders, a correction)")
        self.annotation_list.setMaximumHeight(80)
        box_layout.addWidget(self.annotation_list)
        self.assess_button = QPushButton(ASSESS_TEXT)
        box_layout.addWidget(self.assess_button)
        self.table = QTableWidget(0, 6)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(80)
        box_layout.addWidget(self.table)
        self.rule_label = QLabel("")
        self.rule_label.setWordWrap(True)
        box_layout.addWidget(self.rule_label)
        self.setMinimumHeight(250)
        self.assessments: list = []
        self.errors: dict[str, str] = {}
        self.reference = None
        self._checked: set[str] = set()
        self.annotation_list.itemChanged.connect(self._on_item_changed)

    # -- the list of layers ------------------------------------------------------------------------
    def set_candidates(self, names: list[str]) -> None:
        """List layers ``names``, keeping the ticks of those listed before."""
        self._checked &= set(names)
        self.annotation_list.blockSignals(True)
        self.annotation_list.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in self._checked
                               else Qt.CheckState.Unchecked)
            self.annotation_list.addItem(item)
        self.annotation_list.blockSignals(False)

    def tick(self, names: list[str]) -> None:
        """Remember ``names`` as ticked (shown so at the next :meth:`set_candidates`)."""
        self._checked.update(names)

    def checked_names(self) -> list[str]:
        """The ticked layers, in list order."""
        return [self.annotation_list.item(i).text() for i in range(self.annotation_list.count())
                if self.annotation_list.item(i).checkState() == Qt.CheckState.Checked]

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if item.checkState() == Qt.CheckState.Checked:
            self._checked.add(item.text())
        else:
            self._checked.discard(item.text())

    # -- running -----------------------------------------------------------------------------------
    def start(self, viewer, names: list[str], g, session, submit) -> bool:
        """Read layers ``names`` on the region of ``g`` and ``submit(job)`` their assessment
        (:func:`assessment_job`); False, submitting nothing, when no name was given."""
        masks, errors = read_annotations(viewer, names, g)
        if not masks and not errors:
            return False
        job = assessment_job(session, masks, self.reference)
        self.errors = errors
        self.set_busy(True)
        submit(job)
        return True

    def set_busy(self, busy: bool) -> None:
        """The button while an assessment runs in the worker (disabled, "Assessing...")."""
        self.assess_button.setEnabled(not busy)
        self.assess_button.setText("Assessing\u2026" if busy else ASSESS_TEXT)

    def reset(self) -> None:
        """Forget the assessments and the reference (a new model or region); the errors of the
        last request stay listed."""
        self.reference = None
        self.assessments = []
        self.fill(None)
        self.rule_label.setText("")

    def show_results(self, ref, found: list, failed: dict[str, str], plane) -> None:
        """Show what :func:`assessment_job` found, and the rule it was flagged by."""
        self.reference = ref
        self.assessments = found
        self.errors.update(failed)
        self.fill(plane)
        fit = (f" or IoU < {ref.iou_threshold:.2f}" if ref.fit_assessed
               else "; fit not judged here (the model redraws its own samples poorly)")
        self.rule_label.setText(
            f"'Look again' when KL > {ref.kl_threshold:.2f} nats{fit} (from {len(ref.kl)} of "
            "the model's own samples of this image). A hint, not a verdict.")
        self.rule_label.setToolTip(_rule_tooltip(ref))

    def select_row(self, index: int) -> None:
        """Select row ``index`` of the table (an annotation's marker was clicked)."""
        if 0 <= index < self.table.rowCount():
            self.table.selectRow(index)

    def selected_assessment(self) -> int | None:
        """The selected row, if it is an assessment (not an error row)."""
        rows = {i.row() for i in self.table.selectedIndexes()}
        index = next(iter(rows), None)
        return index if index is not None and index < len(self.assessments) else None

    # -- the table ---------------------------------------------------------------------------------
    def fill(self, plane: core.LatentPlane | None) -> None:
        """Fill the table: a row per assessment, then a row per error; coordinates on ``plane``."""
        ax = plane.labels if plane is not None else ("z1", "z2")
        heads = ["Annotation", "KL (nats)", "IoU"]
        heads += [f"{name}/\u03c3" for name in ax]
        heads += ["Flag"]
        self.table.blockSignals(True)
        self.table.clear()
        self.table.setColumnCount(len(heads))
        self.table.setHorizontalHeaderLabels(heads)
        rows = [(a, None) for a in self.assessments]
        rows += [(name, err) for name, err in self.errors.items()]
        self.table.setRowCount(len(rows))
        red = QColor(235, 90, 90)
        for r, (a, err) in enumerate(rows):
            cells, tip = _row(a, err, plane, len(ax))
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                if 0 < c < len(cells) - 1:
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight
                                              | Qt.AlignmentFlag.AlignVCenter))
                if err is not None or (err is None and a.outlier):
                    item.setForeground(red)
                self.table.setItem(r, c, item)
        self.table.blockSignals(False)
        self.fit_rows()

    def fit_rows(self, most: int = MAX_ROWS_SHOWN) -> int:
        """Make the table tall enough for all its rows (at most ``most``; more scroll), so
        that the 4 radiologists of a LIDC nodule show at once (1-2 of them did at 1366x768);
        the dock scrolls instead. Returns the height set (pixels)."""
        t = self.table
        t.resizeRowsToContents()
        rows = min(max(t.rowCount(), 1), most)
        height = (t.horizontalHeader().height() + sum(t.rowHeight(i) for i in range(rows))
                  + t.horizontalScrollBar().sizeHint().height() + 2 * t.frameWidth() + 2)
        if not t.rowCount():
            height = max(80, height)
        t.setMinimumHeight(height)
        self.setMinimumHeight(max(250, self.sizeHint().height()))
        return height


def _row(a, err: str | None, plane, n_axes: int) -> tuple[list[str], str]:
    """The cells and tooltip of one table row: an assessment ``a``, or layer ``a``'s error."""
    if err is not None:
        return [a, "", "", *[""] * n_axes, "error"], err
    coords = plane.coords(a.mu) if plane is not None else np.zeros(2)
    flag = {("kl",): "look again: unlikely", ("fit",): "look again: not redrawn",
            ("kl", "fit"): "look again: unlikely, not redrawn"}.get(a.reasons, "")
    cells = [a.name, f"{a.kl:.2f}", f"{a.iou:.2f}",
             *[f"{c:+.2f}" for c in coords[:n_axes]], flag or "\u2014"]
    tip = ("posterior mean / \u03c3: (" + ", ".join(f"{x:+.2f}" for x in a.u) + ")\n"
           "posterior \u03c3 / prior \u03c3 shown in the CSV of probunet assess")
    return cells, tip
