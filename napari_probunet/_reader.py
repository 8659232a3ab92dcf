"""Open hypothesis bundles (``*.probunet.zip``), NIfTI files and multi-rater case folders in
napari: the npe2 reader contributions (``napari.yaml``), and nothing but the napari glue.

- :func:`get_reader` / :func:`read_bundles`: a bundle written by ``probunet sample`` opens as
  the layers the review widget would have made for the whole image, with no model run:

  - ``<name>``: the image (Image layer, exactly the array the model saw);
  - ``<name> uncertainty``: per-pixel disagreement (Image, magma, additive);
  - ``<name> hypothesis 01`` ... ``NN``: one Labels layer per hypothesis, the first visible and
    the others hidden;
  - ``<name> grader 1`` ...: the graders' masks of a multi-rater case (Labels, hidden).

- :func:`get_nifti_reader` / :func:`read_nifti`: napari has no NIfTI reader of its own.
- :func:`get_case_reader` / :func:`read_case`: an image and each grader's mask.

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
from dataclasses import replace
from pathlib import Path
from typing import Any

from napari_probunet.review.bundle import Bundle, hypothesis_layer_name, is_bundle_name, read_bundle

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
    if len(paths) != 1 or not Path(paths[0]).is_dir():
        return None
    folder = Path(paths[0])
    if (folder / "images").is_dir() and any((folder / "images").glob("slice-*.png")):
        return read_case
    from napari_probunet.data.readers import SUPPORTED_SUFFIXES, is_mask_name

    files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
    data = [f for f in files if f.name.lower().endswith(SUPPORTED_SUFFIXES)]
    if any(is_mask_name(f) for f in data) and any(not is_mask_name(f) for f in data):
        return read_case
    return None


def read_case(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """One multi-rater case as napari layers: the image, then one Labels layer per grader
    (``radiologist 1`` ...), each in its own colour so that overlaid outlines stay apart. A
    LIDC-IDRI nodule folder opens as a stack of its slices. Masks with grey levels are
    thresholded (the data layer's rule) and a notification says so."""
    import warnings

    import numpy as np

    from napari_probunet._sample_data import RATER_COLOURS, one_colour_colormap
    from napari_probunet.data.readers import read_case_folder

    folder = Path(_paths(path)[0])
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as found:
        warnings.simplefilter("always")
        if (folder / "images").is_dir():
            from napari_probunet.data.lidc_slices import read_lidc_nodule

            cases = read_lidc_nodule(folder)
            image = np.stack([c.image for c in cases])
            masks = np.stack([c.masks for c in cases], axis=1)  # (R, slices, H, W)
            name = f"{folder.parent.name} {folder.name}"
        else:
            case = read_case_folder(folder)
            image, masks, name = case.image, case.masks, folder.name
        caught = [str(w.message) for w in found]
    if caught:
        from napari.utils.notifications import show_info

        show_info("; ".join(caught))
    meta = {"source_path": str(folder), "kind": "image"}
    layers: list[LayerData] = [(image, {"name": name, "metadata": meta}, "image")]
    for r, mask in enumerate(masks):
        drew = bool(mask.any())
        layers.append((mask.astype(np.uint8), {
            "name": f"{name} radiologist {r + 1}" + ("" if drew else " (drew nothing)"),
            "opacity": 0.7,
            "colormap": one_colour_colormap(RATER_COLOURS[r % len(RATER_COLOURS)]),
            "metadata": {"kind": "grader", "grader": r + 1, "source_path": str(folder)},
        }, "labels"))
    return layers


# ----------------------------------------------------------------------------- NIfTI

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def get_nifti_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable | None:
    """npe2 reader: :func:`read_nifti` for ``.nii``/``.nii.gz`` files (napari has none of its
    own, so without it napari cannot open what the review's export writes), else None."""
    paths = _paths(path)
    if not paths or not all(p.lower().endswith(NIFTI_SUFFIXES) and Path(p).is_file()
                            for p in paths):
        return None
    return read_nifti


def read_nifti(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """NIfTI files as napari layers, sizes checked against the limits before reading.

    - A correction exported by the review (its ``<file>.json`` record beside it) opens as a
      **Labels** layer exactly as it was saved (rows first, as the review's arrays are), named
      and placed as in the record (its pixel spacing as the layer's scale).
    - Any other NIfTI (a CT volume, say) opens as an **Image** with its axes reversed to
      napari's order (slices, rows, columns: NIfTI stores x first) and the voxel spacing of its
      header as the scale; values as stored (Hounsfield units for CT). Integer volumes with a
      handful of values (a segmentation) open as Labels.
    """
    return [_nifti_layer(p) for p in _paths(path)]


def _open_nifti(p: str):
    """``(image, data)`` of the NIfTI file ``p``: its header read and its declared size checked
    against the limits before the array is read (:class:`~napari_probunet.errors.DataError`)."""
    import nibabel
    import numpy as np

    from napari_probunet import limits
    from napari_probunet.errors import DataError

    try:
        img = nibabel.load(p)
        shape, dtype = tuple(int(s) for s in img.shape), np.dtype(img.get_data_dtype())
    except Exception as exc:  # nibabel raises its own types for a broken header
        raise DataError(f"{p}: cannot read this NIfTI file ({type(exc).__name__}: {exc}); "
                        "it may be truncated or not what its name says.") from None
    if len(shape) < 2:
        raise DataError(f"{p}: the NIfTI array has shape {shape}; expected an image or volume.")
    limits.check_plane(shape[0], shape[1], f"{p}: the NIfTI plane", DataError)
    limits.check_decoded(limits.array_bytes(shape, dtype.itemsize), os.path.getsize(p),
                         f"{p}: the NIfTI array", DataError)
    return img, np.asanyarray(img.dataobj)


def _nifti_layer(p: str) -> LayerData:
    """One NIfTI file as a layer (see :func:`read_nifti`)."""
    import numpy as np

    from napari_probunet.review.export import read_record

    img, data = _open_nifti(p)
    zooms = [float(z) for z in img.header.get_zooms()[: data.ndim]]
    name = Path(p).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    record = read_record(p)
    if record is not None:
        return (np.asarray(data), {"name": name, "scale": zooms,
                                   "metadata": {"kind": "correction-file", "source_path": p,
                                                "record": record}}, "labels")
    volume = np.transpose(np.asarray(data), tuple(reversed(range(data.ndim))))
    scale = list(reversed(zooms))
    labels = (np.issubdtype(volume.dtype, np.integer) and volume.size
              and len(np.unique(volume[:: max(1, volume.shape[0] // 8)])) <= 16)
    meta = {"source_path": p, "nifti_affine": np.asarray(img.affine).tolist()}
    return (volume, {"name": name, "scale": scale, "metadata": meta},
            "labels" if labels else "image")


def read_bundles(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """The layers of one or more bundles (see the module docstring)."""
    layers: list[LayerData] = []
    for p in _paths(path):
        layers += bundle_layers(read_bundle(p))
    return layers


def bundle_layers(b: Bundle) -> list[LayerData]:
    """Layer data tuples for one bundle, bottom to top: image, uncertainty, hypotheses, graders."""
    name = b.name
    record = b.provenance()
    n_classes = max(2, len(b.class_names))
    layers: list[LayerData] = [(
        b.image,
        {"name": name, "rgb": b.image.ndim == 3,
         "metadata": replace(record, kind="image").to_metadata()},
        "image",
    ), (
        b.uncertainty,
        {"name": f"{name} uncertainty", "colormap": "magma", "blending": "additive",
         "opacity": 0.7, "contrast_limits": [0.0, 1.0 - 1.0 / n_classes],
         "metadata": replace(record, kind="uncertainty").to_metadata()},
        "image",
    )]
    for i in range(b.n):
        hypothesis = replace(record, kind="hypothesis", index=i,
                             z=[float(v) for v in b.z[i]])
        layers.append((
            b.hypotheses[i],
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
