"""The markers on the explorer's map, and the hypothesis selected among them.

The map (:class:`~napari_probunet.gui.explorer.latent_map.LatentMap`) draws its
:class:`~napari_probunet.gui.explorer.latent_map.MapMarkers` over the background, in plane
coordinates (prior sigmas). :class:`MarkerPlacement` fills them from where each kind comes
from whenever the plane, the hypotheses, the assessments or the selection change:

- the review state's hypotheses, at their latents' coordinates on the plane, with how far off
  the plane each lies (none when their latent size is not the plane's);
- the assessed annotations, at their posterior means (the assessment panel's table order);
- a mixture prior's components, heaviest first (``c1, c2, ...``, as the oblique plane names
  them), from the session; none for a Gaussian prior;
- the current point of live decoding.

It also keeps which hypothesis is selected: the map marks it, and the coordinates off the
plane can be held at its latent (:meth:`MarkerPlacement.held_base`).
"""

from __future__ import annotations

import numpy as np

from napari_probunet.gui.explorer.assessment import AssessmentPanel
from napari_probunet.gui.explorer.latent_map import LatentMap, MapMarkers
from napari_probunet.gui.explorer.live import LiveDecoding
from napari_probunet.review.state import ReviewState


class MarkerPlacement:
    """Places the markers of ``latent_map`` from ``state``'s hypotheses and session, the
    ``assessments`` panel and the ``live`` point; keeps the selected hypothesis."""

    def __init__(self, latent_map: LatentMap, state: ReviewState,
                 assessments: AssessmentPanel, live: LiveDecoding) -> None:
        self._map = latent_map
        self._state = state
        self._assessments = assessments
        self._live = live
        #: the selected hypothesis (0-based), or None
        self.selected_hypothesis: int | None = None

    def select(self, index: int | None) -> None:
        """Select hypothesis ``index`` (None: none) and mark it on the map."""
        self.selected_hypothesis = index
        self._map.markers.selected_hypothesis = index
        self._map.request_repaint()

    def forget_selection(self) -> None:
        """No hypothesis selected (new hypotheses or a new region); the map shows it with the
        next :meth:`place`."""
        self.selected_hypothesis = None

    def held_base(self, holds_hypothesis: bool) -> np.ndarray | None:
        """Where the coordinates off the plane are held: the selected hypothesis's latent
        ``(d,)`` when ``holds_hypothesis`` (the controls say so) and there is one, else None
        (the prior mean)."""
        hypotheses, selected = self._state.hypotheses, self.selected_hypothesis
        if holds_hypothesis and hypotheses is not None and selected is not None and (
                0 <= selected < len(hypotheses.z)):
            return np.asarray(hypotheses.z[selected], np.float32)
        return None

    def place(self, plane) -> None:
        """Fill the map's markers for ``plane`` (None before there is one) and repaint."""
        m = self._map.markers
        self._place_hypotheses(m, plane)
        m.selected_hypothesis = self.selected_hypothesis
        m.annotations = []
        if plane is not None:
            for a in self._assessments.assessments:
                u, v = plane.coords(a.mu)
                m.annotations.append((a.name, float(u), float(v), a.outlier))
        m.point = self._live.point if plane is not None else None
        m.components = self._components(plane)
        self._map.request_repaint()

    def _place_hypotheses(self, m: MapMarkers, plane) -> None:
        """The hypotheses' coordinates ``(k, 2)`` on ``plane`` and their distances off it."""
        hyp = self._state.hypotheses
        if plane is None or hyp is None or len(hyp.z) == 0 or hyp.z.shape[1] != plane.dim:
            m.hypotheses, m.hypothesis_off_plane = np.zeros((0, 2)), np.zeros(0)
        else:
            m.hypotheses = plane.coords(hyp.z)
            m.hypothesis_off_plane = plane.off_plane(hyp.z)

    def _components(self, plane) -> list[tuple[float, float, float]]:
        """A mixture prior's components on ``plane``: (u, v, weight), heaviest first; none for
        a Gaussian."""
        session = self._state.session
        if plane is None or session is None or not session.has_image:
            return []
        weights, means, _ = session.prior_components()
        if len(weights) < 2 or means.shape[1] != plane.dim:
            return []
        order = np.argsort(-weights, kind="stable")
        return [(float(u), float(v), float(w))
                for (u, v), w in zip(plane.coords(means[order]), weights[order])]
