"""The latent-space explorer's decode worker: one thread, always the newest latent.

A mouse move only stores the newest latent; the worker decodes it (torch at
:data:`WORKER_THREADS` threads, holding :attr:`ReviewState.lock`), never starts a new decode
while the GUI has not taken the last result (no queue of stale frames), and decodes the map's
background grid a row at a time in between. Results reach the GUI thread through a Qt signal.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QObject, Signal

#: torch threads of the explorer's worker (1 is fastest for one small decode; SPEC.md)
WORKER_THREADS = 1


class _Bridge(QObject):
    """Carries worker results and state events to the GUI thread (queued across threads)."""

    point_ready = Signal()
    job_result = Signal(object)  # (token, kind, item, error)
    state_event = Signal(str, object)


@dataclass
class _PointResult:
    token: int
    z: np.ndarray
    uv: tuple[float, float]
    labels: np.ndarray
    seconds: float


class _Worker:
    """One background thread for all model work of the explorer.

    - ``request_point``: decode a latent; only the newest request is kept, and a new decode
      starts only after the GUI took the previous result (``take_point``).
    - ``submit``: run a job, an iterator whose every step runs under the state's lock and whose
      every item is sent to the GUI; a job replaces queued or running jobs of its kind. Live
      points go first between steps, so a long grid never stalls dragging.
    """

    def __init__(self, lock, bridge: _Bridge, threads: int = WORKER_THREADS) -> None:
        self._lock = lock
        self._bridge = bridge
        self._threads = threads
        self._cond = threading.Condition()
        self._point: tuple | None = None
        self._result: _PointResult | None = None
        self._jobs: deque = deque()
        self._current: tuple | None = None
        self._busy = False
        self._in_flight = 0  # job results sent but not handled by the GUI yet
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="probunet-explorer", daemon=True)
        self._thread.start()

    # -- GUI side --------------------------------------------------------------------------------
    def request_point(self, token: int, session, z: np.ndarray, uv: tuple[float, float]) -> None:
        with self._cond:
            self._point = (token, session, z, uv)
            self._cond.notify()

    def take_point(self) -> _PointResult | None:
        with self._cond:
            result, self._result = self._result, None
            self._cond.notify()
            return result

    def submit(self, token: int, kind: str, job: Iterator) -> None:
        with self._cond:
            self._jobs = deque(j for j in self._jobs if j[1] != kind)
            if self._current is not None and self._current[1] == kind:
                self._current = None
            self._jobs.append((token, kind, job))
            self._cond.notify()

    def cancel(self) -> None:
        """Drop every pending point, result and job (a running step still finishes)."""
        with self._cond:
            self._point = self._result = self._current = None
            self._jobs.clear()
            self._cond.notify()

    def delivered(self) -> None:
        """The GUI handled one job result."""
        with self._cond:
            self._in_flight = max(0, self._in_flight - 1)

    @property
    def idle(self) -> bool:
        with self._cond:
            return not (self._point or self._result or self._jobs or self._current or self._busy
                        or self._in_flight)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._point = self._current = None
            self._jobs.clear()
            self._cond.notify()

    # -- worker side -----------------------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        """Send a job result to the GUI, which calls :meth:`delivered` when it handled it."""
        with self._cond:
            self._in_flight += 1
        try:
            self._bridge.job_result.emit(message)
        except RuntimeError:  # the widget is gone
            self.delivered()

    def _run(self) -> None:
        try:
            import torch

            torch.set_num_threads(self._threads)  # this thread only (OpenMP/MKL are per thread)
        except Exception:  # noqa: BLE001 - no torch, no decoding either; jobs report errors
            pass
        while True:
            with self._cond:
                while not self._stopped and not (
                    (self._point is not None and self._result is None)
                    or self._current is not None or self._jobs
                ):
                    self._cond.wait()
                if self._stopped:
                    return
                self._busy = True
                if self._point is not None and self._result is None:
                    point, self._point = self._point, None
                    step = None
                else:
                    point = None
                    if self._current is None:
                        self._current = self._jobs.popleft()
                    step = self._current
            try:
                if point is not None:
                    self._decode_point(*point)
                else:
                    self._step(step)
            finally:
                with self._cond:
                    self._busy = False

    def _decode_point(self, token, session, z, uv) -> None:
        t0 = time.perf_counter()
        try:
            with self._lock:
                labels = session.decode(z)
        except Exception as exc:  # noqa: BLE001 - reported on the GUI thread
            self._send((token, "point", None, exc))
            return
        with self._cond:
            fresh = self._result is None
            self._result = _PointResult(token, z, uv, labels, time.perf_counter() - t0)
        if fresh:
            with contextlib.suppress(RuntimeError):  # the widget is gone
                self._bridge.point_ready.emit()

    def _step(self, entry) -> None:
        token, kind, job = entry
        try:
            with self._lock:
                item = next(job)
        except StopIteration:
            item, error, done = None, None, True
        except Exception as exc:  # noqa: BLE001 - reported on the GUI thread
            item, error, done = None, exc, True
        else:
            error, done = None, False
        if done:
            with self._cond:
                if self._current is entry:
                    self._current = None
            if error is None:
                self._send((token, kind + ":done", None, None))
                return
        self._send((token, kind, item, error))


def _once(fn: Callable) -> Iterator:
    """A one-step job."""
    yield fn()
