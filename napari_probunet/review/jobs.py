"""The review widget's background jobs: load a model, sample one slice or every slice of a stack.

Plain generators (and one function) that a GUI runs on a worker thread: no Qt, no napari.
They take arrays (the GUI reads the layer on its own thread, see :class:`SamplingJob`), yield
progress messages and return the result for the GUI thread to show.

They take no lock: whoever runs them holds the session's lock (:attr:`ReviewState.lock
<napari_probunet.review.state.ReviewState.lock>`) around each step, i.e. each ``next()``
(the GUI's :class:`~napari_probunet.gui.worker.SessionWorker` does; a script with the session to
itself need not). So a step is a unit of work on the shared session that no other user may
split (encoding and drawing the latents of that encoding), and steps are kept short (one
chunk of decodes) so that another widget gets the session in between.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from napari_probunet.errors import InputError, UserError
from napari_probunet.model.hypotheses import Hypotheses
from napari_probunet.model.images import image_signature, pixel_disagreement
from napari_probunet.model.modelfile import load_model
from napari_probunet.review.seeds import stack_seed
from napari_probunet.review.state import EncodedRegion

#: pixel-samples decoded per worker step (progress and Cancel granularity)
CHUNK_PIXELS = 1 << 18
#: torch threads of the sampling worker: half the cores (at most 4) to encode, one to decode.
#: Decoding is small matrix products that do not gain from threads; and torch's threads spin
#: when cores are busy: on the 2-core test machine under load, 2 threads made encoding a
#: 256x256 image 4-6x slower than 1 (1.5-2.0 s vs 0.3-0.4 s) and 16 decodes 3-10x slower.
#: Leaving a core free also keeps napari's own work (adding the layers) fast.
ENCODE_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
DECODE_THREADS = 1


@dataclass
class SamplingJob:
    """What one click on Sample asks for, as arrays: the GUI reads the image layer and hands
    the job only its pixels, so the worker never touches a layer."""
    region: np.ndarray  # (h, w) or (h, w, C): the ROI's pixels in the current plane
    plane: np.ndarray  # (H, W) or (H, W, C): the whole current plane (for its signature)
    layer_name: str  # the image layer's name (messages, the EncodedRegion record)
    index: tuple[int, ...]  # the plane's leading (non-spatial) indices, () for a 2D image
    roi: tuple[int, int, int, int]
    n: int
    seed: int
    #: "All slices": the ROI of every slice along the stack axis (the last leading axis, the
    #: one just before the rows and columns; any other leading axes at the current index),
    #: ``(K, h, w)`` or ``(K, h, w, C)``; None for the current slice only
    stack: np.ndarray | None = None
    #: set by Cancel in an "All slices" run: the job stops between slices and keeps those done
    stop: threading.Event | None = None

    @property
    def all_slices(self) -> bool:
        return self.stack is not None


@dataclass
class Sampled:
    """What a sampling job returns to the GUI thread: the request and its
    :class:`~napari_probunet.model.hypotheses.Hypotheses` (with uncertainty and signatures;
    for "All slices" those of the current slice), plus, for "All slices", the stacks."""
    request: SamplingJob
    hypotheses: Hypotheses
    # "All slices" only: the stack of each hypothesis and of the uncertainty, the latents of
    # each slice (None for a blank slice or one not reached before Cancel), the slices done
    stack_labels: np.ndarray | None = None  # (n, K, h, w) uint8
    stack_uncertainty: np.ndarray | None = None  # (K, h, w) float32
    z_per_slice: list | None = None
    slices_done: int = 0
    #: refined by clicks (:mod:`napari_probunet.review.refine`): the clicks, rule, pool and
    #: draw numbers, kept in the hypotheses' provenance (``refined_by_clicks``)
    refinement: dict | None = None

    # the record's fields, by their usual names (one record: nothing is stored twice)
    @property
    def labels(self) -> np.ndarray:
        """``(n, h, w)`` uint8."""
        return self.hypotheses.labels

    @property
    def z(self) -> np.ndarray:
        """``(n, d)`` float32."""
        return self.hypotheses.z

    @property
    def uncertainty(self) -> np.ndarray:
        """``(h, w)`` float32."""
        return self.hypotheses.uncertainty

    @property
    def image_signature(self) -> str:
        return self.hypotheses.image_signature

    @property
    def plane_signature(self) -> str:
        return self.hypotheses.plane_signature


def _check_region(region: np.ndarray, name: str) -> None:
    if region.size == 0:
        raise InputError(f"the region of interest of '{name}' is empty")
    if np.issubdtype(region.dtype, np.floating) and not np.isfinite(region).all():
        bad = int((~np.isfinite(region)).sum())
        raise InputError(
            f"'{name}' has {bad} NaN or infinite pixel(s) in the region of interest; the model "
            "cannot segment them. Replace them (e.g. with the background value) or choose "
            "another region"
        )
    lo, hi = region.min(), region.max()
    if lo == hi:
        raise InputError(
            f"the region of interest of '{name}' is constant (every pixel is {lo!r}): there is "
            "nothing to segment. Check the image layer, the slice and the region"
        )


@contextmanager
def _torch_threads(n: int):
    """Run torch on ``n`` intra-op threads inside the block (set per calling thread)."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def sampling_job(session, request: SamplingJob):
    """Encode the ROI (unless the session holds it already), then decode ``n`` samples.

    Yields ``("stage", text)``, ``("encoded", EncodedRegion)`` and ``("progress", done)``; returns a
    :class:`Sampled`. The latents are those of ``session.sample(n, seed)`` (NumPy's generator
    for ``seed``), decoded in chunks so that the progress bar moves and Cancel takes effect.
    Steps: encoding and drawing the latents are one step; then one chunk per step.
    """
    signature = yield from encode_request(session, request)
    plane_signature = image_signature(request.plane)
    z = session.draw_latents(request.n, request.seed)
    labels = np.empty((request.n, request.roi[2], request.roi[3]), np.uint8)
    yield ("stage", "Sampling…")
    for stop in _decode_in_chunks(session, z, signature, labels):
        yield ("progress", stop)
    uncertainty = pixel_disagreement(labels, session.config.num_classes)
    return Sampled(request, Hypotheses(labels, z, request.seed, uncertainty=uncertainty,
                                       image_signature=signature,
                                       plane_signature=plane_signature))


def encode_request(session, request: SamplingJob):
    """Encode the request's region unless the session holds it (a job part: ``yield from``
    it; one step with what follows). Yields ``("stage", text)`` and ``("encoded",
    EncodedRegion)`` when it encodes; returns the region's signature."""
    region = request.region
    _check_region(region, request.layer_name)
    signature = image_signature(region)
    if not (session.has_image and session.image_signature == signature):
        yield ("stage", "Encoding the image…")
        encode_region(session, region, signature)
        yield ("encoded", EncodedRegion(
            layer_name=request.layer_name, slice_index=request.index,
            roi=request.roi, image_signature=signature, image=region))
    return signature


def encode_region(session, region: np.ndarray, signature: str | None = None) -> str:
    """Have the session hold ``region``'s encoding (encoded with :data:`ENCODE_THREADS` unless
    it holds it already); returns its signature."""
    signature = signature or image_signature(region)
    if not (session.has_image and session.image_signature == signature):
        with _torch_threads(ENCODE_THREADS):
            session.set_image(region)
    return signature


def decode_region(session, region: np.ndarray, n: int, seed: int, picks=None):
    """Encode ``region`` (unless held) and decode ``n`` samples for ``seed`` (a part of a job:
    ``yield from`` it); with ``picks`` the draws of those numbers instead of the first ``n``
    (:mod:`napari_probunet.review.refine`). Yields ``("decoded", done)`` after the encoding (0)
    and each chunk; returns ``(labels (n, h, w) uint8, z (n, d), image signature)``."""
    signature = encode_region(session, region)
    if picks is None:
        z = session.draw_latents(n, seed)
    else:
        picks = np.asarray(picks, np.int64)
        n = len(picks)
        z = session.draw_latents(int(picks.max()) + 1, seed)[picks]
    yield ("decoded", 0)
    labels = np.empty((n, *region.shape[:2]), np.uint8)
    for stop in _decode_in_chunks(session, z, signature, labels):
        yield ("decoded", stop)
    return labels, z, signature


def _decode_in_chunks(session, z: np.ndarray, signature: str, labels: np.ndarray):
    """Decode ``z`` into ``labels`` a chunk per step (yielding how many are done), checking
    that the session still holds the image ``signature`` (another widget may re-encode)."""
    n = len(z)
    chunk = max(1, min(n, CHUNK_PIXELS // max(1, labels.shape[1] * labels.shape[2])))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if session.image_signature != signature:
            raise UserError("the encoded image changed while sampling; click Sample again")
        with _torch_threads(DECODE_THREADS):
            labels[start:stop] = session.decode(z[start:stop])
        yield stop


def stack_job(session, request: SamplingJob):
    """"All slices": sample every slice of ``request.stack``, the current slice (the last
    entry of ``request.index``) first, then the others in order, each by the stack rule
    (:func:`~napari_probunet.review.seeds.stack_seed`: the stack's one seed on every slice,
    as ``probunet sample`` on a volume).

    Yields ``("stage", text)``, ``("encoded", EncodedRegion)`` (the current slice),
    ``("slice", (done, total))`` and :func:`decode_region`'s ``("decoded", done)``; returns a
    :class:`Sampled` whose ``labels``/``z`` are the current slice's and whose ``stack_*`` hold
    the whole stack. A blank (constant) slice other than the current one gets empty labels and
    ``None`` latents. ``request.stop`` (Cancel) ends the run between slices: the slices done
    are kept, the others stay empty. Finally the session holds the current slice's encoding
    again.
    """
    roi, n, seed, k0 = request.roi, request.n, request.seed, request.index[-1]
    total = int(request.stack.shape[0])
    h, w = roi[2], roi[3]
    num_classes = session.config.num_classes
    stack_labels = np.zeros((n, total, h, w), np.uint8)
    stack_unc = np.zeros((total, h, w), np.float32)
    z_per_slice: list = [None] * total
    current_region = request.region
    _check_region(current_region, request.layer_name)
    plane_signature = image_signature(request.plane)
    order = [k0] + [k for k in range(total) if k != k0]
    done = 0
    current = None
    for k in order:
        if done and request.stop is not None and request.stop.is_set():
            break
        yield ("stage", f"Slice {done + 1} / {total}…")
        region = current_region if k == k0 else np.asarray(request.stack[k])
        if k != k0:
            try:
                _check_region(region, request.layer_name)
            except InputError:
                region = None  # a blank slice: empty labels, no latents
        if region is not None:
            labels, z, signature = yield from decode_region(
                session, region, n, stack_seed(seed, k, "shared"))
            stack_labels[:, k] = labels
            stack_unc[k] = pixel_disagreement(labels, num_classes)
            z_per_slice[k] = [[float(v) for v in row] for row in z]
            if k == k0:
                current = (labels, z, signature)
                yield ("encoded", EncodedRegion(layer_name=request.layer_name,
                                          slice_index=request.index, roi=roi,
                                          image_signature=signature, image=current_region))
        done += 1
        yield ("slice", (done, total))
    labels, z, signature = current
    if session.image_signature != signature:  # give the session back the current slice
        yield ("stage", "Encoding the current slice…")
        with _torch_threads(ENCODE_THREADS):
            session.set_image(current_region)
    return Sampled(request, Hypotheses(labels, z, request.seed, uncertainty=stack_unc[k0].copy(),
                                       image_signature=signature,
                                       plane_signature=plane_signature),
                   stack_labels=stack_labels, stack_uncertainty=stack_unc,
                   z_per_slice=z_per_slice, slices_done=done)


def run_job(job):
    """A job run to its end on the calling thread (command line, evaluation, scripts): its
    result, the progress messages dropped."""
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


def model_job(source, device: str):
    """Load a model file (or move a loaded model) and make a session on ``device``:
    ``(model, session)``. A function, not a generator: one step (a loaded model is shared
    with the current session, so the runner's lock covers it)."""
    from napari_probunet.model.sanity import check_diversity
    from napari_probunet.session import Session

    if isinstance(source, (str, os.PathLike)):
        model = load_model(source, device="cpu")
        check_diversity(model, os.path.basename(model.source_path or os.fspath(source)))
        return model, Session(model, device)
    return source, Session(source, device)
