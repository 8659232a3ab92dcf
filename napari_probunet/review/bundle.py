"""Hypothesis bundles: one case's sampled hypotheses, self-described, in one ``.probunet.zip``.

A bundle is what ``probunet sample`` prepares overnight and what the napari reader opens in
the morning, without a model run. It is a plain ZIP archive (readable by any language) of:

- ``manifest.json``: what the bundle is (``format``, ``format_version``), which case
  (``case_id``, ``name``, ``source``, ``slice_index``), which model (``model.sha256``,
  ``model.name``), how it was sampled (``seed``, ``n``), the class names, the versions and
  time, and for each array its ``shape`` and ``dtype``;
- one NumPy ``.npy`` file per array:

  ============== ================= =========================================================
  member         shape, dtype      meaning
  ============== ================= =========================================================
  image.npy      (H, W) or         the image exactly as given to the model (raw values)
                 (H, W, 3) float32
  hypotheses.npy (n, H, W) uint8   n sampled label maps (0 = background)
  z.npy          (n, d) float32    the latent each hypothesis was decoded from
  prior_mu.npy   (d,) float32      mean of the prior p(z | image)
  prior_sigma.npy (d,) float32     sigma of the prior
  uncertainty.npy (H, W) float32   per-pixel disagreement of the hypotheses
  graders.npy    (R, H, W) uint8   optional: the graders' masks of a multi-rater case
  ============== ================= =========================================================

Nothing in a bundle is ever unpickled (object arrays are refused), and the sizes the manifest
declares are checked against :mod:`napari_probunet.limits` before anything is read: each member
is then streamed into an array of exactly its declared size, so a member that inflates beyond
it is refused without the memory. Bundles are written atomically (a temporary file in the same
folder named after its process, fsync, then ``os.replace``), so a crash never leaves a
half-written bundle under the final name. The format is documented in ``docs/batch.md``.

Opened in napari (:mod:`napari_probunet._reader`), a bundle becomes the review widget's layers,
each carrying the bundle's provenance record (:meth:`Bundle.provenance`);
:func:`collect_layers` finds the layers of one bundle again among a viewer's layers.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import files, limits
from napari_probunet.errors import UserError
from napari_probunet.model.hypotheses import Hypotheses
from napari_probunet.review.provenance import Provenance

FORMAT = "napari-probunet-bundle"
FORMAT_VERSION = 1
SUFFIX = ".probunet.zip"
MANIFEST = "manifest.json"
#: arrays every bundle holds, in the order they are written
REQUIRED_ARRAYS = ("image", "hypotheses", "z", "prior_mu", "prior_sigma", "uncertainty")
OPTIONAL_ARRAYS = ("graders",)
#: manifest keys a reader relies on
REQUIRED_KEYS = ("format", "format_version", "case_id", "name", "n", "seed", "model",
                 "class_names", "arrays")
_NPY_HEADER_SLACK = 4096  # an .npy header is at most a few hundred bytes


class BundleError(UserError):
    """A file that is not a readable hypothesis bundle (the message says why and what to do)."""


@dataclass
class Bundle:
    """One case's hypotheses and what describes them (see the module docstring for shapes).

    ``hypotheses`` is the one record of sampled hypotheses
    (:class:`~napari_probunet.model.hypotheses.Hypotheses`): the label maps (``hypotheses.npy``),
    the latents they were decoded from (``z.npy``), their per-pixel disagreement
    (``uncertainty.npy``), the seed and the image signature; a bundle's region is its whole
    image, so the record's plane signature is the image signature. ``manifest`` describes the
    rest (case, source, model, class names, ...); the ``n``, ``seed`` and ``image_signature``
    it writes are the record's (:func:`write_bundle` fills in those it lacks and refuses a
    manifest that says otherwise).
    """

    manifest: dict[str, Any]
    image: np.ndarray
    hypotheses: Hypotheses
    prior_mu: np.ndarray
    prior_sigma: np.ndarray
    graders: np.ndarray | None = None
    path: Path | None = field(default=None, compare=False)

    @classmethod
    def from_arrays(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray],
                    path: Path | None = None) -> Bundle:
        """The bundle of ``arrays`` by member name (what :meth:`arrays` gives), its record's
        seed and image signature read from ``manifest``."""
        signature = manifest.get("image_signature")
        record = Hypotheses(labels=arrays["hypotheses"], z=arrays["z"],
                            seed=int(manifest["seed"]), uncertainty=arrays["uncertainty"],
                            image_signature=signature, plane_signature=signature)
        return cls(manifest=manifest, image=arrays["image"], hypotheses=record,
                   prior_mu=arrays["prior_mu"], prior_sigma=arrays["prior_sigma"],
                   graders=arrays.get("graders"), path=path)

    @property
    def name(self) -> str:
        """The case's file-safe name: the bundle is ``<name>.probunet.zip``."""
        return str(self.manifest["name"])

    @property
    def case_id(self) -> str:
        return str(self.manifest["case_id"])

    @property
    def seed(self) -> int:
        """The seed ``Session.sample(n, seed)`` was called with for this case."""
        return int(self.hypotheses.seed)

    @property
    def n(self) -> int:
        return self.hypotheses.n

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.manifest["class_names"]]

    @property
    def model_sha256(self) -> str | None:
        return self.manifest["model"].get("sha256")

    @property
    def model_name(self) -> str | None:
        return self.manifest["model"].get("name")

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by member name (without ``.npy``), in the order they are written;
        ``graders`` only when present (nor the uncertainty when the record lacks it, which
        :func:`check_arrays` then reports)."""
        record = self.hypotheses
        out = {"image": self.image, "hypotheses": record.labels, "z": record.z,
               "prior_mu": self.prior_mu, "prior_sigma": self.prior_sigma,
               "uncertainty": record.uncertainty, "graders": self.graders}
        return {k: a for k, a in out.items() if a is not None}

    def provenance(self) -> Provenance:
        """The record every layer of this bundle carries (the review widget's keys, see
        :mod:`napari_probunet.review.provenance`): the ROI is the whole image, so the image and
        plane signatures are the same; what only a bundle knows (``case_id``, ``source_path``,
        ``source_slice_index``, ``source_slice_axis``, ``bundle_path``,
        ``bundle_format_version``, ``model_path``, ``prior_mu``, ``prior_sigma``) is in its
        ``extra``. No ``kind``: each layer adds its own."""
        m = self.manifest
        h, w = self.hypotheses.labels.shape[1:]
        signature = self.hypotheses.image_signature
        return Provenance(
            image_layer=self.name,
            roi=[0, 0, int(h), int(w)],
            plane_shape=[int(h), int(w)],
            slice_index=[],
            image_signature=signature,
            plane_signature=signature,
            model_sha256=self.model_sha256,
            model_name=self.model_name,
            seed=self.seed,
            n_samples=self.n,
            class_names=self.class_names,
            extra={
                "case_id": self.case_id,
                "source_path": m.get("source"),
                "source_slice_index": m.get("slice_index"),
                "source_slice_axis": m.get("slice_axis"),
                "bundle_path": None if self.path is None else str(Path(self.path).absolute()),
                "bundle_format_version": m.get("format_version"),
                "model_path": m["model"].get("path"),
                "prior_mu": [float(v) for v in self.prior_mu],
                "prior_sigma": [float(v) for v in self.prior_sigma],
            },
        )


def bundle_path(out_dir: str | os.PathLike, name: str) -> Path:
    """Where the bundle of case ``name`` lives in ``out_dir``."""
    return Path(out_dir) / f"{name}{SUFFIX}"


def is_bundle_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(SUFFIX)


# ----------------------------------------------------------------------------- validation


def check_arrays(arrays: dict[str, np.ndarray], where: str = "bundle") -> None:
    """Raise :class:`BundleError` unless the arrays have the shapes and dtypes of a bundle."""
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
    if missing:
        raise BundleError(f"{where}: lacks the array(s) {', '.join(missing)}")
    image, hyp, z = arrays["image"], arrays["hypotheses"], arrays["z"]
    if hyp.ndim != 3 or hyp.dtype != np.uint8 or hyp.shape[0] < 1:
        raise BundleError(f"{where}: hypotheses must be (n, H, W) uint8, got {hyp.shape} "
                          f"{hyp.dtype}")
    n, h, w = hyp.shape
    if not (image.shape == (h, w) or image.shape == (h, w, 3)) or image.dtype.kind not in "biuf":
        raise BundleError(
            f"{where}: image must be ({h}, {w}) or ({h}, {w}, 3) numbers, got {image.shape} "
            f"{image.dtype}"
        )
    if z.ndim != 2 or z.shape[0] != n or z.dtype.kind != "f":
        raise BundleError(f"{where}: z must be ({n}, d) floats, got {z.shape} {z.dtype}")
    d = z.shape[1]
    for key in ("prior_mu", "prior_sigma"):
        a = arrays[key]
        if a.shape != (d,) or a.dtype.kind != "f":
            raise BundleError(f"{where}: {key} must be ({d},) floats, got {a.shape} {a.dtype}")
    unc = arrays["uncertainty"]
    if unc.shape != (h, w) or unc.dtype.kind != "f":
        raise BundleError(f"{where}: uncertainty must be ({h}, {w}) floats, got {unc.shape} "
                          f"{unc.dtype}")
    graders = arrays.get("graders")
    if graders is not None and (graders.ndim != 3 or graders.shape[1:] != (h, w)
                                or graders.dtype != np.uint8):
        raise BundleError(
            f"{where}: graders must be (R, {h}, {w}) uint8, got {graders.shape} {graders.dtype}"
        )


def check_manifest(manifest: Any, where: str = "bundle") -> dict[str, Any]:
    """Validate a parsed manifest (format name, version, required keys); return it."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(
            f"{where} is not a napari-probunet hypothesis bundle (its manifest.json does not say "
            f"format '{FORMAT}'); bundles are written by 'probunet sample'"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{where}: the manifest has no valid format_version ({version!r})")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{where} uses bundle format {version}, newer than this napari-probunet reads "
            f"({FORMAT_VERSION}); upgrade napari-probunet to open it"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{where}: the manifest lacks {', '.join(missing)}")
    if not isinstance(manifest["model"], dict) or not isinstance(manifest["arrays"], dict):
        raise BundleError(f"{where}: the manifest's 'model' and 'arrays' must be objects")

    def wrong(key: str, expected: str) -> BundleError:
        return BundleError(f"{where}: the manifest's {key} must be {expected}, not "
                           f"{str(manifest[key])[:80]!r}; the bundle is damaged: rerun "
                           "'probunet sample' to redo it")

    for key in ("n", "seed"):
        value = manifest[key]
        least = 1 if key == "n" else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise wrong(key, "a positive integer" if key == "n" else "an integer >= 0")
    for key in ("case_id", "name"):
        if not isinstance(manifest[key], str) or not manifest[key]:
            raise wrong(key, "a non-empty string")
    names = manifest["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise wrong("class_names", "a list of strings")
    for key in ("image_signature", "source"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise wrong(key, "a string or null")
    for key in ("slice_index", "slice_axis"):
        value = manifest.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise wrong(key, "an integer or null")
    for key in ("sha256", "name", "path"):
        value = manifest["model"].get(key)
        if value is not None and not isinstance(value, str):
            raise BundleError(f"{where}: the manifest's model.{key} must be a string or null")
    return manifest


# ----------------------------------------------------------------------------- writing


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _manifest_to_write(bundle: Bundle, arrays: dict[str, np.ndarray],
                       where: str) -> dict[str, Any]:
    """The ``manifest.json`` of ``bundle``: the format first, then its manifest's keys in their
    order (``n``, ``seed`` and ``image_signature`` from its record), then the arrays."""
    kept = {k: v for k, v in bundle.manifest.items() if k not in ("format", "format_version")}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **kept}
    record = bundle.hypotheses
    owned = (("n", record.n), ("seed", int(record.seed)),
             ("image_signature", record.image_signature))
    for key, value in owned:
        if key in manifest and manifest[key] != value:
            raise BundleError(f"{where}: the manifest says {key} {manifest[key]!r} but the "
                              f"hypotheses have {value!r}")
        if value is not None:
            manifest[key] = value  # in its place when the manifest has it
    manifest["arrays"] = {
        k: {"file": f"{k}.npy", "shape": list(a.shape), "dtype": a.dtype.str}
        for k, a in arrays.items()
    }
    return check_manifest(manifest, where=where)


def write_bundle(path: str | os.PathLike, bundle: Bundle, compresslevel: int = 1) -> Path:
    """Write ``bundle`` to ``path`` atomically; the manifest's ``arrays`` entry is filled in.

    The archive is first written to ``.<name>.~<host>-<pid>.<random>.tmp`` in the same folder,
    flushed to disk, then renamed over ``path``: readers see either the old file or the
    complete new one, and concurrent writers never share a temporary file.
    Members are deflated (``compresslevel`` 1: label maps shrink ~20x at little cost).
    """
    path = Path(path)
    arrays = bundle.arrays()
    check_arrays(arrays, where=str(path))
    manifest = _manifest_to_write(bundle, arrays, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = files.create_temporary(path)  # named after this process: concurrent runs never clash
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED,
                                 compresslevel=compresslevel) as zf:
                zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
                for key, array in arrays.items():
                    zf.writestr(f"{key}.npy", npy_bytes(array))
        files.commit_replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    bundle.manifest = manifest
    bundle.path = path
    return path


# ----------------------------------------------------------------------------- reading


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise BundleError(f"{path}: no such file")
    if path.is_dir():
        raise BundleError(f"{path} is a folder; a bundle is a single .probunet.zip file")
    try:
        return zipfile.ZipFile(path)
    except OSError as exc:  # permission denied, an I/O error: not the file's fault
        if exc.errno is None:
            raise BundleError(f"{path} is not a complete ZIP archive ({exc}); it may be "
                              "truncated: rerun 'probunet sample' on the same folder to redo it") \
                from None
        raise BundleError(f"cannot read {path} ({exc.strerror or exc})") from None
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise BundleError(
            f"{path} is not a complete ZIP archive ({exc}); it may be truncated: rerun "
            "'probunet sample' on the same folder to redo it"
        ) from None


def _manifest_of(zf: zipfile.ZipFile, where: str) -> dict[str, Any]:
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        raise BundleError(
            f"{where} is not a napari-probunet hypothesis bundle (no {MANIFEST} inside); bundles "
            "are written by 'probunet sample'"
        ) from None
    limits.check("MAX_HEADER_BYTES", info.file_size,
                 f"{where}: {MANIFEST} ({info.file_size} bytes)", BundleError)
    cap = limits.value("MAX_HEADER_BYTES")
    try:
        with zf.open(info) as f:
            raw = f.read(cap + 1)  # never more than the limit, whatever the member inflates to
        if len(raw) > cap:
            limits.check("MAX_HEADER_BYTES", len(raw), f"{where}: {MANIFEST}", BundleError)
        manifest = json.loads(raw.decode("utf-8"))
    except BundleError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, zipfile.BadZipFile,
            zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise BundleError(f"{where}: {MANIFEST} cannot be read ({exc})") from None
    return check_manifest(manifest, where)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The validated manifest of a bundle, without reading its arrays."""
    path = Path(path)
    with _open_zip(path) as zf:
        return _manifest_of(zf, str(path))


def _declared(spec: Any, key: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype the manifest declares for array ``key``."""
    try:
        shape, dtype = spec["shape"], np.dtype(spec["dtype"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: the manifest's entry for {key} is invalid ({exc})") from None
    if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise BundleError(f"{where}: the manifest declares {key} with shape {str(shape)[:80]}; "
                          "expected a list of sizes (non-negative integers)")
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.itemsize == 0:
        raise BundleError(f"{where}: {key} is declared as {dtype} {tuple(shape)}; expected plain "
                          "numbers")
    return tuple(shape), dtype


#: the limit on how many of each array's first axis a bundle may declare
_COUNT_LIMITS = {"hypotheses": "MAX_HYPOTHESES", "z": "MAX_HYPOTHESES", "graders": "MAX_RATERS"}


def _check_declared(declared: dict[str, tuple[tuple[int, ...], np.dtype]], file_bytes: int,
                    where: str) -> None:
    """Refuse a bundle whose declared arrays exceed the limits, before reading any of them."""
    for key, (shape, _) in declared.items():
        if key in ("image", "uncertainty") and len(shape) >= 2:
            limits.check_plane(shape[0], shape[1], f"{where}: the {key}", BundleError)
        elif key in ("hypotheses", "graders") and len(shape) == 3:
            limits.check_plane(shape[1], shape[2], f"{where}: the {key}", BundleError)
        if key in _COUNT_LIMITS and shape:  # each becomes a mask and, in napari, a layer
            limits.check(_COUNT_LIMITS[key], shape[0], f"{where}: the number of {key}",
                         BundleError)
    total = sum(limits.array_bytes(shape, dtype.itemsize) for shape, dtype in declared.values())
    limits.check_decoded(total, file_bytes, f"{where}: the arrays the manifest declares",
                         BundleError)


def _read_array(zf: zipfile.ZipFile, key: str, shape: tuple[int, ...], dtype: np.dtype,
                where: str) -> np.ndarray:
    member = f"{key}.npy"
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise BundleError(f"{where}: the manifest lists {key} but {member} is missing") from None
    expected = limits.array_bytes(shape, dtype.itemsize)
    if info.file_size > expected + _NPY_HEADER_SLACK:
        raise BundleError(
            f"{where}: {member} holds {info.file_size} bytes but the manifest declares {shape} "
            f"{dtype} ({expected} bytes)"
        )
    try:
        return files.read_npy_member(zf, member, where, shape, dtype, BundleError)
    except BundleError as exc:
        text = str(exc)
        if "the manifest says" in text or "damaged" not in text:
            raise
        raise BundleError(text.replace("the file is damaged", "the bundle is damaged: rerun "
                                       "'probunet sample' on the same folder to redo it")) \
            from None


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate a bundle (manifest, declared sizes against the limits, every array's
    size, shape and dtype, CRCs)."""
    path = Path(path)
    where = str(path)
    with _open_zip(path) as zf:
        manifest = _manifest_of(zf, where)
        declared = manifest["arrays"]
        unknown = sorted(set(declared) - set(REQUIRED_ARRAYS) - set(OPTIONAL_ARRAYS))
        known = [k for k in (*REQUIRED_ARRAYS, *OPTIONAL_ARRAYS) if k in declared]
        specs = {k: _declared(declared[k], k, where) for k in known}
        _check_declared(specs, _file_size(path), where)
        arrays = {k: _read_array(zf, k, *specs[k], where) for k in known}
    check_arrays(arrays, where)
    if manifest["n"] != arrays["hypotheses"].shape[0]:
        raise BundleError(
            f"{where}: the manifest says n={manifest['n']} but it holds "
            f"{arrays['hypotheses'].shape[0]} hypotheses"
        )
    if unknown:  # a later minor addition we do not understand: keep going, it is optional
        manifest = {**manifest, "unread_arrays": unknown}
    return Bundle.from_arrays(manifest, arrays, path)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def verify_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """Check that a bundle is complete and readable; return its manifest (else
    :class:`BundleError`).

    ``zipfile`` checks every member's CRC as it is read, so a bundle that passes holds exactly
    what was written.
    """
    return read_bundle(path).manifest


# ----------------------------------------------------------------------------- layers


#: metadata key that says which part of a bundle a layer shows (the review widget's key)
LAYER_KEY = "kind"


def hypothesis_layer_name(image_name: str, index: int, n: int) -> str:
    """``<image> hypothesis 03`` for index 2 (1-based, zero-padded to sort; the widget's names)."""
    return f"{image_name} hypothesis {index + 1:0{max(2, len(str(n)))}d}"


@dataclass
class BundleLayers:
    """The layers that came from one bundle, found by their metadata."""

    image: Any = None
    uncertainty: Any = None
    hypotheses: list[Any] = field(default_factory=list)  # ordered by index
    graders: list[Any] = field(default_factory=list)  # ordered by grader

    @property
    def metadata(self) -> dict[str, Any]:
        """The shared record (model sha256, image signature, seed, prior...)."""
        first = self.image or (self.hypotheses[0] if self.hypotheses else None)
        return {} if first is None else dict(first.metadata)


def collect_layers(layers: Iterable[Any], image_signature: str) -> BundleLayers:
    """Among ``layers`` (a napari layer list, or anything with ``.metadata``), those that a
    bundle of the image ``image_signature`` produced."""
    found = BundleLayers()
    for layer in layers:
        meta = getattr(layer, "metadata", None) or {}
        if meta.get("image_signature") != image_signature:
            continue
        kind = meta.get(LAYER_KEY)
        if kind == "image":
            found.image = layer
        elif kind == "uncertainty":
            found.uncertainty = layer
        elif kind == "hypothesis":
            found.hypotheses.append(layer)
        elif kind == "grader":
            found.graders.append(layer)
    found.hypotheses.sort(key=lambda la: la.metadata.get("index", 0))
    found.graders.sort(key=lambda la: la.metadata.get("grader", 0))
    return found
