"""A nodule in a whole scan: ``n`` hypotheses that are each one nodule in 3D.

The model sees one axial slice at a time (a crop of its input size, centred on the click and
kept inside the slice, the same crop on every slice). Two rules make a hypothesis a nodule
rather than ``n`` unrelated slices (``docs/scans.md``, "What 3D consistency means"):

1. **One draw per hypothesis, shared by the nodule's slices** (``coupling="shared"``).
   Hypothesis ``i`` draws its latent noise once: the normal ``eps_i`` and the component choice
   ``u_i`` of :meth:`Session.draw_latents <napari_probunet.session.Session.draw_latents>` for
   the nodule's seed. On slice ``k`` it decodes the same quantile of that slice's prior,
   ``z_ik = mu_k[c] + sigma_k[c] * eps_i`` with ``c`` the component whose cumulative weight holds
   ``u_i``. The hypothesis keeps its intent (which mode, and where in it) from slice to slice;
   where the mixture's "no nodule" weight grows toward the nodule's ends, each hypothesis ends
   where its own ``u_i`` falls into "no nodule", so the extents of the hypotheses are nested.
   This is exactly what sampling every slice with the same seed gives: one rule for the review
   (*All slices*), ``probunet sample`` on a volume and the nodule tool
   (:func:`~napari_probunet.review.seeds.stack_seed`).
   ``coupling="independent"`` draws each slice on its own (``seed_for_index(seed, slice)``):
   the behaviour before this module, kept as the baseline the evaluation compares with.
2. **One connected piece** (``connect=True``). On the clicked slice a hypothesis keeps the
   piece under the click (or the nearest piece within ``snap_mm``); on each next slice, the
   pieces that overlap what it kept on the slice before (6-connectivity between slices). A
   hypothesis with nothing left has ended; the walk goes outward from the click in both
   directions and stops on a side when every hypothesis has ended there, or at
   ``max_extent_mm`` from the click (reported). So the nodule's extent is found from the scan,
   a vessel that only touches the nodule's crop on another slice is not part of it, and a
   hypothesis cannot have a gap along z.

The job is a generator for the GUI's worker (:func:`nodule_job`), and :func:`sample_nodule`
runs it to the end for the command line, the evaluation and scripts: one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_probunet.data.measure import (
    check_spacing,
    longest_axial_diameter_mm,
    nodule_volume_mm3,
)
from napari_probunet.errors import InputError
from napari_probunet.review.jobs import decode_region, run_job
from napari_probunet.review.seeds import COUPLINGS, stack_seed


@dataclass(frozen=True)
class NoduleRequest:
    """One click on a nodule of a scan, and how to sample it."""
    volume: np.ndarray = field(repr=False)  # (Z, Y, X) intensities (HU for CT)
    spacing: tuple[float, float, float]  # mm per voxel (dz, dy, dx)
    click: tuple[int, int, int]  # (slice, row, column) of the click
    n: int = 16
    seed: int = 0
    crop: int | None = None  # side of the square crop per slice; None: the model's input size
    coupling: str = "shared"  # "shared" (one draw per hypothesis) or "independent"
    connect: bool = True  # keep the piece reached from the click (and find the extent)
    max_extent_mm: float = 40.0  # at most this far from the click, above and below
    snap_mm: float = 5.0  # a click off every piece takes the nearest piece this close
    slices: tuple[int, int] | None = None  # (first, last + 1): sample exactly these slices
    #: refined by clicks (:func:`napari_probunet.review.refine.steer_nodule`): hypothesis i is
    #: draw picks[i] of the seed's shared draws; None: draws 0..n-1
    picks: tuple[int, ...] | None = None


@dataclass
class NoduleHypotheses:
    """``n`` 3D hypotheses of one nodule, on slices ``first .. first + S - 1`` of the scan."""
    labels: np.ndarray  # (n, S, h, w) uint8 class labels, within `roi` of each slice
    first: int  # scan slice of labels[:, 0]
    roi: tuple[int, int, int, int]  # (row0, col0, h, w) of the crop in every slice
    spacing: tuple[float, float, float]
    click: tuple[int, int, int]
    seed: int
    coupling: str
    latents: np.ndarray  # (S, n, d) float32 latents per slice; NaN on a blank slice
    reached_limit: bool = False  # some hypothesis was still going at max_extent_mm
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def slices(self) -> range:
        """The scan slices the hypotheses cover."""
        return range(self.first, self.first + self.labels.shape[1])

    @property
    def volumes_mm3(self) -> np.ndarray:
        """``(n,)`` volume of each hypothesis in mm^3."""
        return np.array([nodule_volume_mm3(m, self.spacing) for m in self.labels])

    @property
    def diameters_mm(self) -> np.ndarray:
        """``(n,)`` longest axial diameter of each hypothesis in mm."""
        return np.array([longest_axial_diameter_mm(m, self.spacing) for m in self.labels])

    def extent(self, i: int) -> tuple[int, int] | None:
        """``(first, last)`` scan slices where hypothesis ``i`` is not empty, or None."""
        filled = np.flatnonzero(self.labels[i].reshape(self.labels.shape[1], -1).any(axis=1))
        if not len(filled):
            return None
        return self.first + int(filled[0]), self.first + int(filled[-1])

    def full_mask(self, i: int, shape: tuple[int, int, int]) -> np.ndarray:
        """Hypothesis ``i`` as a ``shape`` (the scan's) uint8 label volume."""
        out = np.zeros(shape, np.uint8)
        r0, c0, h, w = self.roi
        out[self.first:self.first + self.labels.shape[1], r0:r0 + h, c0:c0 + w] = self.labels[i]
        return out

    def volume_summary(self) -> dict[str, float]:
        """Median and 5-95% range of the hypotheses' volumes (mm^3), and the share that are
        empty ("no nodule")."""
        v = self.volumes_mm3
        p5, p50, p95 = np.percentile(v, [5, 50, 95])
        return {"median": float(p50), "p5": float(p5), "p95": float(p95),
                "empty_share": float(np.mean(v == 0))}


def sample_slice(session, image: np.ndarray, n: int, seed: int, k: int | None = None,
                 coupling: str = "shared"):
    """Slice ``k`` of a stack whose seed is ``seed`` (or a 2D image, ``k=None``): encode it and
    draw ``n`` hypotheses by
    :func:`~napari_probunet.review.seeds.stack_seed`, the one rule that ``probunet sample``, the
    review and the nodule tool share. Returns the session's
    :class:`~napari_probunet.session.Hypotheses`."""
    session.set_image(image)
    return session.sample(int(n), seed=seed if k is None else stack_seed(seed, k, coupling))


def crop_box(shape: tuple[int, int], centre: tuple[int, int], size: int) -> tuple[int, ...]:
    """``(row0, col0, h, w)`` of a ``size`` square centred on ``centre``, kept inside ``shape``
    (smaller where the slice is)."""
    h, w = min(size, shape[0]), min(size, shape[1])
    r0 = int(np.clip(centre[0] - h // 2, 0, shape[0] - h))
    c0 = int(np.clip(centre[1] - w // 2, 0, shape[1] - w))
    return r0, c0, h, w


def check_request(request: NoduleRequest, input_size: int) -> tuple[int, int, int, int]:
    """Refuse a request the scan cannot answer; return the crop ``(row0, col0, h, w)``."""
    vol = request.volume
    if np.ndim(vol) != 3:
        raise InputError(f"a nodule is found in a 3D scan (slices, rows, columns); this image "
                         f"has shape {np.shape(vol)}")
    check_spacing(request.spacing)
    if request.coupling not in COUPLINGS:
        raise InputError(f"coupling must be one of {', '.join(COUPLINGS)}, not "
                         f"{request.coupling!r}")
    if int(request.n) < 1:
        raise InputError(f"the number of hypotheses must be at least 1, got {request.n}")
    click = tuple(int(v) for v in request.click)
    if len(click) != 3 or not all(0 <= c < s for c, s in zip(click, vol.shape)):
        raise InputError(f"the click {request.click} is outside the scan (shape {vol.shape}); "
                         "click on the nodule")
    if request.slices is not None:
        a, b = (int(v) for v in request.slices)
        if not (0 <= a <= click[0] < b <= vol.shape[0]):
            raise InputError(f"the slices {a}..{b - 1} must hold the clicked slice {click[0]} "
                             f"and lie in the scan's 0..{vol.shape[0] - 1}")
    if request.picks is not None and (len(request.picks) != int(request.n)
                                      or min(request.picks) < 0
                                      or request.coupling != "shared"):
        raise InputError(f"picks must be {request.n} draw numbers (>= 0) of shared draws, one "
                         f"per hypothesis; got {len(request.picks)} ({request.coupling})")
    size = int(request.crop or input_size)
    if size < 8:
        raise InputError(f"the crop of {size} pixels is too small; use at least 8")
    return crop_box(vol.shape[1:], click[1:], size)


def _pieces(labels2d: np.ndarray):
    from scipy import ndimage  # lazy: scipy.ndimage takes ~0.25 s to import

    return ndimage.label(labels2d > 0)


def keep_clicked(labels: np.ndarray, at: tuple[int, int], snap_px: tuple[float, float],
                 ) -> np.ndarray:
    """``labels`` ``(n, h, w)`` with each hypothesis reduced to the piece under ``at`` (row,
    column in the crop), or the nearest piece within ``snap_px`` (rows, columns of the snap
    distance); empty where none is that close."""
    out = np.zeros_like(labels)
    for i, lab in enumerate(labels):
        pieces, count = _pieces(lab)
        if not count:
            continue
        hit = pieces[at]
        if not hit:
            rr, cc = np.nonzero(pieces)
            d2 = ((rr - at[0]) / snap_px[0]) ** 2 + ((cc - at[1]) / snap_px[1]) ** 2
            j = int(np.argmin(d2))
            hit = pieces[rr[j], cc[j]] if d2[j] <= 1.0 else 0
        if hit:
            out[i] = np.where(pieces == hit, lab, 0)
    return out


def keep_touching(labels: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``labels`` ``(n, h, w)`` with each hypothesis reduced to the pieces that overlap its own
    mask on the previous slice (``previous``, same shape)."""
    out = np.zeros_like(labels)
    for i, lab in enumerate(labels):
        if not previous[i].any():
            continue
        pieces, count = _pieces(lab)
        if not count:
            continue
        touching = np.unique(pieces[(previous[i] > 0) & (pieces > 0)])
        if len(touching):
            out[i] = np.where(np.isin(pieces, touching), lab, 0)
    return out


def _sample_slice(session, request: NoduleRequest, k: int, roi, labels_out, latents_out):
    """Decode slice ``k``'s crop into ``labels_out`` ``(n, h, w)`` (zeros for a blank slice) and
    its latents into ``latents_out`` ``(n, d)`` (NaN for a blank slice); a job part."""
    r0, c0, h, w = roi
    region = np.asarray(request.volume[k, r0:r0 + h, c0:c0 + w])
    if not np.isfinite(region).all():
        raise InputError(f"slice {k} of the scan has NaN or infinite values in the nodule's "
                         "region; the model cannot segment them")
    if region.min() == region.max():  # outside the body, or padding: nothing to segment
        labels_out[:] = 0
        latents_out[:] = np.nan
        return
    labels, z, _ = yield from decode_region(
        session, region, int(request.n), stack_seed(request.seed, k, request.coupling),
        request.picks)
    labels_out[:] = labels
    latents_out[:] = z


def clicked_count(labels: np.ndarray, at: tuple[int, int], snap_px) -> int:
    """How many hypotheses of ``labels`` ``(n, h, w)`` have a piece under (or near) ``at``."""
    return int(keep_clicked(labels, at, snap_px).reshape(len(labels), -1).any(axis=1).sum())


def nodule_job(session, request: NoduleRequest):
    """Sample the nodule under ``request.click``: a job for the GUI's worker (each ``next()`` is
    one step on the session), or run to the end by :func:`sample_nodule`.

    With ``connect`` the walk has two passes over slices decoded once each: the first goes out
    from the clicked slice while a hypothesis's piece under the click goes on (touching from
    slice to slice; when no hypothesis has a piece on the clicked slice, while some slice has
    one at the click), counting on each slice the hypotheses with a piece under the click; the
    slice where most have one is the nodule's **anchor** (the model's most certain slice, the
    clicked one on a tie); the second keeps, for each hypothesis, the piece under the click on
    the anchor and what touches it slice by slice, decoding further slices as it needs them.
    A hypothesis empty on the anchor is "no nodule".

    Yields ``("stage", text)``, ``("slice", (slices done, slice))`` and
    :func:`~napari_probunet.review.jobs.decode_region`'s ``("decoded", done)``; returns a
    :class:`NoduleHypotheses`. The session is left holding the last slice sampled.
    """
    roi = check_request(request, int(session.config.input_size))
    vol, n, d = request.volume, int(request.n), int(session.config.latent_dim)
    k0, spacing = int(request.click[0]), check_spacing(request.spacing)
    if request.slices is not None:
        lo, hi = int(request.slices[0]), int(request.slices[1]) - 1
    else:
        reach = int(np.floor(request.max_extent_mm / spacing[0]))
        lo, hi = max(0, k0 - reach), min(vol.shape[0] - 1, k0 + reach)
    h, w = roi[2], roi[3]
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def raw(k):
        if k not in done:
            labels, latents = np.zeros((n, h, w), np.uint8), np.full((n, d), np.nan, np.float32)
            yield ("stage", f"Slice {k + 1} of {vol.shape[0]}…")
            yield from _sample_slice(session, request, k, roi, labels, latents)
            done[k] = (labels, latents)
            yield ("slice", (len(done), k))
        return done[k][0]

    if not request.connect:
        for k in range(lo, hi + 1):
            yield from raw(k)
        return _collect(request, roi, {k: v for k, v in done.items()}, False)
    at = (int(request.click[1]) - roi[0], int(request.click[2]) - roi[1])
    snap = (request.snap_mm / spacing[1], request.snap_mm / spacing[2])
    first = keep_clicked((yield from raw(k0)), at, snap)
    counts = {k0: int(first.reshape(n, -1).any(axis=1).sum())}
    for direction, end in ((1, hi), (-1, lo)):
        previous, k = first, k0 + direction
        # out while a hypothesis drawn on the clicked slice goes on; when the clicked slice
        # has none (a click near the nodule's end), while some slice has a piece at the click
        while (k - end) * direction <= 0 and (previous.any() or not counts[k0]):
            labels = yield from raw(k)
            counts[k] = clicked_count(labels, at, snap)
            if not counts[k0] and not counts[k]:
                break
            previous = keep_touching(labels, previous)
            k += direction
    anchor = max(counts, key=lambda k: (counts[k], -abs(k - k0), k))
    kept = {anchor: keep_clicked(done[anchor][0], at, snap)}
    reached = False
    for direction, end in ((1, hi), (-1, lo)):
        previous, k = kept[anchor], anchor + direction
        while (k - end) * direction <= 0 and previous.any():
            previous = kept[k] = keep_touching((yield from raw(k)), previous)
            k += direction
        at_scan_edge = k < 0 or k >= vol.shape[0]
        if previous.any() and request.slices is None and not at_scan_edge:
            reached = True
    sampled = {k: (kept.get(k, np.zeros_like(v[0])), v[1]) for k, v in done.items()}
    return _collect(request, roi, sampled, reached)


def _collect(request: NoduleRequest, roi, done: dict, reached: bool) -> NoduleHypotheses:
    """The slices sampled (contiguous), trimmed to those where some hypothesis is not empty
    (the clicked slice always stays), as one :class:`NoduleHypotheses`."""
    keys = sorted(done)
    labels = np.stack([done[k][0] for k in keys], axis=1)
    latents = np.stack([done[k][1] for k in keys])
    filled = [keys[j] for j in range(len(keys)) if labels[:, j].any()]
    if request.connect and request.slices is None:
        k0 = int(request.click[0])
        a, b = min(filled + [k0]), max(filled + [k0])
        sel = [j for j, k in enumerate(keys) if a <= k <= b]
        labels, latents, keys = labels[:, sel], latents[sel], keys[sel[0]:sel[-1] + 1]
    notes = []
    if reached:
        notes.append(f"some hypotheses still went on {request.max_extent_mm:g} mm from the "
                     "click; they were cut there (raise the extent limit for a larger nodule)")
    if not labels.any():
        notes.append("every hypothesis is empty: the model sees no nodule under the click")
    return NoduleHypotheses(labels=labels, first=int(keys[0]), roi=tuple(int(v) for v in roi),
                            spacing=check_spacing(request.spacing),
                            click=tuple(int(v) for v in request.click), seed=int(request.seed),
                            coupling=request.coupling, latents=latents, reached_limit=reached,
                            notes=notes)


def sample_nodule(session, request: NoduleRequest) -> NoduleHypotheses:
    """:func:`nodule_job` run to the end (command line, evaluation, scripts)."""
    return run_job(nodule_job(session, request))
