"""Open hypothesis bundles (``*.probunet.zip``), NIfTI files, DICOM series and multi-rater
case folders in napari: the npe2 reader contributions (``napari.yaml``), and nothing but the
napari glue.

- :func:`get_reader` / :func:`read_bundles`: a bundle written by ``probunet sample`` opens as
  the layers the review widget would have made for the whole image, with no model run:

  - ``<name>``: the image (Image layer, exactly the array the model saw);
  - ``<name> uncertainty``: per-pixel disagreement (Image, magma, additive);
  - ``<name> hypothesis 01`` ... ``NN``: one Labels layer per hypothesis, the first visible and
    the others hidden;
  - ``<name> grader 1`` ...: the graders' masks of a multi-rater case (Labels, hidden).

- :func:`get_nifti_reader` / :func:`read_nifti`: napari has no NIfTI reader of its own.
- :func:`get_dicom_reader` / :func:`read_dicom`: a DICOM series (folder or file) in HU.
- :func:`get_case_reader` / :func:`read_case`: an image and each grader's mask
  (:mod:`napari_probunet.data.case_stack`).

Which suffix is which format, and the patterns napari.yaml lists, is the format table
(:mod:`napari_probunet.data.formats`); the reading itself is the data layer's.

Every bundle layer's ``metadata`` is the bundle's provenance record
(:meth:`napari_probunet.review.bundle.Bundle.provenance`, the review widget's keys, see
:mod:`napari_probunet.review.provenance`) with the layer's ``kind`` (``"image"``,
``"hypothesis"``, ``"uncertainty"``, ``"grader"``); a hypothesis also has ``index`` (0-based)
and ``z`` (list of floats), a grader layer ``grader``. So napari's File → Save (the writer
contribution, :func:`napari_probunet.review.export.layer_mask_and_record`) writes a hypothesis
with its full provenance record. Reading and checking a bundle is
:func:`napari_probunet.review.bundle.read_bundle`; finding a bundle's layers again (for the
review widget) is :func:`napari_probunet.review.bundle.collect_layers`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_info

from napari_probunet.data import formats
from napari_probunet.data.case_stack import is_case_folder, read_case_stack
from napari_probunet.data.nifti import nifti_name, nifti_spacing, nifti_volume, open_nifti
from napari_probunet.data.volumes import (
    LUNG_WINDOW,
    is_dicom_folder,
    is_dicom_name,
    is_seg_file,
    read_dicom_series,
    window_limits,
)
from napari_probunet.review.bundle import Bundle, hypothesis_layer_name, is_bundle_name, read_bundle
from napari_probunet.review.export import read_record

LayerData = tuple[Any, dict[str, Any], str]


def _paths(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    return [os.fspath(p) for p in path]


def get_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable | None:
    """npe2 reader: :func:`read_bundles` for ``*.probunet.zip`` paths, else None.

    The bundle is validated when it is read, so a damaged file or a bundle from a newer version
    gives an error that says so instead of "no reader found".
    """
    paths = _paths(path)
    if not paths or not all(is_bundle_name(p) and not Path(p).is_dir() for p in paths):
        return None
    return read_bundles


# ----------------------------------------------------------------------------- multi-rater


def get_case_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable | None:
    """npe2 reader for one multi-rater case: a folder of the generic layout (an image and its
    graders' masks, docs/data.md) or a nodule folder of the LIDC-IDRI slices
    (``LIDC-IDRI-<patient>/nodule-<k>``). Other folders and files: None."""
    paths = _paths(path)
    return read_case if len(paths) == 1 and is_case_folder(paths[0]) else None


def read_case(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """One multi-rater case as napari layers (:func:`~napari_probunet.data.case_stack.
    read_case_stack`): the image, then one Labels layer per grader (``radiologist 1 · <case>``,
    or ``rater 1 · <case>`` outside radiology: :func:`grader_word`), each in its own colour so
    that overlaid outlines stay apart (the plugin's widgets draw ``kind: grader`` layers as
    outlines: :func:`napari_probunet.gui.dock.outline_graders`). A LIDC-IDRI nodule folder
    opens as a stack of its slices. Masks with grey levels are thresholded (the data layer's
    rule) and a notification names them."""
    from napari_probunet.gui.palette import radiologist_colormap

    folder = Path(_paths(path)[0])
    case = read_case_stack(folder)
    name = case.name
    if case.notes:
        show_info(f"Opened {name}. " + " ".join(case.notes))
    meta = {"source_path": str(folder), "kind": "image"}
    layers: list[LayerData] = [(case.image, {"name": name, "metadata": meta}, "image")]
    word = grader_word(folder)
    for r, mask in enumerate(case.masks):
        drew = bool(mask.any())
        layers.append((mask.astype(np.uint8, copy=False), {
            # who comes first: napari's layer list cuts long names in the middle
            "name": f"{word} {r + 1}" + ("" if drew else " (drew nothing)") + f" · {name}",
            "opacity": 0.7,
            "colormap": radiologist_colormap(r),
            "metadata": {"kind": "grader", "grader": r + 1, "source_path": str(folder)},
        }, "labels"))
    return layers


#: modalities whose graders are radiologists (DICOM's codes); other data have raters
RADIOLOGY = {"CT", "MR", "MRI", "PT", "PET", "CR", "DX", "MG", "US", "XR", "NM"}


def grader_word(folder: Path) -> str:
    """What a case's graders are called: ``"radiologist"`` for a LIDC-IDRI nodule folder or
    a case whose ``case.json`` names a radiology ``modality`` (CT, MR, ...), else ``"rater"``
    (a microscopy or photo data set's graders are no radiologists)."""
    import json

    if (folder / "images").is_dir() or folder.name.upper().startswith("LIDC-IDRI"):
        return "radiologist"
    try:
        meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "rater"
    modality = str(meta.get("modality", "")).upper() if isinstance(meta, dict) else ""
    return "radiologist" if modality in RADIOLOGY else "rater"


# ----------------------------------------------------------------------------- NIfTI

NIFTI_SUFFIXES = formats.NIFTI.suffixes
#: napari's reader preferences (``settings.plugins.extension2reader``) this plugin fills in
NIFTI_PATTERNS = formats.NIFTI.patterns


def prefer_for_nifti(settings=None) -> list[str]:
    """Make this plugin napari's reader for ``*.nii``/``*.nii.gz`` where the user has chosen
    none: napari's own reader claims them too but has no backend for NIfTI ("Could not find a
    backend"), so without a preference napari asks which plugin to use, or
    ``viewer.open(path)`` fails. A choice the user made is never changed. Returns the
    patterns set. Run when the plugin is activated (``on_activate`` in the manifest)."""
    return _prefer(NIFTI_PATTERNS, settings)


#: DICOM files and the folders this plugin reads (napari matches a folder as its path with a
#: trailing separator): napari's own reader claims them too and crashes on DICOM SEG and CT
#: files, and on folders napari asked "Choose reader" every time
DICOM_AND_FOLDER_PATTERNS = ("*.dcm", "*.dicom", f"*nodule-*{os.sep}",
                             f"*LIDC-IDRI-*{os.sep}", f"*{os.sep}ct{os.sep}")


def prefer_for_dicom_and_folders(settings=None) -> list[str]:
    """As :func:`prefer_for_nifti`, for :data:`DICOM_AND_FOLDER_PATTERNS`."""
    return _prefer(DICOM_AND_FOLDER_PATTERNS, settings)


def _prefer(patterns, settings=None) -> list[str]:
    """Make this plugin the reader of ``patterns`` the user has chosen none for."""
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    prefs = dict(settings.plugins.extension2reader)
    missing = [p for p in patterns if p not in prefs]
    if missing:
        settings.plugins.extension2reader = {**prefs, **dict.fromkeys(missing, "napari-probunet")}
    return missing


def on_activate(context=None) -> None:
    """npe2 calls this when the plugin is first used (a widget, a reader, a sample)."""
    with suppress(Exception):  # settings that cannot be changed: napari asks, as before
        prefer_for_nifti()
        prefer_for_dicom_and_folders()


def get_nifti_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable | None:
    """npe2 reader: :func:`read_nifti` for ``.nii``/``.nii.gz`` files (napari has none of its
    own, so without it napari cannot open what the review's export writes), else None."""
    paths = _paths(path)
    if not paths or not all(formats.is_format(p, formats.NIFTI) and Path(p).is_file()
                            for p in paths):
        return None
    return read_nifti


def read_nifti(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """NIfTI files as napari layers, sizes checked against the limits before reading.

    - A correction exported by the review (its ``<file>.json`` record beside it) opens as a
      **Labels** layer exactly as it was saved (rows first, as the review's arrays are), named
      and placed as in the record (its pixel spacing as the layer's scale). One exported as
      the whole scan (the record's ``volume`` is ``placed``) opens in the scan's layer order
      and spacing instead, over the scan's image layer, with its ``metadata["source"]``.
    - Any other NIfTI (a CT volume, say) opens as an **Image** with its axes reversed to
      napari's order (slices, rows, columns: NIfTI stores x first) and the voxel spacing of its
      header as the scale; values as stored (Hounsfield units for CT). Integer volumes with a
      handful of values (a segmentation) open as Labels.
    """
    return [_nifti_layer(p) for p in _paths(path)]


def _nifti_layer(p: str) -> LayerData:
    """One NIfTI file as a layer (see :func:`read_nifti`)."""
    img, data = open_nifti(p)
    record = read_record(p)
    if record is not None and isinstance(record.get("volume"), dict) and record["volume"].get(
            "placed"):  # the whole scan in the file's axis order: as the scan's image opens
        volume = nifti_volume(img, data, p)
        return (volume.data, {"name": nifti_name(p), "scale": list(volume.spacing),
                              "metadata": {"kind": "correction-file", "source_path": p,
                                           "record": record, "source": volume.source()}},
                "labels")
    if record is not None:
        zooms, notes = nifti_spacing(img, data.ndim)
        if notes:
            show_info(f"Opened {nifti_name(p)}. Note: {'; '.join(notes)}.")
        return (np.asarray(data), {"name": nifti_name(p), "scale": zooms,
                                   "metadata": {"kind": "correction-file", "source_path": p,
                                                "record": record}}, "labels")
    volume = nifti_volume(img, data, p)
    v = volume.data
    labels = (np.issubdtype(v.dtype, np.integer) and v.size
              and len(np.unique(v[:: max(1, v.shape[0] // 8)])) <= 16)
    if labels:
        meta = {"source_path": p, "nifti_affine": volume.source()["affine"],
                "source": volume.source()}
        if volume.notes:
            show_info(f"Opened {volume.name}. Note: {'; '.join(volume.notes)}.")
        return (v, {"name": volume.name, "scale": list(volume.spacing), "metadata": meta},
                "labels")
    return _volume_layer(volume, notify=v.ndim >= 3 or bool(volume.notes))


def _volume_layer(volume, notify: bool = True) -> LayerData:
    """A :class:`~napari_probunet.data.volumes.Volume` as an Image layer: its values as read
    (Hounsfield units for CT: never re-windowed, the model takes them as they are), its
    spacing as the scale, grey, and for CT the lung window as the contrast limits (named in
    the metadata). ``metadata["source"]`` is :meth:`Volume.source` (format, path, shape and
    affine of the file), for an export aligned with the original."""
    source = volume.source()
    meta = {"kind": "image", "source_path": volume.path, "source": source,
            "units": volume.units}
    if volume.format == "nifti":
        meta["nifti_affine"] = source["affine"]
    kwargs: dict[str, Any] = {"name": volume.name, "scale": list(volume.spacing),
                              "colormap": "gray"}
    low, high = window_limits(LUNG_WINDOW)
    if volume.units == "HU":
        kwargs["contrast_limits"] = [low, high]
        meta["window"] = {**LUNG_WINDOW, "low": low, "high": high,
                          "note": "display only: the data stay in HU, the model needs no "
                                  "window (it stretches each crop's own range)"}
    kwargs["metadata"] = meta
    if notify:
        window = f"; lung window {low:g}..{high:g} HU" if volume.units == "HU" else ""
        notes = f" Note: {'; '.join(volume.notes)}." if volume.notes else ""
        show_info(f"Opened {volume.describe()}{window}.{notes}")
    return (volume.data, kwargs, "image")


# ----------------------------------------------------------------------------- DICOM


def get_dicom_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable | None:
    """npe2 reader: :func:`read_dicom` for one ``.dcm``/``.dicom`` file, several such files,
    or one folder holding DICOM files (directly, or in subfolders: then the reader says which
    series to choose). A folder that :func:`get_case_reader` takes (a multi-rater case, an
    LIDC nodule folder) is left to it; anything else: None."""
    paths = _paths(path)
    if not paths:
        return None
    if len(paths) == 1 and Path(paths[0]).is_dir():
        if get_case_reader(paths[0]) is not None or not is_dicom_folder(paths[0]):
            return None
        return read_dicom
    if all(is_dicom_name(p) and Path(p).is_file() for p in paths) and not is_seg_file(paths[0]):
        return read_dicom
    return None


def read_dicom(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """A DICOM series (a folder, one file of it: its whole series, or its files) as one Image
    layer in Hounsfield units (:func:`napari_probunet.data.volumes.read_dicom_series`):
    named by its SeriesDescription (else the folder), scaled by its spacing, grey, shown in
    the lung window (-1350..150 HU), its affine in ``metadata["source"]``; a notification says
    what was opened. Refusals (several series, no pixels, compressed without a decoder...) are
    :class:`~napari_probunet.errors.DataError` naming the way out."""
    paths = _paths(path)
    return [_volume_layer(read_dicom_series(paths if len(paths) > 1 else paths[0]))]


def read_bundles(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """The layers of one or more bundles (see the module docstring)."""
    layers: list[LayerData] = []
    for p in _paths(path):
        layers += bundle_layers(read_bundle(p))
    return layers


def bundle_layers(b: Bundle) -> list[LayerData]:
    """Layer data tuples for one bundle, bottom to top: image, uncertainty, hypotheses, graders."""
    name, hypotheses = b.name, b.hypotheses
    record = b.provenance()
    n_classes = max(2, len(b.class_names))
    layers: list[LayerData] = [(
        b.image,
        {"name": name, "rgb": b.image.ndim == 3,
         "metadata": replace(record, kind="image").to_metadata()},
        "image",
    ), (
        hypotheses.uncertainty,
        {"name": f"{name} uncertainty", "colormap": "magma", "blending": "additive",
         "opacity": 0.7, "contrast_limits": [0.0, 1.0 - 1.0 / n_classes],
         "metadata": replace(record, kind="uncertainty").to_metadata()},
        "image",
    )]
    for i in range(b.n):
        hypothesis = replace(record, kind="hypothesis", index=i,
                             z=[float(v) for v in hypotheses.z[i]])
        layers.append((
            hypotheses.labels[i],
            {"name": hypothesis_layer_name(name, i, b.n), "visible": i == 0, "opacity": 0.6,
             "metadata": hypothesis.to_metadata()},
            "labels",
        ))
    if b.graders is not None:
        for r in range(b.graders.shape[0]):
            grader = replace(record, kind="grader", extra={**record.extra, "grader": r})
            layers.append((
                b.graders[r],
                {"name": f"{name} grader {r + 1}", "visible": False, "opacity": 0.6,
                 "metadata": grader.to_metadata()},
                "labels",
            ))
    return layers
