"""Open a whole CT scan with the radiologists' LIDC-IDRI outlines in napari: the npe2 reader
contribution for a **scan folder** (``napari.yaml``), and nothing but the napari glue.

A scan folder holds ``ct/`` (one DICOM series) and ``annotations/`` (zero or more LIDC-IDRI
reading files, ``*.xml``): :func:`napari_probunet.data.lidc_scan.read_scan_folder` reads it
(``docs/scans.md``). Opening it gives, bottom to top:

- ``<scan>``: the CT in Hounsfield units (Image), its spacing as the scale, grey, in the
  lung window (-1350..150 HU: display only), as the DICOM reader shows a series;
- ``<scan> radiologist 1`` ... ``N``: one Labels layer per radiologist, the union of the
  nodules they outlined (value 1), each in its own colour (:data:`RADIOLOGIST_COLOURS`),
  drawn as outlines; ``metadata`` says which radiologist (``grader``, ``radiologist``,
  ``servicing_radiologist_id``, ``reading_file``) and which nodules (``nodules``: number,
  the radiologist's noduleID, slices, volume in mm^3, longest axial diameter in mm);
- ``<scan> marks``: the points the radiologists marked without an outline (small nodules
  < 3 mm as rings, non-nodules as crosses, in the radiologist's colour), if any.

The ``ct/`` folder itself opens as a plain series (the DICOM reader). This reader comes first
among the plugin's folder readers in the manifest, so napari hands it a scan folder before the
DICOM reader (which would only say that ``ct/`` holds a series). A reading file that cannot be
used is named in a warning and the scan opens without its outlines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# one colour per radiologist: the one palette (RADIOLOGIST_COLOURS: re-exported for the tests)
from napari_probunet.gui.palette import RADIOLOGIST_COLOURS, radiologist_colour  # noqa: F401

LayerData = tuple[Any, dict[str, Any], str]

#: the marks' symbols by kind, and their size (data pixels: about 8 mm at LIDC's 0.7 mm)
MARK_SYMBOLS = {"small nodule": "ring", "non-nodule": "cross"}
MARK_SIZE = 12


def _paths(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    return [os.fspath(p) for p in path]


def get_scan_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable | None:
    """npe2 reader: :func:`read_scan` for one folder with a ``ct/`` subfolder, else None."""
    from napari_probunet.data.lidc_scan import is_scan_folder

    paths = _paths(path)
    if len(paths) != 1 or not is_scan_folder(paths[0]):
        return None
    return read_scan


def read_scan(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """A scan folder as napari layers (see the module docstring)."""
    from napari_probunet.data.lidc_scan import read_scan_folder

    scan = read_scan_folder(_paths(path)[0])
    layers = [image_layer(scan)]
    layers += [radiologist_layer(scan, r) for r in range(len(scan.radiologists))]
    if scan.points:
        layers.append(marks_layer(scan))
    _outline_when_added()
    _tell(scan)
    return layers


def _nodule_record(scan, n, r: int | None = None) -> dict[str, Any]:
    """A nodule as JSON types: its number, box, centre and, for radiologist ``r``, what
    they drew."""
    record: dict[str, Any] = {
        "nodule": n.index + 1, "bbox": [int(v) for v in n.bbox],
        "centre_voxel": [round(c, 2) for c in n.centroid_voxel],
        "radiologists": [ri + 1 for ri in n.reader_ids]}
    if r is not None:
        record.update({
            "nodule_id": n.nodule_ids.get(r), "slices": [int(k) for k in n.slices(r)],
            "volume_mm3": round(n.volume_mm3(r), 1),
            "longest_diameter_mm": round(n.diameter_mm(r), 1)})
    return record


def image_layer(scan) -> LayerData:
    """The CT (Image): HU as read, spacing as scale, lung window (display only)."""
    from napari_probunet.data.volumes import LUNG_WINDOW, window_limits

    volume = scan.volume
    low, high = window_limits(LUNG_WINDOW)
    meta = {"kind": "image", "source_path": scan.source, "source": volume.source(),
            "units": volume.units, "scan": scan.source,
            "reading_files": list(scan.reading_files),
            "nodules": [_nodule_record(scan, n) for n in scan.nodules],
            "notes": list(scan.notes)}
    kwargs: dict[str, Any] = {"name": scan.name, "scale": list(volume.spacing),
                              "colormap": "gray", "metadata": meta}
    if volume.units == "HU":
        kwargs["contrast_limits"] = [low, high]
        meta["window"] = {**LUNG_WINDOW, "low": low, "high": high,
                          "note": "display only: the data stay in HU"}
    return (volume.data, kwargs, "image")


def radiologist_layer(scan, r: int) -> LayerData:
    """Radiologist ``r``'s outlined nodules (Labels, value 1), in their colour."""
    import numpy as np

    from napari_probunet.gui.palette import one_colour_colormap

    who = scan.radiologists[r]
    mine = [n for n in scan.nodules if r in n.reader_ids]
    name = f"{scan.name} {who.name}" + ("" if mine else " (outlined nothing)")
    meta = {"kind": "grader", "grader": r + 1, "radiologist": who.name,
            "servicing_radiologist_id": who.servicing_id, "reading_file": who.reading_file,
            "colour": radiologist_colour(r), "source_path": scan.source,
            "source": scan.volume.source(),
            "nodules": [_nodule_record(scan, n, r) for n in mine]}
    mask = scan.radiologist_mask(r).astype(np.uint8)
    return (mask, {"name": name, "scale": list(scan.volume.spacing), "opacity": 1.0,
                   "colormap": one_colour_colormap(radiologist_colour(r)), "metadata": meta},
            "labels")


def marks_layer(scan) -> LayerData:
    """The radiologists' points (small nodules, non-nodules), in their colours."""
    import numpy as np

    points = scan.points
    coords = np.array([p.voxel for p in points], float)
    colours = [radiologist_colour(p.radiologist) for p in points]
    features = {"radiologist": [p.radiologist + 1 for p in points],
                "kind": [p.kind for p in points], "id": [p.mark_id for p in points]}
    return (coords, {
        "name": f"{scan.name} marks", "scale": list(scan.volume.spacing),
        "symbol": [MARK_SYMBOLS.get(p.kind, "disc") for p in points],
        "size": MARK_SIZE, "face_color": "transparent", "border_color": colours,
        "border_width": 0.15,
        "features": features,
        "metadata": {"kind": "marks", "source_path": scan.source,
                     "note": "small nodules (< 3 mm, rings) and non-nodules (crosses) as the "
                             "radiologists marked them: points, not outlines"}}, "points")


def _outline_when_added() -> None:
    """Radiologists' layers are drawn as outlines once they join the viewer (napari's Labels
    take no ``contour`` in a layer data tuple): the plugin's one rule for grader layers."""
    from contextlib import suppress

    import napari

    from napari_probunet.gui.dock import outline_graders

    viewer = napari.current_viewer()
    if viewer is not None:
        with suppress(Exception):  # a viewer being closed: the layers stay filled
            outline_graders(viewer)


def _tell(scan) -> None:
    """A notification of what was opened, and a warning naming any problem."""
    from napari.utils.notifications import show_info, show_warning

    outlined = ", ".join(f"nodule {n.index + 1} by {len(n.reader_ids)} of "
                         f"{len(scan.radiologists)}" for n in scan.nodules[:6])
    more = f" and {len(scan.nodules) - 6} more" if len(scan.nodules) > 6 else ""
    remarks = [n for n in scan.notes if n not in scan.problems]
    show_info(f"Opened the scan {scan.name} ({scan.volume.describe()}); {len(scan.radiologists)} "
              f"radiologist(s) in {len(scan.reading_files)} reading file(s); "
              f"{len(scan.nodules)} nodule(s) outlined{': ' + outlined if outlined else ''}"
              f"{more}; {len(scan.points)} point mark(s).{' ' if remarks else ''}"
              + " ".join(remarks))
    if scan.problems:
        show_warning(f"{Path(scan.source).name}: " + " ".join(scan.problems))
