"""The public "LIDC-IDRI slices" layout, read from its folder or from a ``.zip`` of it, and
kept decoded in a memory-mapped cache so that training never decodes PNGs twice.

Layout (one folder per patient, one per nodule, one PNG per slice and radiologist)::

    LIDC-IDRI-<patient>/nodule-<k>/images/slice-<i>.png     8-bit grey CT crop
    LIDC-IDRI-<patient>/nodule-<k>/mask-<r>/slice-<i>.png   radiologist r, values 0 / 255

Every case carries its ids: ``case_id`` ``LIDC-IDRI-0001/nodule-0/slice-3``, ``group_id``
the patient (``LIDC-IDRI-0001``), and ``ids`` ``{"patient", "nodule", "slice"}``; splits are
made by patient (``#part=test&by=patient``, the default for this layout).

The first read of a source decodes every PNG once into a cache folder (default
``~/.cache/napari-probunet/lidc-slices/<key>/``; ``$PROBUNET_CACHE_DIR`` moves it): ``images.npy``
``(N, H, W)`` uint8, ``masks.npy`` ``(N, R, H, ceil(W / 8))`` bit-packed, ``index.json`` with
the ids. ``<key>`` is a hash of the source's file list with sizes and modification times, so a
changed source is decoded again. Later reads memory-map the arrays (milliseconds).

Problems are named per file and skipped (``on_error="skip"``, one warning with the count and
the first reasons) or raised (``"raise"``): a slice missing a radiologist's mask, a mask of
another size than its image, an image of another size than the set's. Masks with grey levels
(a JPEG-like re-encoding) are thresholded at > 127 and counted in the warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from napari_probunet import limits
from napari_probunet.data.case import Case
from napari_probunet.data.formats import pil_open
from napari_probunet.errors import DataError, LimitError

#: bump when the cache files change meaning
CACHE_VERSION = 1
#: a slice PNG larger than this (bytes, uncompressed in a zip) is refused: 128x128 is ~10 kB
MAX_MEMBER_BYTES = 64 << 20
#: most digits of a slice or radiologist number in a file name (Python refuses > 4300)
_MAX_DIGITS = 9
#: ``.<key>.<pid>.tmp``: a cache folder being built by process ``pid``
_BUILDING_RE = re.compile(r"^\.(?P<key>[0-9a-f]+)\.(?P<pid>\d+)\.tmp$")

_PART_RE = re.compile(
    r"(?:^|/)(?P<patient>LIDC-IDRI-[^/]+)/(?P<nodule>nodule-\d+)/"
    r"(?P<kind>images|mask-(?P<rater>\d+))/slice-(?P<slice>\d+)\.png$",
    re.IGNORECASE,
)


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


# ----------------------------------------------------------------------------- the source


class _Source:
    """The files of one folder or zip, indexed by (patient, nodule, slice) -> {kind: name}."""

    def __init__(self, path: Path, within: Path | None = None):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.entries: dict[tuple[str, str, int], dict[str, str]] = {}
        self.refused: list[str] = []  # names of the layout with absurd numbers
        self.bytes = 0  # the files' (the zip's) size on disk
        self.fingerprint = hashlib.sha256(f"v{CACHE_VERSION}:{path.resolve()}".encode())
        if path.is_file():
            self.bytes = path.stat().st_size
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{path}: not a readable zip file ({exc}); give the folder of "
                                "the LIDC-IDRI slices or a .zip of it.") from None
            infos = sorted(self.zip.infolist(), key=lambda i: i.filename)
            # the whole set inflated: about 20x its zip size at most for these PNG slices
            limits.check_decoded(sum(i.file_size for i in infos), path.stat().st_size,
                                 f"{path}: the zip's members", DataError)
            for info in infos:
                if info.is_dir():
                    continue
                self._add(info.filename)
                self.fingerprint.update(f"{info.filename}:{info.file_size}:{info.CRC}\n".encode())
            self._sizes = {i.filename: i.file_size for i in infos}
        else:
            for dirpath, dirnames, filenames in os.walk(within or path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    if self._add(rel):
                        st = os.stat(full)
                        self.bytes += st.st_size
                        self.fingerprint.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode())

    def _add(self, name: str) -> bool:
        m = _PART_RE.search(name)
        if m is None:
            return False
        longest = max(len(m["slice"]), len(m["rater"] or ""), len(m["nodule"]) - len("nodule-"))
        if longest > _MAX_DIGITS:
            self.refused.append(f"{name[:200]}: a nodule, slice or radiologist number of "
                                f"{longest} digits is not this layout's (nodule-<k>, "
                                "slice-<i>.png, mask-0..3)")
            return False
        key = (m["patient"], m["nodule"].lower(), int(m["slice"]))
        kind = "image" if m["kind"].lower() == "images" else int(m["rater"])
        self.entries.setdefault(key, {})[kind] = name
        return True

    def _open(self, name: str, where: str):
        """Pillow's handle of one PNG (its header read), its plane checked against
        :data:`~napari_probunet.limits.MAX_IMAGE_PIXELS`."""
        if self.zip is not None:
            if self._sizes.get(name, 0) > MAX_MEMBER_BYTES:
                raise DataError(f"{where}: member of {self._sizes[name]} bytes is too "
                                "large for a slice PNG.")
            with self.zip.open(name) as fh:
                data = fh.read(MAX_MEMBER_BYTES + 1)
            handle = pil_open(io.BytesIO(data))
        else:
            if not stat.S_ISREG(os.stat(self.path / name).st_mode):  # a FIFO would block
                raise DataError(f"{where}: not a regular file (a pipe, a device or a "
                                "socket); put the PNG itself there.")
            handle = pil_open(self.path / name)
        try:
            limits.check_plane(handle.size[1], handle.size[0], f"{where}: the slice",
                               DataError)
        except DataError:
            handle.close()
            raise
        return handle

    def shape(self, name: str) -> tuple[int, int]:
        """``(rows, columns)`` that one PNG declares (its header only)."""
        where = f"{self.path}:{name}" if self.zip else str(self.path / name)
        try:
            with self._open(name, where) as handle:
                return handle.size[1], handle.size[0]
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{where}: cannot read this PNG ({type(exc).__name__}: {exc}).") \
                from None

    def read(self, name: str) -> np.ndarray:
        """One PNG as an array (grey, or whatever it holds), bounded in size."""
        where = f"{self.path}:{name}" if self.zip else str(self.path / name)
        try:
            with self._open(name, where) as handle:
                handle.load()
                if handle.mode not in ("L", "I", "I;16", "1", "P"):
                    handle = handle.convert("L")
                return np.asarray(handle)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{where}: cannot read this PNG ({type(exc).__name__}: "
                            f"{exc}).") from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def looks_like_lidc_slices(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (or zip) in the LIDC-IDRI-slices layout."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as z:
                return any(_PART_RE.search(n) for n in z.namelist()[:5000])
        except (zipfile.BadZipFile, OSError):
            return False
    if not path.is_dir():
        return False
    candidates = [path, *(p for p in path.iterdir() if p.is_dir())][:50]
    for folder in candidates:
        for patient in folder.glob("LIDC-IDRI-*"):
            if any(patient.glob("nodule-*/images")):
                return True
    return False


# ----------------------------------------------------------------------------- the cache


def cache_root() -> Path:
    """Where decoded sets are kept (``$PROBUNET_CACHE_DIR`` or ``~/.cache/napari-probunet``)."""
    base = os.environ.get("PROBUNET_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "napari-probunet"


def _raters(source: _Source) -> int:
    """How many radiologists' mask folders the slices have (``mask-0`` .. ``mask-<R-1>``),
    checked against :data:`~napari_probunet.limits.MAX_RATERS`."""
    n = max((max((k for k in e if k != "image"), default=-1) + 1
             for e in source.entries.values()), default=0)
    limits.check("MAX_RATERS", n, f"{source.path}: the radiologists' mask folders (mask-0 .. "
                 f"mask-{n - 1})", DataError)
    return n


def _plane(source: _Source, keys: list) -> tuple[int, int] | None:
    """``(rows, columns)`` the first readable slice image declares (its header)."""
    for key in keys:
        name = source.entries[key].get("image")
        if name is not None:
            try:
                return source.shape(name)
            except LimitError:
                raise
            except DataError:
                continue
    return None


def declared_bytes(source: _Source, per_pixel: float = 0.0) -> tuple[int, int, int, int]:
    """``(slices, rows, columns, radiologists)`` the source declares, refused before anything
    is decoded when the decoded set (uint8 images and bit-packed masks, plus ``per_pixel``
    bytes of each slice's pixel for what the caller makes of it) exceeds
    :data:`~napari_probunet.limits.MAX_DECODED_BYTES` beyond the source's own size."""
    keys = sorted(source.entries, key=lambda k: (_natural(k[0]), _natural(k[1]), k[2]))
    n_raters = _raters(source)
    rows, cols = _plane(source, keys) or (0, 0)
    per_slice = rows * cols * (1 + per_pixel) + n_raters * rows * -(-cols // 8)
    limits.check_decoded(int(len(keys) * per_slice), source.bytes,
                         f"{source.path}: {len(keys)} slices of {rows}x{cols} pixels with "
                         f"{n_raters} radiologists' masks", DataError)
    return len(keys), rows, cols, n_raters


def decode_slices(source: _Source, on_error: str) -> tuple[np.ndarray, np.ndarray, list, dict]:
    """Decode every complete slice: images (N,H,W) uint8, packed masks, ids, notes (the slow
    step the cache saves: a cached set is not decoded again). The arrays are allocated once,
    at the size the first slice declares, after :func:`declared_bytes` checked it."""
    keys = sorted(source.entries, key=lambda k: (_natural(k[0]), _natural(k[1]), k[2]))
    total, rows, cols, n_raters = declared_bytes(source)
    problems: list[str] = []
    thresholded = 0
    images = np.empty((total, rows, cols), np.uint8)
    masks = np.empty((total, n_raters, rows, -(-cols // 8)), np.uint8)
    ids: list = []
    shape = (rows, cols)

    def fail(message: str) -> None:
        if on_error == "raise":
            raise DataError(message)
        problems.append(message)

    for message in source.refused:
        fail(message)
    for key in keys:
        entry = source.entries[key]
        patient, nodule, slice_ = key
        where = f"{patient}/{nodule}/slice-{slice_}"
        if "image" not in entry:
            fail(f"{where}: radiologists' masks without the image images/slice-{slice_}.png.")
            continue
        missing = [r for r in range(n_raters) if r not in entry]
        if n_raters == 0 or missing:
            fail(f"{where}: no mask-{missing[0] if missing else 0}/slice-{slice_}.png; every "
                 f"slice needs all {max(n_raters, 1)} radiologists' masks (an empty mask is an "
                 "all-zero PNG).")
            continue
        try:
            image = source.read(entry["image"])
            if image.ndim != 2:
                raise DataError(f"{where}: the image has shape {image.shape}; expected grey.")
            if image.dtype != np.uint8:
                if image.max(initial=0) > 255 or image.min(initial=0) < 0:
                    raise DataError(f"{where}: the image holds values outside 0..255 "
                                    f"({image.dtype}); this layout is 8-bit.")
                image = image.astype(np.uint8)
            if image.shape != shape:
                raise DataError(f"{where}: the image is {image.shape[0]}x{image.shape[1]}, "
                                f"the set's slices are {shape[0]}x{shape[1]}.")
            rater_masks = []
            for r in range(n_raters):
                raw = source.read(entry[r])
                if raw.ndim != 2:
                    raise DataError(f"{where}: mask-{r} has shape {raw.shape}; expected grey.")
                if raw.shape != image.shape:
                    raise DataError(
                        f"{where}: mask-{r} is {raw.shape[0]}x{raw.shape[1]} but the image is "
                        f"{image.shape[0]}x{image.shape[1]}; every mask must have its image's "
                        "size.")
                values = np.unique(raw)
                if len(values) == 1 or (len(values) == 2 and values[0] == 0):
                    rater_masks.append(raw > 0)  # 0/255 (the layout), 0/1, or constant
                else:  # grey levels: a lossy re-encoding; threshold and say so
                    thresholded += 1
                    rater_masks.append(raw > 127)
            images[len(ids)] = image
            masks[len(ids)] = np.packbits(np.stack(rater_masks), axis=-1)
            ids.append([patient, nodule, slice_])
        except LimitError:  # a limit refuses the set, with the setting that raises it
            raise
        except DataError as exc:
            fail(str(exc))
    if not ids:
        if problems:
            raise DataError(f"{source.path}: none of the {len(keys)} slices could be read. "
                            f"First problems: {'; '.join(problems[:3])}")
        raise DataError(
            f"{source.path}: no slices in the LIDC-IDRI-slices layout found (expected "
            "LIDC-IDRI-<patient>/nodule-<k>/images/slice-<i>.png with mask-0..3/slice-<i>.png).")
    notes = {"skipped": len(problems), "problems": problems[:20],
             "thresholded_masks": thresholded, "n_raters": n_raters}
    return images[: len(ids)], masks[: len(ids)], ids, notes


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or not ours to judge
    return True


def remove_abandoned_builds(root: Path) -> list[str]:
    """Remove the hidden ``.<key>.<pid>.tmp`` folders under ``root`` whose building process
    is gone (a build killed part-way); return their names. Another process's live build is
    left alone."""
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        m = _BUILDING_RE.match(entry.name)
        if m and entry.is_dir(follow_symlinks=False) and int(m["pid"]) != os.getpid() \
                and not _alive(int(m["pid"])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _build_cache(source: _Source, folder: Path, on_error: str) -> None:
    images, masks, ids, notes = decode_slices(source, on_error)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    np.save(tmp / "images.npy", images)
    np.save(tmp / "masks.npy", masks)
    index = {"format": "napari-probunet lidc-slices cache", "version": CACHE_VERSION,
             "source": str(source.path.resolve()), "n": len(ids), "width": int(images.shape[2]),
             "ids": ids, **notes}
    (tmp / "index.json").write_text(json.dumps(index))
    try:
        os.rename(tmp, folder)
    except OSError:  # another process built it first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "index.json").is_file():
            raise


# ----------------------------------------------------------------------------- the data set


class LidcSlices(Sequence):
    """The slices of one LIDC-IDRI-slices source, memory-mapped; ``cases[i]`` is a :class:`Case`.

    ``group_ids`` (patients), ``case_ids`` and ``ids`` are available without loading a case;
    :meth:`subset` gives a view of some cases (what a split returns).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, ids: list, width: int,
                 source: str, index: np.ndarray | None = None, notes: dict | None = None):
        self._images, self._masks, self._ids, self._width = images, masks, ids, width
        self._index = np.arange(len(ids)) if index is None else np.asarray(index, np.int64)
        self.source = source
        self.notes = notes or {}

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        j = int(self._index[i])
        patient, nodule, slice_ = self._ids[j]
        masks = np.unpackbits(self._masks[j], axis=-1, count=self._width)
        return Case(image=self._images[j].astype(np.float32), masks=masks,
                    case_id=f"{patient}/{nodule}/slice-{slice_}", group_id=patient,
                    ids={"patient": patient, "nodule": f"{patient}/{nodule}",
                         "slice": str(slice_)},
                    source=f"{self.source}/{patient}/{nodule}/images/slice-{slice_}.png")

    def __iter__(self) -> Iterator[Case]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, indices) -> LidcSlices:
        """The cases at ``indices`` (positions in this set), sharing the memory map."""
        return LidcSlices(self._images, self._masks, self._ids, self._width, self.source,
                          self._index[np.asarray(list(indices), np.int64)], self.notes)

    @property
    def group_ids(self) -> list[str]:
        return [self._ids[j][0] for j in self._index]

    def ids_of(self, key: str) -> list[str]:
        """``patient``, ``nodule`` or ``slice`` ids of every case, in order (no loading)."""
        if key == "patient":
            return self.group_ids
        if key == "nodule":
            return [f"{self._ids[j][0]}/{self._ids[j][1]}" for j in self._index]
        return [f"{self._ids[j][0]}/{self._ids[j][1]}/slice-{self._ids[j][2]}" for j in self._index]

    @property
    def case_ids(self) -> list[str]:
        return self.ids_of("slice")

    @property
    def images(self) -> np.ndarray:
        """All images of this view, ``(n, H, W)`` uint8 (a copy for a subset)."""
        return self._images[self._index]

    @property
    def stored_images(self) -> np.ndarray:
        """The images of the whole set as stored, ``(N, H, W)`` uint8: memory-mapped when read
        from the cache (no copy; shared by every view)."""
        return self._images


def _cached(folder: Path, source: str) -> LidcSlices:
    """The set cached in ``folder``, memory-mapped; a damaged cache (unreadable, or an index
    that does not describe the arrays) is removed with a :class:`DataError` that says so."""
    try:
        index = json.loads((folder / "index.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="r")
        masks = np.load(folder / "masks.npy", mmap_mode="r")
        notes = {k: index[k] for k in ("skipped", "problems", "thresholded_masks", "n_raters")}
        ids, width = index["ids"], int(index["width"])
        if not (isinstance(ids, list) and len(ids) == len(images) == len(masks)
                and images.ndim == 3 and masks.ndim == 4 and width == images.shape[2]
                and all(isinstance(i, list) and len(i) == 3 for i in ids)
                and isinstance(notes["problems"], list)):
            raise ValueError("its index does not describe its arrays")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        what = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)
        raise DataError(f"{folder}: the decoded cache was damaged ({what}) and has been "
                        "removed; run the command again to rebuild it.") from None
    return LidcSlices(images, masks, ids, width, source, notes=notes)


def read_lidc_nodule_stack(folder: str | os.PathLike,
                           on_error: str = "skip") -> tuple[np.ndarray, np.ndarray]:
    """One nodule folder (``.../LIDC-IDRI-<patient>/nodule-<k>``) as napari shows it: the
    images ``(slices, H, W)`` float32 and the radiologists' masks ``(R, slices, H, W)`` uint8,
    in slice order, decoded directly (no cache). Their size (with the decoded set) is checked
    against :data:`~napari_probunet.limits.MAX_DECODED_BYTES` from the PNG headers, before
    any slice is decoded."""
    folder = Path(folder)
    source = _Source(folder.parent.parent, within=folder)
    if not source.entries:
        raise DataError(f"{folder}: not a nodule folder of the LIDC-IDRI slices (expected "
                        "images/slice-<i>.png and mask-0..3/slice-<i>.png inside).")
    n_raters = _raters(source)
    declared_bytes(source, per_pixel=4 + n_raters)  # float32 images and unpacked masks
    images, packed, ids, _ = decode_slices(source, on_error)
    order = np.argsort([int(i[2]) for i in ids], kind="stable")
    width = images.shape[2]
    stack = images[order].astype(np.float32)
    masks = np.empty((packed.shape[1], len(order), *images.shape[1:]), np.uint8)
    for r in range(packed.shape[1]):
        masks[r] = np.unpackbits(packed[order, r], axis=-1, count=width)
    return stack, masks


def read_lidc_nodule(folder: str | os.PathLike, on_error: str = "skip") -> list[Case]:
    """The slices of one nodule folder (``.../LIDC-IDRI-<patient>/nodule-<k>``), in slice
    order, decoded directly (no cache): what napari's case reader opens."""
    folder = Path(folder)
    root = folder.parent.parent
    source = _Source(root, within=folder)
    if not source.entries:
        raise DataError(f"{folder}: not a nodule folder of the LIDC-IDRI slices (expected "
                        "images/slice-<i>.png and mask-0..3/slice-<i>.png inside).")
    images, masks, ids, _ = decode_slices(source, on_error)
    data = LidcSlices(images, masks, ids, images.shape[2], str(root))
    return sorted(data, key=lambda c: int(c.ids["slice"]))


def read_lidc_slices(path: str | os.PathLike, on_error: str = "skip",
                     cache: bool = True) -> LidcSlices:
    """Read a LIDC-IDRI-slices folder or ``.zip`` (see the module docstring).

    ``cache=False`` decodes into memory without touching the cache folder.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder.")
    source = _Source(path)
    try:
        if not source.entries:
            what = "zip" if source.zip else "folder"
            raise DataError(
                f"{path}: this {what} is not in the LIDC-IDRI-slices layout (no "
                "LIDC-IDRI-<patient>/nodule-<k>/images/slice-<i>.png found); see docs/lidc.md.")
        if not cache:
            images, masks, ids, notes = decode_slices(source, on_error)
            data = LidcSlices(images, masks, ids, images.shape[2], str(path), notes=notes)
        else:
            folder = cache_root() / "lidc-slices" / source.fingerprint.hexdigest()[:24]
            remove_abandoned_builds(folder.parent)
            if not (folder / "index.json").is_file():
                _build_cache(source, folder, on_error)
            data = _cached(folder, str(path))
            notes = data.notes
            if on_error == "raise" and notes["skipped"]:
                raise DataError(notes["problems"][0])
    finally:
        source.close()
    if data.notes.get("skipped"):
        warnings.warn(f"{path}: skipped {data.notes['skipped']} slices that could not be read. "
                      f"First problems: {'; '.join(data.notes['problems'][:3])}", stacklevel=2)
    if data.notes.get("thresholded_masks"):
        warnings.warn(f"{path}: {data.notes['thresholded_masks']} masks held grey levels, not only "
                      "0/255; they were thresholded at > 127.", stacklevel=2)
    return data
