"""NIfTI volumes (nibabel) as :class:`~napari_probunet.data.volumes.Volume`: axes reversed to
(slices, rows, columns), the voxel spacing and the affine of the header, the size the header
declares checked against :mod:`napari_probunet.limits` before the voxels are read (a
``.nii.gz`` streamed into its array: :func:`napari_probunet.data.formats.nifti_voxels`). A
header whose spacing or affine is not finite opens with a note instead of breaking the layer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from napari_probunet import limits
from napari_probunet.data import formats
from napari_probunet.data.volumes import Volume, looks_like_ct
from napari_probunet.errors import DataError


def nifti_name(path: str | os.PathLike) -> str:
    """The file name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    return formats.stem_of(name) if formats.is_format(name, formats.NIFTI) else name


def open_nifti(path: str | os.PathLike):
    """``(image, data)`` of a NIfTI file: its header read and the size it declares (as
    nibabel decodes it: scaled data become floats) checked against the limits before the
    array is read. :class:`DataError` if unreadable."""
    import nibabel

    p = str(path)
    try:
        img = nibabel.load(p)
        shape, itemsize = formats.nifti_declared(img)
    except Exception as exc:  # nibabel raises its own types for a broken header
        raise DataError(f"{p}: cannot read this NIfTI file ({type(exc).__name__}: {exc}); "
                        "it may be truncated or not what its name says.") from None
    if len(shape) < 2:
        raise DataError(f"{p}: the NIfTI array has shape {shape}; expected an image or volume.")
    limits.check_plane(shape[0], shape[1], f"{p}: the NIfTI plane", DataError)
    limits.check_decoded(limits.array_bytes(shape, itemsize), os.path.getsize(p),
                         f"{p}: the NIfTI array", DataError)
    try:
        data = formats.nifti_voxels(img, p)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{p}: not enough memory to read this NIfTI file.") from None
    except Exception as exc:
        raise DataError(f"{p}: cannot read this NIfTI file's voxels ({type(exc).__name__}: "
                        f"{exc}); it may be truncated.") from None
    return img, data


def nifti_spacing(img, ndim: int) -> tuple[list[float], list[str]]:
    """The voxel spacing of a NIfTI header for ``ndim`` axes (file order), 1 mm where the
    header's ``pixdim`` is not a positive number (NaN, 0, negative, infinite), with a note
    naming them."""
    zooms = [float(z) for z in img.header.get_zooms()[:ndim]]
    zooms += [1.0] * (ndim - len(zooms))
    bad = [i for i, z in enumerate(zooms) if not (math.isfinite(z) and z > 0)]
    if not bad:
        return zooms, []
    listed = ", ".join(f"pixdim[{i + 1}] = {zooms[i]:g}" for i in bad)
    for i in bad:
        zooms[i] = 1.0
    return zooms, [f"the header's voxel spacing is not a positive number ({listed}): 1 mm "
                   "assumed along those axes"]


def nifti_volume(img, data: np.ndarray, path: str | os.PathLike) -> Volume:
    """A :class:`Volume` of a NIfTI image already read (:func:`open_nifti`): axes reversed
    to (slices, rows, columns), scaled floats as float32, the header's affine kept. A header
    whose spacing or affine is not finite (NaN) opens with 1 mm voxels and the voxel grid as
    its affine, and a note that says so (an export of it is then placed on that grid, not in
    the patient's frame)."""
    data = np.asarray(data)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    axes = tuple(reversed(range(data.ndim)))
    zooms, notes = nifti_spacing(img, data.ndim)
    file_affine = np.asarray(img.affine, float)
    if not np.all(np.isfinite(file_affine)):
        file_affine = np.diag([*(list(zooms[:3]) + [1.0] * 3)[:3], 1.0])
        notes.append("the header's affine holds NaN or infinite values: the volume is shown "
                     "on its voxel grid, not placed in the patient's frame (fix the header's "
                     "qform/sform to align it)")
    # the spatial axes of data (the last three of a 4-D one) are the file's x, y, z reversed
    order = list(reversed(range(min(3, data.ndim)))) + list(range(data.ndim, 3))
    layer_affine = file_affine.copy()
    layer_affine[:3, :3] = file_affine[:3, order]
    volume = np.transpose(data, axes)
    units = "HU" if volume.ndim >= 2 and looks_like_ct(volume) else None
    return Volume(data=volume, spacing=tuple(reversed(zooms)), affine=layer_affine,
                  name=nifti_name(path), path=str(path), format="nifti",
                  file_shape=tuple(int(s) for s in data.shape), file_affine=file_affine,
                  axes=axes, units=units, notes=notes)


def read_nifti_volume(path: str | os.PathLike) -> Volume:
    """A NIfTI file as a :class:`Volume` (see :func:`nifti_volume`)."""
    img, data = open_nifti(path)
    return nifti_volume(img, data, path)
