"""The provenance record: where a hypothesis, an uncertainty map or a correction came from.

Every layer the review puts into napari (and every layer a hypothesis bundle opens as) carries
this record in its ``metadata``; the exporter (the Export… button and napari's File → Save)
writes it into the JSON record beside the mask, and the autosave keeps it with the crop. It is
one typed object here, :class:`Provenance`, and a plain dict on the layer and on disk:
:meth:`Provenance.to_metadata` and :meth:`Provenance.from_metadata` convert between the two
without changing a key or a value, so files written by earlier versions read back as before.

The keys of the metadata dict
-----------------------------
Always present (``None`` when unknown):

================= ==========================================================================
``image_layer``   name of the image layer reviewed
``roi``           ``[row, col, height, width]`` of the region the model saw, plane pixels
``plane_shape``   ``[H, W]`` of the whole 2D image plane
``slice_index``   the plane's position in the leading axes (``[]`` for a 2D image)
``image_signature`` signature of the ROI pixels the model saw
``plane_signature`` signature of the whole plane (the autosave's key)
``model_sha256``  sha256 of the model file; ``model_name`` its file name
``seed``          the seed ``Session.sample(n, seed)`` was called with; ``n_samples`` its n
================= ==========================================================================

Present when they apply: ``kind`` (``"hypothesis"``, ``"uncertainty"``, ``"correction"``,
``"image"``, ``"grader"``); ``index`` (0-based) and ``z`` (the latent, a list of floats) of a
hypothesis or of the hypothesis a correction started from; for a correction also ``source``
(``"hypothesis"`` or ``"explorer"``), ``class_names``, ``scale``, ``translate`` (the image
layer's, last two axes) and ``source_labels`` (the ``(h, w)`` map it started from, an array,
never written to JSON); for a run over all slices ``slices`` (``"all"``), ``stack_axis``,
``slices_done`` and ``z_per_slice``; for a correction of an image opened from a scan (a NIfTI
volume, a DICOM series) ``volume``, the image layer's ``metadata["source"]`` (the file's shape
and affine, the axes: :mod:`napari_probunet.review.volume_export` places the export there).
Keys this module does not know (a bundle's ``case_id``, ``bundle_path``, ``prior_mu``..., an
autosave's ``saved``) travel in :attr:`Provenance.extra`.

Also here: :func:`versions` (the packages that made a record), :func:`now_iso` and
:func:`jsonable`, shared by the export, the autosave and ``probunet sample``.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import metadata as _metadata
from typing import Any

import numpy as np

#: keys every record carries, ``None`` when unknown
CORE_KEYS = ("image_layer", "roi", "plane_shape", "slice_index", "image_signature",
             "plane_signature", "model_sha256", "model_name", "seed", "n_samples")
#: keys a layer of this kind always carries (``None`` when they do not apply)
KIND_KEYS = {
    "hypothesis": ("index", "z"),
    "correction": ("source", "index", "z", "class_names", "scale", "translate",
                   "source_labels"),
}
#: keys present when not ``None``
OPTIONAL_KEYS = ("source", "index", "z", "class_names", "scale", "translate", "source_labels",
                 "volume", "image_file", "region_pixels")
#: keys whose values are arrays, kept on the layer but never written to JSON
ARRAY_KEYS = ("source_labels", "region_pixels")
RECORD_VERSION = 1
RECORD_KIND = "napari-probunet correction"
#: keys of a run over all slices, present together
STACK_KEYS = ("slices", "stack_axis", "slices_done", "z_per_slice")
#: the order of a correction's keys, as the review widget has always written them: an
#: autosave keeps the record as JSON text, so the order is part of the file
CORRECTION_ORDER = ("kind", "source", "index", "z", "seed", "n_samples", "roi", "image_layer",
                    "slice_index", "plane_shape", "image_signature", "plane_signature",
                    "model_sha256", "model_name", "class_names", "scale", "translate",
                    "source_labels")


def _as_list(value: Any) -> Any:
    """Tuples and arrays become lists (as the widgets have always stored ``list(roi)``,
    ``list(plane.shape)``...); anything else as is."""
    return list(value) if isinstance(value, (tuple, list, np.ndarray)) else value


@dataclass(frozen=True)
class Provenance:
    """Where a layer's labels came from (see the module docstring for each field).

    Build one with keywords, derive others with :func:`dataclasses.replace` (or
    :meth:`with_`), and put :meth:`to_metadata` into a layer's ``metadata``; read a layer's
    record back with :meth:`from_metadata`.
    """

    kind: str | None = None
    image_layer: str | None = None
    roi: Any = None
    plane_shape: Any = None
    slice_index: Any = None
    image_signature: str | None = None
    plane_signature: str | None = None
    model_sha256: str | None = None
    model_name: str | None = None
    seed: int | None = None
    n_samples: int | None = None
    source: str | None = None
    index: int | None = None
    z: Any = None
    class_names: Any = None
    scale: Any = None
    translate: Any = None
    source_labels: np.ndarray | None = field(default=None, compare=False, repr=False)
    slices: str | None = None
    stack_axis: int | None = None
    slices_done: Any = None
    z_per_slice: Any = None
    volume: dict[str, Any] | None = None
    #: the file the reviewed image was opened from (its layer's source), when known
    image_file: str | None = None
    #: the ROI pixels the model saw, ``(h, w)`` or ``(h, w, 3)``, as in the image layer (an
    #: array, never written to JSON: the export writes it as ``<mask>.image.npy``)
    region_pixels: np.ndarray | None = field(default=None, compare=False, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ conversion
    def to_metadata(self) -> dict[str, Any]:
        """The record as a layer's metadata dict (the keys and values the widgets, the
        reader, the exporter and the autosave have always used; a correction's keys in
        :data:`CORRECTION_ORDER`, the order its autosave has always written)."""
        out: dict[str, Any] = {}
        if self.kind is not None:
            out["kind"] = self.kind
        for key in CORE_KEYS:
            out[key] = _as_list(getattr(self, key))
        required = KIND_KEYS.get(self.kind or "", ())
        for key in OPTIONAL_KEYS:
            value = getattr(self, key)
            if key in required or value is not None:
                out[key] = value if key in ARRAY_KEYS else _as_list(value)
        if self.slices is not None:
            for key in STACK_KEYS:
                out[key] = getattr(self, key)
        if self.kind == "correction":
            first = {k: out.pop(k) for k in CORRECTION_ORDER if k in out}
            out = {**first, **out}
        out.update(self.extra)
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> Provenance:
        """The record a layer's metadata (or an autosave's info, or any older dict) holds.

        Missing keys are ``None``; keys this class does not know are kept in :attr:`extra`.
        Values are taken as they are (no check): readers judge what they need.
        """
        meta = dict(metadata or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: meta.pop(k) for k in list(meta) if k in known}
        return cls(**values, extra=meta)

    def recovery_info(self) -> dict[str, Any]:
        """What an autosave keeps beside the crop: the metadata without ``source_labels``
        (saved as an array of its own)."""
        info = self.to_metadata()
        for key in ARRAY_KEYS:
            info.pop(key, None)
        return info

    @classmethod
    def from_recovery(cls, info: Mapping[str, Any], image_layer: str,
                      source_labels: np.ndarray) -> Provenance:
        """The correction an autosave's ``info`` describes, on the image layer now called
        ``image_layer``, starting from ``source_labels``; the autosave's time is dropped."""
        prov = cls.from_metadata(info)
        extra = {k: v for k, v in prov.extra.items() if k != "saved"}
        return replace(prov, kind="correction", image_layer=image_layer,
                       source_labels=source_labels, extra=extra)

    def with_(self, **changes: Any) -> Provenance:
        """A copy with ``changes`` (:func:`dataclasses.replace`)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ named accessors
    @property
    def is_correction(self) -> bool:
        return self.kind == "correction"

    @property
    def is_hypothesis(self) -> bool:
        return self.kind == "hypothesis"

    @property
    def choice_source(self) -> str:
        """What a correction started from, ``"hypothesis"`` or ``"explorer"``; a hypothesis
        layer (which has no ``source``) is its own choice."""
        return self.source if self.source is not None else "hypothesis"

    @property
    def from_hypothesis(self) -> bool:
        """Whether the labels are (or started from) a sampled hypothesis."""
        return self.choice_source == "hypothesis"

    @property
    def hypothesis_number(self) -> int | None:
        """The 1-based number of the hypothesis (its layer's name: ``hypothesis 03`` is 3)."""
        return None if self.index is None else int(self.index) + 1

    @property
    def region(self) -> tuple[int, int, int, int] | None:
        """The ROI as ``(row, col, height, width)`` integers, or ``None`` if it is not four
        numbers (an old or damaged record)."""
        roi = self.roi
        if not isinstance(roi, (list, tuple)) or len(roi) != 4:
            return None
        try:
            return tuple(int(v) for v in roi)  # type: ignore[return-value]
        except (TypeError, ValueError):
            return None

    @property
    def signature(self) -> str | None:
        """The autosave's key: the plane's signature, else (a bundle, whose ROI is the
        plane) the image's."""
        return self.plane_signature or self.image_signature

    def pixels_edited(self, labels: np.ndarray) -> int | None:
        """How many pixels of ``labels`` differ from :attr:`source_labels` (``None`` when
        there is nothing to compare with)."""
        return pixels_changed(labels, self.source_labels)

    # ------------------------------------------------------------------ the export's record
    def correction_record(self, correction: np.ndarray, *,
                          volume: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON-able record of an export of ``correction`` (the ``(h, w)`` ROI crop, or a
        layer's whole array) that this provenance describes.

        ``pixels_changed_by_hand`` counts where ``correction`` differs from
        :attr:`source_labels` (a correction's; ``None`` otherwise); ``choice.index`` is 0-based
        (``session.sample(n, seed).labels[index]``) and ``choice.hypothesis`` 1-based (the
        layer name's number). ``image.file`` is the file the image was opened from and
        ``image.pixels`` identifies the ROI pixels the model saw (:func:`pixels_identity`;
        ``None`` when they are not known). ``volume``, the image's scan record (its layer's
        ``metadata["source"]``), adds ``"volume": {"source": ...}``.
        """
        roi = self.region
        choice: dict[str, Any] = {"source": self.choice_source if self.kind else self.source}
        if choice["source"] == "hypothesis":
            index = None if self.index is None else int(self.index)
            choice.update({"hypothesis": None if index is None else index + 1, "index": index,
                           "seed": self.seed, "n_samples": self.n_samples})
        choice["z"] = None if self.z is None else [float(v) for v in np.asarray(self.z).ravel()]
        if self.extra.get("refined_by_clicks"):  # review/refine.py: the clicks that steered it
            choice["refined_by_clicks"] = self.extra["refined_by_clicks"]
        record = jsonable({
            "record_version": RECORD_VERSION,
            "kind": RECORD_KIND,
            "image": {
                "layer": self.image_layer,
                "signature": self.image_signature,  # of the ROI pixels the model saw
                "plane_signature": self.plane_signature,  # of the whole 2D plane
                "plane_shape": (None if self.plane_shape is None
                                else [int(s) for s in self.plane_shape]),
                "slice_index": [int(i) for i in (self.slice_index or ())],
                "scale": self.scale,
                "translate": self.translate,
                "file": self.image_file,
                "pixels": pixels_identity(self.region_pixels),
            },
            "roi": None if roi is None else dict(zip(("row", "col", "height", "width"), roi)),
            "model": {"file": self.model_name, "sha256": self.model_sha256},
            "choice": choice,
            "pixels_changed_by_hand": pixels_changed(
                correction, self.source_labels if self.is_correction else None),
            "labels": ({str(i): n for i, n in enumerate(self.class_names)}
                       if self.class_names else None),
            "foreground_pixels": int(np.count_nonzero(np.asarray(correction))),
            "versions": versions(),
            "created": now_iso(),
        })
        if volume is not None:
            record["volume"] = {"source": jsonable(volume)}
        return record


# ----------------------------------------------------------------------------- helpers


def pixels_sha256(pixels: np.ndarray) -> str:
    """The standard sha256 (hex) of an image's pixel bytes: the array in its own dtype and
    byte order, C (row-major) order, no header: ``hashlib.sha256(np.ascontiguousarray(a)
    .tobytes())``. The same bytes as an ``.npy`` file's data (as written by NumPy)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def pixels_identity(pixels: np.ndarray | None) -> dict[str, Any] | None:
    """``{"sha256", "dtype", "shape", "order": "C"}`` of the pixels (``dtype`` as NumPy writes
    it, with its byte order, e.g. ``"<f4"``), or ``None`` if there are none."""
    if pixels is None:
        return None
    a = np.asarray(pixels)
    return {"sha256": pixels_sha256(a), "dtype": a.dtype.str, "shape": list(a.shape),
            "order": "C"}


def pixels_changed(correction: np.ndarray, source_labels: np.ndarray | None) -> int | None:
    """How many pixels differ between the correction and the map it started from."""
    if source_labels is None:
        return None
    a, b = np.asarray(correction), np.asarray(source_labels)
    if a.shape != b.shape:
        return None
    return int(np.count_nonzero(a != b))


def _package_version(dist: str) -> str | None:
    try:
        return _metadata.version(dist)
    except _metadata.PackageNotFoundError:
        return None


def versions(*, napari: bool = True, python: bool = False) -> dict[str, str | None]:
    """Versions of the packages that made a record, without importing torch or napari.

    ``{"napari_probunet", "torch", "napari", "numpy"}`` by default (a correction's record);
    ``napari=False, python=True`` gives ``{"napari_probunet", "torch", "numpy", "python"}``
    (a ``probunet sample`` summary). A package that is not installed is ``None``.
    """
    from napari_probunet import __version__

    out: dict[str, str | None] = {"napari_probunet": __version__,
                                  "torch": _package_version("torch")}
    if napari:
        out["napari"] = _package_version("napari")
    out["numpy"] = np.__version__
    if python:
        out["python"] = platform.python_version()
    return out


def now_iso() -> str:
    """The current local time, ISO 8601 with its UTC offset, to the second."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """``value`` with NumPy arrays and scalars (also inside lists and dicts) as plain Python,
    ready for :func:`json.dumps`."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
