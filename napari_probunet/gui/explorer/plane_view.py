"""The plane the map shows, and its background grid decoded in the worker.

:class:`PlaneView` turns the controls' choice (two latent axes, where the other coordinates are
held, or the oblique plane through a mixture's components) into a
:class:`~napari_probunet.review.plane.LatentPlane` through the prior, sets the map's
axes, and decodes the background grid a row at a time (a worker job of kind ``"grid"`` that a
new plane replaces), drawing each row as it arrives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtGui import QColor

from napari_probunet.gui.explorer.grid import BackgroundGrid
from napari_probunet.gui.explorer.latent_map import MapMarkers
from napari_probunet.gui.explorer.painting import BACKGROUNDS, qimage
from napari_probunet.review import plane as core


class PlaneView:
    """The plane shown on ``latent_map``, chosen with ``controls``, and its background.

    Args:
        latent_map: the :class:`~napari_probunet.gui.explorer.latent_map.LatentMap`.
        controls: the :class:`~napari_probunet.gui.explorer.controls.PlaneControls`.
        worker: the widget's :class:`~napari_probunet.gui.worker.SessionWorker`.
        class_colors: ``() -> (C, 4)`` RGBA uint8 per class, as the explorer layer shows them.

    Attributes: ``plane`` (None before an image is prepared), ``ranking`` (the axes by how
    much the segmentation changes along them), ``mu`` and ``sigma`` (the prior), ``grid``.
    """

    def __init__(self, latent_map, controls, worker,
                 class_colors: Callable[[], np.ndarray]) -> None:
        self.map, self.controls, self._worker = latent_map, controls, worker
        self._class_colors = class_colors
        self.grid = BackgroundGrid()
        self.plane: core.LatentPlane | None = None
        self.ranking: list[core.AxisScore] = []
        self.mu = self.sigma = None
        self.components: tuple[np.ndarray, np.ndarray] | None = None
        self._grid_token = 0  # bumped when the plane changes

    def reset(self, hint: str) -> None:
        """No plane (a new model or region): drop the prior, the ranking and the grid; the
        map shows ``hint`` instead."""
        self._grid_token += 1
        self.plane = None
        self.mu = self.sigma = self.components = None
        self.ranking = []
        self.grid.labels = None
        self.map.hint = hint
        self.map.background = None
        self.map.markers = MapMarkers()
        self.map.update()

    def prepared(self, config, mu, sigma, ranking, focus, components=None) -> None:
        """The prior ``(d,)`` of a newly encoded region, its axis ``ranking`` and ``focus`` box;
        ``config``: the model's (latent size, class names and count); ``components``: a
        mixture prior's ``(weights, means)`` (None for the Gaussian), for the oblique plane."""
        self.ranking = ranking
        self.components = components if components is not None and len(components[0]) > 1 else None
        self.controls.fill_axes(config.latent_dim, ranking,
                                0 if self.components is None else len(self.components[0]))
        names = list(config.class_names)
        colors = self._class_colors()
        self.map.class_legend = [(names[c], QColor(*[int(x) for x in colors[c][:3]]))
                                 for c in range(1, config.num_classes)]
        self.mu, self.sigma = mu, sigma
        self.grid.focus = focus

    def rebuild(self, base: np.ndarray | None, session, token) -> core.LatentPlane:
        """The plane of the chosen axes, other coordinates held at ``base`` (None: the prior
        mean); a new grid is decoded with ``session`` when the axes or ``base`` changed."""
        self.controls.sync_plane_kind(len(self.mu))
        plane = None
        if self.controls.through_components and self.components is not None:
            try:
                plane = core.LatentPlane.through_components(self.mu, self.sigma, *self.components)
            except ValueError as exc:  # e.g. two components on one mean: back to two axes
                show_warning(f"No plane through the components here ({exc}); "
                             "showing two latent axes.")
                self.controls.x_combo.setCurrentIndex(self.ranking[0].axis if self.ranking else 0)
                self.controls.sync_plane_kind(len(self.mu))
        if plane is None:
            x, y = self.controls.chosen_axes(len(self.mu))
            plane = core.LatentPlane.through_prior(self.mu, self.sigma, x, y, base)
        old_plane, self.plane = self.plane, plane
        self.map.hint = ""
        self.map.is_line = plane.is_line
        self.map.extent = plane.extent
        labels = plane.labels
        self.map.axis_labels = tuple(f"{name} / \u03c3" for name in (*labels, *labels)[:2])
        if not plane.same_plane(old_plane):
            self.start_grid(session, token)
        return plane

    def set_grid_size(self, n: int, session, token) -> None:
        """``n`` cells per side; a plane shown gets a new grid, decoded with ``session``."""
        self.grid.n = int(n)
        if self.plane is not None:
            self.start_grid(session, token)

    def start_grid(self, session, token) -> None:
        """Decode the background grid of the plane with ``session``, a row per worker step."""
        self._grid_token += 1
        latents = self.grid.start(self.plane)
        self.map.line_cells = self.grid.n
        self.render()
        chunk = self.grid.n  # a row per step: a live decode never waits long

        def job():
            for s in range(0, len(latents), chunk):
                yield s, session.decode(latents[s:s + chunk])

        self.map.progress = self.grid.progress()
        self._worker.submit((token, self._grid_token), "grid", job())

    def is_current_grid(self, token: tuple) -> bool:
        """Whether a grid job's token is of the plane shown (not of an older one)."""
        return token[1] == self._grid_token

    def add_rows(self, item: tuple[int, np.ndarray]) -> None:
        """A grid job's result ``(start, maps)`` (of the current grid)."""
        self.render(new=self.grid.add(*item))
        self.map.progress = self.grid.progress()

    def render(self, new: tuple[int, int] | None = None) -> None:
        """Redraw the map's background; ``new``: only these grid cells arrived since."""
        plane = self.plane
        if plane is None or self.grid.labels is None:
            return
        kind = self.controls.background
        self.map.background_kind = kind
        if kind == BACKGROUNDS[1]:
            rgba = self.grid.area_picture(plane.is_line)
        else:
            rgba = self.grid.mask_picture(plane.is_line, self._class_colors(), new)
        self.map.background = qimage(rgba)
        self.map.request_repaint()
