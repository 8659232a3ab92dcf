"""Open a DICOM SEG file in napari over the CT series it was drawn on: the npe2 reader
contribution ``napari-probunet.read_seg`` (``*.dcm`` files whose SOP class is Segmentation
Storage), and nothing but the napari glue.

Finding the series (the SEG names it in its Referenced Series Sequence):

1. an image layer of that series already open in the viewer (opened from its folder: its
   ``metadata["source"]``): the segments go over it and the CT is not opened again;
2. else the first folder, in this order, that holds files of that series: the SEG's own
   folder (the series beside it), ``../ct/``, ``ct/``, the other subfolders of the SEG's
   parent folder, the subfolders of the SEG's own folder
   (:func:`napari_probunet.data.dicom_seg.find_series`); the CT then opens too, as the DICOM
   reader opens it (Hounsfield units, lung window, its spacing as the scale);
3. else a message names the series, the folders searched and how to open both.

Each segment becomes one layer named by its label, with the CT layer's scale and its box's
offset as the translation, so it sits over the CT voxel for voxel: a binary segment a Labels
layer (0/1, in the SEG's recommended colour), a FRACTIONAL one an Image layer (0..1, magma,
additive). ``metadata["seg"]`` holds the SEG's path, UIDs, the segment's number, codes and
algorithm. npe2 offers a ``.dcm`` file to every reader whose pattern matches, in no fixed
order, so the package's DICOM series reader (``get_dicom_reader``) declines SEG files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_probunet.gui.palette import RADIOLOGIST_COLOURS

LayerData = tuple[Any, dict[str, Any], str]
#: colours of segments that recommend none: the radiologists' palette (a LIDC-IDRI SEG holds
#: one segment per radiologist; :mod:`napari_probunet.gui.palette`)
SEGMENT_COLOURS = RADIOLOGIST_COLOURS


def _paths(path) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    return [os.fspath(p) for p in path]


def get_seg_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable | None:
    """npe2 reader: :func:`read_seg_file` for one ``.dcm``/``.dicom`` file that is a DICOM
    SEG (its header says so), else None."""
    from napari_probunet.data.volumes import is_dicom_name, is_seg_file

    paths = _paths(path)
    if len(paths) != 1 or not is_dicom_name(paths[0]) or not Path(paths[0]).is_file():
        return None
    return read_seg_file if is_seg_file(paths[0]) else None


def _open_series_layer(uid: str):
    """An image layer of series ``uid`` in the current viewer (opened from its folder), or
    None."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no viewer (a script): nothing open
        return None
    if viewer is None:
        return None
    for layer in viewer.layers:
        source = layer.metadata.get("source") if hasattr(layer, "metadata") else None
        if (isinstance(source, dict) and source.get("format") == "dicom"
                and source.get("series_uid") == uid and layer.data.ndim == 3):
            return layer
    return None


def _not_found(path: Path, named: list[str], searched: list[Path]) -> Exception:
    from napari_probunet.errors import DataError

    if not named:
        return DataError(f"{path.name} is a DICOM SEG that names no series (no "
                         "ReferencedSeriesSequence), so its CT cannot be found; open the CT "
                         "series first, then read the SEG with "
                         "napari_probunet.data.dicom_seg.read_seg(seg, series_folder).")
    where = ", ".join(str(p) for p in searched[:8]) + (" ..." if len(searched) > 8 else "")
    return DataError(
        f"{path.name} is a DICOM SEG drawn on the series {named[0]}, which was not found "
        f"beside it (looked in: {where or 'no folders'}). To see it over its CT: open that "
        "series' folder in napari first (File > Open Folder...) and then open the SEG, or "
        "put the series' folder beside the SEG (e.g. ../ct/) and open the SEG again.")


def read_seg_file(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """The SEG's segments over its CT (see the module docstring): the CT image layer first
    (unless already open), then one layer per segment."""
    from napari_probunet.data.dicom_seg import (
        find_series,
        read_seg,
        referenced_series,
        seg_header,
    )
    from napari_probunet.data.volumes import read_dicom_series

    p = Path(_paths(path)[0])
    named = referenced_series(seg_header(p))
    layers: list[LayerData] = []
    open_layer = _open_series_layer(named[0]) if named else None
    if open_layer is not None:
        series = open_layer.metadata["source"]["path"]
        scale = [float(s) for s in open_layer.scale]
        translate = [float(t) for t in open_layer.translate]
    else:
        files, searched = find_series(p)
        if not files:
            raise _not_found(p, named, searched)
        volume = read_dicom_series(files)
        series, scale, translate = files, list(volume.spacing), [0.0, 0.0, 0.0]
        layers.append(_ct_layer(volume))
    seg = read_seg(p, series)
    for i, segment in enumerate(seg.segments):
        layers.append(_segment_layer(seg, segment, i, scale, translate))
    from napari.utils.notifications import show_info

    kind = "fractional" if seg.fractional else "binary"
    show_info(f"Opened {p.name}: {len(seg.segments)} {kind} segment(s) over the series "
              f"{seg.series_uid}.")
    return layers


def _ct_layer(volume) -> LayerData:
    """The CT as the DICOM reader shows it: HU, grey, lung window, its spacing."""
    from napari_probunet.data.volumes import LUNG_WINDOW, window_limits

    kwargs: dict[str, Any] = {
        "name": volume.name, "scale": list(volume.spacing), "colormap": "gray",
        "metadata": {"kind": "image", "source_path": volume.path, "source": volume.source(),
                     "units": volume.units}}
    if volume.units == "HU":
        kwargs["contrast_limits"] = list(window_limits(LUNG_WINDOW))
    return (volume.data, kwargs, "image")


def _segment_layer(seg, segment, i: int, scale, translate) -> LayerData:
    """One segment as a layer over the CT (its box, translated to where the box starts)."""
    shift = [t + o * s for t, o, s in zip(translate, segment.offset, scale)]
    meta = {"kind": "seg-segment", "seg": {
        "path": seg.path, "sop_instance_uid": seg.sop_instance_uid,
        "series_uid": seg.series_uid, "segment_number": segment.number,
        "label": segment.label, "offset": list(segment.offset), "shape": list(segment.shape),
        "frames": segment.frames, **segment.description}}
    kwargs: dict[str, Any] = {"name": segment.label, "scale": list(scale),
                              "translate": shift, "metadata": meta}
    if seg.fractional:
        kwargs.update(colormap="magma", blending="additive", contrast_limits=[0.0, 1.0],
                      opacity=0.8)
        return (segment.crop, kwargs, "image")
    from napari.utils.colormaps import DirectLabelColormap

    colour = segment.description.get("rgb") or SEGMENT_COLOURS[i % len(SEGMENT_COLOURS)]
    kwargs.update(opacity=0.6, colormap=DirectLabelColormap(
        color_dict={None: "transparent", 0: "transparent", 1: colour}))
    return (segment.crop, kwargs, "labels")
