"""Refine the hypotheses by clicks: ``n`` hypotheses that agree with inside/outside clicks and
are still probable under the model.

A click is ``(row, column, positive)`` in the coordinates of the encoded region (the ROI): a
positive click says "this pixel is lesion" (any foreground class), a negative one "this pixel is
background". fcomb decodes each pixel from the image's features and the latent alone
(:mod:`napari_probunet.model.decode`), so the clicks' predictions under many latents cost almost
nothing (:meth:`Session.logits_at <napari_probunet.session.Session.logits_at>`). The method:

1. **A pool** of ``pool`` latents from the prior, :meth:`Session.draw_latents
   <napari_probunet.session.Session.draw_latents>` for the seed (so its first ``n`` are
   ``Session.sample(n, seed)``'s hypotheses: with no clicks, refining is sampling).
2. **Agreement**: a latent agrees when its label at every click is the click's (foreground for
   a positive click, background for a negative one). The pool grows (x4, to at most
   :data:`POOL_MAX`; its first draws stay the same) while fewer than ``n`` agree.
3. **Selection** (``rule``): ``"sample"`` keeps the first ``n`` agreeing latents in draw order,
   an exact sample of the prior restricted to the latents that agree with the clicks
   (rejection sampling: p(z | image, clicks) for a likelihood that is 1 where the clicks agree
   and 0 elsewhere); ``"probable"`` the ``n`` agreeing latents of highest prior density;
   ``"score"`` the ``n`` of highest prior log-density plus the clicks' summed
   log-likelihood, agreeing or not. ``docs/evaluation.md`` ("Refining by clicks") has the
   comparison on the validation patients that chose the default.
4. **Too few agree**: all that agree are kept and the rest are the closest of the others (most
   clicks agreed, then the highest summed click log-likelihood; after an inside click a map
   with no lesion at all goes last), and :attr:`Refined.message` says so: never silently.
5. Only the ``n`` chosen latents are decoded in full (up to :data:`FALLBACK_DECODES` times
   ``n`` when too few agree with an inside click).

Reproducible: the same image, clicks (in any order), ``n``, seed, pool and rule give the same
hypotheses; :attr:`Refined.picks` are their numbers in the pool, so ``draw_latents(max(picks) +
1, seed)[picks]`` are their latents.

In 3D (:mod:`napari_probunet.review.nodule`, one latent draw per hypothesis shared by every slice
of the nodule) a click on any slice filters the shared draws: :func:`steer_nodule` scores the
pool on each clicked slice with that slice's prior and returns the nodule request with its
:attr:`~napari_probunet.review.nodule.NoduleRequest.picks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from napari_probunet.errors import InputError
from napari_probunet.model.hypotheses import Hypotheses
from napari_probunet.model.images import pixel_disagreement

#: latents scored first; the pool grows x4 up to POOL_MAX while fewer than n agree
POOL = 4096
POOL_MAX = 65536
#: how the n hypotheses are chosen among the latents that agree (see the module's docstring)
RULES = ("sample", "probable", "score")
DEFAULT_RULE = "sample"
#: when fewer than n agree with an inside click, up to this many times n of the closest are
#: decoded so that maps with no lesion can go last (:func:`decode_chosen`)
FALLBACK_DECODES = 4
#: log-likelihood of a positive click on a blank slice (every hypothesis is empty there)
BLANK_LOGLIK = -50.0


@dataclass(frozen=True)
class Click:
    """One prompt: ``(row, col)`` in the region's pixels, ``positive`` (lesion) or not."""
    row: int
    col: int
    positive: bool

    @property
    def word(self) -> str:
        return "inside" if self.positive else "outside"


@dataclass
class Refined:
    """What :func:`refine` gives: the hypotheses, and how they came to be."""
    hypotheses: Hypotheses
    clicks: tuple[Click, ...]
    pool: int  # latents scored (the pool after growing)
    agreed: int  # how many of them agree with every click
    picks: np.ndarray  # (n,) numbers of the hypotheses in the pool (draw order)
    agreeing: np.ndarray  # (n,) bool: hypothesis i's full map agrees with every click
    rule: str = DEFAULT_RULE
    message: str | None = None  # set when some hypotheses miss a click

    @property
    def n(self) -> int:
        return self.hypotheses.n


def as_clicks(clicks, shape: tuple[int, int]) -> tuple[Click, ...]:
    """Clicks ``(row, col, positive)`` (numbers rounded to the nearest pixel), checked against
    the region's ``shape`` ``(h, w)``; refused with a message naming the click and the way
    out when one is outside the region, not a number, or contradicts another."""
    h, w = int(shape[0]), int(shape[1])
    out: list[Click] = []
    for i, item in enumerate(clicks, start=1):
        try:
            r, c, positive = item
            rf, cf = float(r), float(c)
        except (TypeError, ValueError):
            raise InputError(f"click {i} is {item!r}; a click is (row, column, positive)"
                             ) from None
        if not (np.isfinite(rf) and np.isfinite(cf)):
            raise InputError(f"click {i} is at ({rf}, {cf}): not a pixel; clear it and click "
                             "again")
        row, col = int(np.floor(rf + 0.5)), int(np.floor(cf + 0.5))
        if not (0 <= row < h and 0 <= col < w):
            raise InputError(
                f"click {i} at (row {row}, column {col}) is outside the region of interest "
                f"({h}x{w} pixels); click inside the region, or choose a region that holds "
                "the clicks and sample again")
        out.append(Click(row, col, bool(positive)))
    _refuse_contradictions([((c.row, c.col), c.positive) for c in out])
    return tuple(out)


def _refuse_contradictions(keyed: list) -> None:
    """Refuse two clicks ``(place, positive)`` on the same place that say inside and outside."""
    seen: dict = {}
    for i, (place, positive) in enumerate(keyed, start=1):
        j, was = seen.setdefault(place, (i, positive))
        if was != positive:
            where = ", ".join(f"{a} {int(v)}" for a, v in
                              zip(("slice", "row", "column")[-len(place):], place))
            raise InputError(f"clicks {j} and {i} are on the same pixel ({where}) but one says "
                             "inside and the other outside; remove one of them")


# -- scoring a pool ---------------------------------------------------------------------------

def click_scores(logits: np.ndarray, clicks: tuple[Click, ...]):
    """Logits ``(M, k, C)`` at the ``k`` clicks under ``M`` latents -> ``(agrees (M, k) bool,
    log-likelihood (M, k))`` of each click's class (foreground = any class but 0)."""
    lg = np.asarray(logits, np.float32)
    positive = np.array([c.positive for c in clicks], bool)
    norm = _logsumexp(lg, axis=-1)
    log_fg = _logsumexp(lg[..., 1:], axis=-1) - norm
    log_bg = lg[..., 0] - norm
    loglik = np.where(positive, log_fg, log_bg)
    foreground = lg.argmax(axis=-1) != 0
    return foreground == positive, loglik


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(a - top).sum(axis=axis))


def prior_log_density(z: np.ndarray, weights, means, sigmas) -> np.ndarray:
    """log p(z) ``(M,)`` of latents ``(M, d)`` under a mixture of diagonal Gaussians (weights
    ``(K,)``, means and sigmas ``(K, d)``; ``K = 1`` for the paper's Gaussian)."""
    z = np.asarray(z, np.float64)[:, None, :]
    mu, sd = np.asarray(means, np.float64)[None], np.asarray(sigmas, np.float64)[None]
    per = -0.5 * (((z - mu) / sd) ** 2).sum(-1) - np.log(sd).sum(-1) \
        - 0.5 * z.shape[-1] * np.log(2 * np.pi)
    return _logsumexp(per + np.log(np.asarray(weights, np.float64))[None], axis=1)


@dataclass
class PoolScores:
    """The pool's scores against the clicks (summed over slices in 3D)."""
    size: int
    agree_count: np.ndarray = field(repr=False)  # (M,) clicks agreed with
    loglik: np.ndarray = field(repr=False)  # (M,) summed click log-likelihood
    log_prior: np.ndarray = field(repr=False)  # (M,) log p(z) (in 3D: summed over slices)

    @classmethod
    def empty(cls, size: int) -> PoolScores:
        return cls(size, np.zeros(size, np.int64), np.zeros(size), np.zeros(size))

    def extended(self, more: PoolScores) -> PoolScores:
        """These scores followed by those of the next draws (a grown pool)."""
        return PoolScores(self.size + more.size,
                          *(np.concatenate([getattr(self, f), getattr(more, f)])
                            for f in ("agree_count", "loglik", "log_prior")))

    def add(self, session, z: np.ndarray, clicks: tuple[Click, ...], prior: bool = True,
            ) -> None:
        """Score latents ``z`` ``(M, d)`` on the session's image at ``clicks`` (and their prior
        log-density, unless ``prior`` is false: the ``"sample"`` rule does not need it)."""
        if prior:
            self.log_prior += prior_log_density(z, *session.prior_components())
        if not clicks:
            return
        pixels = np.array([(c.row, c.col) for c in clicks], np.int64)
        agree, loglik = click_scores(session.logits_at(z, pixels), clicks)
        self.agree_count += agree.sum(axis=1)
        self.loglik += loglik.sum(axis=1)


def select(scores: PoolScores, clicks: int, n: int, rule: str) -> tuple[np.ndarray, int]:
    """``(picks (n,), agreed)``: the pool numbers of the ``n`` hypotheses by ``rule`` and how
    many latents of the pool agree with all ``clicks``; deterministic (ties by draw order)."""
    if rule not in RULES:
        raise InputError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")
    agree = scores.agree_count == clicks
    agreed = int(agree.sum())
    order = np.arange(scores.size)
    if rule == "score":
        ranked = np.lexsort((order, -(scores.log_prior + scores.loglik)))
        return ranked[:n], agreed
    good = np.flatnonzero(agree)
    if rule == "probable":
        good = good[np.lexsort((good, -scores.log_prior[good]))]
    picks = good[:n]
    if len(picks) < n:  # the closest of the rest: most clicks agreed, then likelihood
        rest = np.flatnonzero(~agree)
        rest = rest[np.lexsort((rest, -scores.loglik[rest], -scores.agree_count[rest]))]
        picks = np.concatenate([picks, rest[:n - len(picks)]])
    return picks.astype(np.int64), agreed


def score_pool(session, clicks: tuple[Click, ...], n: int, seed: int, pool: int = POOL,
               pool_max: int = POOL_MAX, prior: bool = True) -> tuple[PoolScores, np.ndarray]:
    """The pool scored at the clicks on the session's image, grown x4 (to ``pool_max``)
    while fewer than ``n`` agree: ``(scores, latents (M, d))``; ``prior``: with the latents'
    prior log-densities."""
    size, scores = max(int(pool), int(n)), PoolScores.empty(0)
    while True:
        z = session.draw_latents(size, seed)  # its first draws are those scored already
        more = PoolScores.empty(size - scores.size)
        more.add(session, z[scores.size:], clicks, prior)
        scores = scores.extended(more)
        if (scores.agree_count == len(clicks)).sum() >= n or size >= pool_max:
            return scores, z
        size = min(size * 4, max(int(pool_max), size))


def shortfall_message(agreed: int, pool: int, n: int, clicks: int) -> str | None:
    """The message when fewer than ``n`` of the pool agree with the clicks (None otherwise)."""
    if agreed >= n:
        return None
    what = "the click" if clicks == 1 else f"all {clicks} clicks"
    return (f"only {agreed} of {pool} latents drawn from the model agree with {what}; the "
            f"other {n - agreed} hypotheses are the closest of the rest and miss a click. The "
            "model finds these clicks unlikely here: check them, remove one, or correct the "
            "best fit by hand")


def refine(session, clicks, n: int = 16, seed: int = 0, pool: int = POOL,
           rule: str = DEFAULT_RULE, pool_max: int = POOL_MAX) -> Refined:
    """``n`` hypotheses of the session's image that agree with ``clicks`` (``(row, col,
    positive)`` in the image's pixels) and are probable under the model; see the module's
    docstring. Raises :class:`~napari_probunet.errors.InputError` for a bad click."""
    if int(n) < 1:
        raise InputError(f"the number of hypotheses must be at least 1, got {n}")
    if rule not in RULES:
        raise InputError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")
    h, w = session.image_shape
    checked = as_clicks(clicks, (h, w))
    scores, z = score_pool(session, checked, int(n), seed, pool, pool_max, rule != "sample")
    # more candidates only where some of the first n may miss a click (the fill-in, or "score")
    short = rule == "score" or int((scores.agree_count == len(checked)).sum()) < int(n)
    picks, agreed = select(scores, len(checked), int(n) * (FALLBACK_DECODES if short else 1),
                           rule)
    picks, labels = decode_chosen(session, z, picks, int(n), checked)
    chosen = z[picks]
    agreeing = agrees_with(labels, checked)
    hyp = Hypotheses(labels=labels, z=chosen, seed=int(seed),
                     uncertainty=pixel_disagreement(labels, session.config.num_classes),
                     image_signature=session.image_signature)
    message = shortfall_message(agreed, scores.size, int(n), len(checked))
    if message is None and not agreeing.all():  # float rounding at a borderline click
        message = (f"{int((~agreeing).sum())} of {n} hypotheses miss a click by a hair "
                   "(the click lies on their outline)")
    return Refined(hyp, checked, scores.size, agreed, picks, agreeing, rule, message)


def decode_chosen(session, z: np.ndarray, ranked: np.ndarray, n: int,
                   clicks: tuple[Click, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(picks (n,), labels (n, h, w))``: the first ``n`` of the ``ranked`` pool numbers, except
    that where a hypothesis misses an inside click (too few agree) a map with no lesion at all
    goes after every map with one: decoded ``n`` at a time, at most :data:`FALLBACK_DECODES`
    times ``n``. An empty map is never the closest answer to "the lesion is here"."""
    first = session.decode(z[ranked[:n]])
    if not any(c.positive for c in clicks) or agrees_with(first, clicks).all():
        return ranked[:n], first
    kept: list[tuple[int, np.ndarray]] = []
    empty: list[tuple[int, np.ndarray]] = []
    for start in range(0, len(ranked), n):
        labels = first if start == 0 else session.decode(z[ranked[start:start + n]])
        for pick, label in zip(ranked[start:start + n], labels):
            (kept if label.any() else empty).append((int(pick), label))
        if len(kept) >= n:
            break
    chosen = (kept + empty)[:n]
    return (np.array([p for p, _ in chosen], np.int64),
            np.stack([label for _, label in chosen]))


def agrees_with(labels: np.ndarray, clicks: tuple[Click, ...]) -> np.ndarray:
    """``(n,)`` bool: label maps ``(n, h, w)`` that agree with every click."""
    ok = np.ones(len(labels), bool)
    for c in clicks:
        ok &= (labels[:, c.row, c.col] != 0) == c.positive
    return ok


# -- the review's job -------------------------------------------------------------------------

def refine_job(session, request, clicks, rule: str = DEFAULT_RULE, pool: int = POOL):
    """The review's "Refine by clicks" as a job for the GUI's worker: encode the request's
    region unless the session holds it (a :class:`~napari_probunet.review.jobs.SamplingJob`),
    then :func:`refine`. Yields ``("stage", text)`` and ``("encoded", EncodedRegion)``; returns
    ``(Sampled, Refined)``. Each ``next()`` is one step under the session lock."""
    from napari_probunet.model.images import image_signature
    from napari_probunet.review.jobs import Sampled, encode_request

    as_clicks(clicks, request.region.shape[:2])  # refuse a bad click before encoding
    yield from encode_request(session, request)
    yield ("stage", "Refining by clicks…")
    refined = refine(session, clicks, request.n, request.seed, pool, rule)
    hyp = refined.hypotheses
    hyp.plane_signature = image_signature(request.plane)
    return Sampled(request, hyp), refined


# -- 3D: a nodule's shared draws --------------------------------------------------------------

@dataclass(frozen=True)
class Click3D:
    """A click on a scan: ``(slice, row, col)`` voxel, ``positive`` (nodule) or not."""
    slice: int
    row: int
    col: int
    positive: bool


def as_clicks_3d(clicks, shape: tuple[int, int, int], roi) -> tuple[Click3D, ...]:
    """Scan clicks ``(slice, row, col, positive)`` checked against the scan ``shape`` and the
    nodule's crop ``roi`` ``(row0, col0, h, w)`` (every slice is cropped the same)."""
    out: list[Click3D] = []
    r0, c0, h, w = roi
    for i, item in enumerate(clicks, start=1):
        try:
            k, r, c, positive = item
            k, r, c = (int(np.floor(float(v) + 0.5)) for v in (k, r, c))
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"click {i} is {item!r}; a click is (slice, row, column, "
                             "positive) on the scan") from None
        if not (0 <= k < shape[0] and r0 <= r < r0 + h and c0 <= c < c0 + w):
            raise InputError(
                f"click {i} at (slice {k}, row {r}, column {c}) is outside the nodule's region "
                f"(slices 0..{shape[0] - 1}, rows {r0}..{r0 + h - 1}, columns {c0}..{c0 + w - 1}"
                "); click on the nodule or near it, or find the nodule again from there")
        out.append(Click3D(k, r, c, bool(positive)))
    _refuse_contradictions([((c.slice, c.row, c.col), c.positive) for c in out])
    return tuple(out)


def steer_nodule(session, request, clicks, pool: int = POOL, rule: str = DEFAULT_RULE,
                 pool_max: int = POOL_MAX):
    """Choose a nodule's ``n`` shared draws by clicks on any of its slices: a job part
    (``yield from``); returns ``(request with picks, agreed, pool size, message)``.

    Each clicked slice is encoded (its crop, as :func:`~napari_probunet.review.nodule.
    nodule_job` crops it) and the pool's latents there (the nodule's seed: the same draw
    ``eps_i, u_i`` per hypothesis on every slice) are scored at that slice's clicks; the scores
    add up over slices (log prior densities too) and :func:`select` picks by ``rule``.
    """
    from napari_probunet.review.jobs import encode_region
    from napari_probunet.review.nodule import check_request

    if request.coupling != "shared":
        raise InputError("refining a nodule by clicks needs coupling='shared' (one draw per "
                         "hypothesis on every slice); a click cannot steer independent draws")
    roi = check_request(request, int(session.config.input_size))
    checked = as_clicks_3d(clicks, np.shape(request.volume), roi)
    r0, c0, h, w = roi
    by_slice: dict[int, list[Click]] = {}
    for c in checked:
        by_slice.setdefault(c.slice, []).append(Click(c.row - r0, c.col - c0, c.positive))
    n, size = int(request.n), max(int(pool), int(request.n))
    while True:
        scores = PoolScores.empty(size)
        for k in sorted(by_slice):
            yield ("stage", f"Scoring the clicks on slice {k + 1}…")
            region = np.asarray(request.volume[k, r0:r0 + h, c0:c0 + w])
            if region.min() == region.max():  # blank: the nodule job leaves it empty
                scores.agree_count += sum(not c.positive for c in by_slice[k])
                scores.loglik += BLANK_LOGLIK * sum(c.positive for c in by_slice[k])
                continue
            encode_region(session, region)
            scores.add(session, session.draw_latents(size, int(request.seed)),
                       tuple(by_slice[k]), rule != "sample")
        if (scores.agree_count == len(checked)).sum() >= n or size >= pool_max:
            break
        size = min(size * 4, max(int(pool_max), size))
    picks, agreed = select(scores, len(checked), n, rule)
    message = shortfall_message(agreed, size, n, len(checked))
    return replace(request, picks=tuple(int(p) for p in picks)), agreed, size, message


def refine_nodule_job(session, request, clicks, pool: int = POOL, rule: str = DEFAULT_RULE):
    """A nodule's hypotheses steered by ``clicks`` (``(slice, row, col, positive)`` on the
    scan): :func:`steer_nodule`, then :func:`~napari_probunet.review.nodule.nodule_job` on the
    chosen draws; a job for the Nodule widget's worker. Returns the
    :class:`~napari_probunet.review.nodule.NoduleHypotheses` with a note on how many agree
    with the clicks (after each hypothesis is cut to its one connected nodule) and, when too
    few of the pool agreed, the shortfall message."""
    from napari_probunet.review.nodule import nodule_job

    steered, agreed, size, message = yield from steer_nodule(session, request, clicks, pool,
                                                             rule)
    result = yield from nodule_job(session, steered)
    roi = result.roi
    ok = np.ones(result.n, bool)
    for k, r, c, positive in ((c.slice, c.row, c.col, c.positive) for c in
                              as_clicks_3d(clicks, np.shape(request.volume), roi)):
        j = k - result.first
        inside = result.labels[:, j, r - roi[0], c - roi[1]] != 0 if 0 <= j < \
            result.labels.shape[1] else np.zeros(result.n, bool)
        ok &= inside == positive
    if clicks:
        result.notes.append(f"{int(ok.sum())} of {result.n} hypotheses agree with the "
                            f"{len(clicks)} click(s) ({agreed} of {size} draws did)")
    if message:
        result.notes.append(message)
    return result
