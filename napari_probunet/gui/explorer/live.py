"""Live decoding: the current point on the map, its latent, and its decode in the layer.

A mouse move only stores the newest latent (:meth:`LiveDecoding.move`); the worker decodes the
newest pending one (latest request wins, :meth:`SessionWorker.request_latest`), and
:meth:`LiveDecoding.on_ready` writes the result into the explorer layer in place, repaints the
map with the same frame and rewrites the status line at most every
:data:`STATUS_INTERVAL_S`, always together with a repaint of the map (with napari's OpenGL
canvas in the window, each change on screen on its own recomposes the whole window). The
decode shown is kept, so "Use as best fit" hands over exactly what is on screen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from napari_probunet.gui.explorer.latent_map import SYNC_FALLBACK_S
from napari_probunet.gui.worker import LatestResult

#: the status line (current point, z) is rewritten at most this often while dragging
STATUS_INTERVAL_S = 0.25
#: while the decoded mask stays the same, the map (the point's crosshair) repaints on its own
#: at most this often: each repaint recomposes the whole window (napari's OpenGL canvas is in
#: it), which took the time of a canvas frame
POINT_ONLY_REPAINT_S = 1 / 15


@dataclass(frozen=True)
class PointRequest:
    """What a live decode was asked for: the latent ``(d,)`` and its plane coordinates."""

    z: np.ndarray
    uv: tuple[float, float]


def status_text(result: LatestResult, is_line: bool) -> str:
    """The line under the map: where the point is, its latent, and how long it took."""
    u, v = result.request.uv
    z = result.request.z
    zs = ", ".join(f"{x:+.2f}" for x in z[:8]) + (", \u2026" if len(z) > 8 else "")
    where = f"u = {u:+.2f}\u03c3" if is_line else f"u = {u:+.2f}\u03c3, v = {v:+.2f}\u03c3"
    return f"{where}   z = ({zs})   decode {result.seconds * 1000:.1f} ms"


class LiveDecoding:
    """The current point and its decode (see the module docstring).

    Args:
        worker: the widget's :class:`~napari_probunet.gui.worker.SessionWorker`.
        output: the :class:`~napari_probunet.gui.explorer.layer.ExplorerLayer` shown into.
        latent_map: the :class:`~napari_probunet.gui.explorer.latent_map.LatentMap`.
        status: the ``QLabel`` under the map.
        notify: shows a message to the user.

    Attributes: ``point`` ``(u, v)``, ``z`` its latent ``(d,)`` (None before the first),
    ``final_pending`` (a click or the end of a drag is not shown yet), ``decode_seconds``.
    """

    def __init__(self, worker, output, latent_map, status, notify) -> None:
        self._worker, self._output, self._map = worker, output, latent_map
        self._status, self._notify = status, notify
        self.point: tuple[float, float] = (0.0, 0.0)
        self.z: np.ndarray | None = None
        self.final_pending = False
        self.decode_seconds: list[float] = []  # of every live decode shown (benchmark)
        self._shown: LatestResult | None = None  # last decode written to the layer
        self._status_time = 0.0
        self._status_pending: str | None = None  # shown with the map's next repaint
        latent_map.repainting.connect(self._flush_status)

    def reset(self) -> None:
        """Forget the point's latent and what was shown (a new model or region)."""
        self._shown = None
        self.z = None
        self.final_pending = False
        self._status_pending = None

    def move(self, token, session, plane, u: float, v: float, final: bool) -> None:
        """Go to ``(u, v)`` of ``plane`` (clamped to the map) and ask for its decode.

        ``final``: a click or the end of a drag (the layer's thumbnail follows once shown).
        """
        u, v = plane.clamp(u, v)
        self.point = (u, v)
        self.z = plane.latent(u, v)
        self._map.markers.point = (u, v)
        # normally repainted with the frame that shows this point; this is the fallback
        self._map.request_repaint(delay=SYNC_FALLBACK_S, point_only=True)
        if final:
            self.final_pending = True
        self._worker.request_latest(token, "point", partial(session.decode, self.z),
                                    PointRequest(self.z, (u, v)))

    def on_ready(self, token, is_line: bool) -> None:
        """Show the decode the worker has ready, unless it is stale (an older ``token``)."""
        result = self._worker.take_latest()
        if result is None or result.token != token:
            return
        self._shown = result
        self.decode_seconds.append(result.seconds)
        frames = self._output.frames
        try:
            self._output.show(result.value)
        except Exception as exc:  # noqa: BLE001 - a layer removed or replaced under us
            self._output.forget()
            self._notify(f"Could not update the explorer layer: {exc}")
        final = self.final_pending and np.array_equal(result.request.z, self.z)
        now = time.perf_counter()
        if final or now - self._status_time > STATUS_INTERVAL_S:
            self._status_time = now
            self._status_pending = status_text(result, is_line)
            if final:
                self._flush_status()
        if final or self._output.frames != frames:
            self._map.repaint_with_frame(force=final, point_only=True)
        else:  # the mask did not change: no canvas frame to share the window's repaint with
            self._map.request_repaint(delay=POINT_ONLY_REPAINT_S, point_only=True)
        if final:
            self.final_pending = False
            self._output.settle()

    def _flush_status(self) -> None:
        if self._status_pending is not None:
            self._status.setText(self._status_pending)
            self._status_pending = None

    def shown_labels(self, token, z: np.ndarray) -> np.ndarray | None:
        """A copy of the decode shown if it is the one of ``z`` under ``token``, else None."""
        shown = self._shown
        if shown is not None and shown.token == token and np.array_equal(shown.request.z, z):
            return shown.value.copy()
        return None
