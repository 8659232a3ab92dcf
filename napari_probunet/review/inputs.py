"""What a review samples: the image, the region mode, the last click, the slices.

:class:`InputChoice` is the Input box's data, without Qt: the review's region tool
(``gui/review/roi_tool.py``) shows it and edits it, the sampler reads it when Sample is
clicked, and the controller (:mod:`napari_probunet.review.controller`) relays its ``changed``
event as ``input_changed``.
"""

from __future__ import annotations

from psygnal import Signal

ROI_MODES = ("whole", "rectangle", "click")
#: ROI side when no model is loaded yet (the model's ``config.input_size`` otherwise)
FALLBACK_ROI = 128
#: the fields :meth:`InputChoice.set` changes (the mode has its own rule: set_roi_mode)
FIELDS = ("image", "stack", "shapes", "slices_all", "click", "run_on_click")


class InputChoice:
    """The image, region and slices a review samples. ``changed()`` when any of them
    changed (psygnal)."""

    changed = Signal()

    def __init__(self) -> None:
        self.image: str | None = None  # the chosen image layer's name (None: no image layer)
        self.stack = False  # the chosen image is a 3D/4D stack (it has slices)
        self.mode = "whole"  # the region: "whole", "rectangle" or "click"
        #: the mode is 'click' because the image was too large, not by the user's choice
        self.mode_suggested = False
        self.shapes: str | None = None  # the Shapes layer holding the rectangle
        self.slices_all = False  # "All slices" chosen (it applies to a stack only)
        #: the last click: (image name, plane index, ROI (row0, col0, height, width))
        self.click: tuple[str, tuple[int, ...], tuple[int, int, int, int]] | None = None
        self.run_on_click = True  # a click on the lesion samples at once

    @property
    def all_slices(self) -> bool:
        """Sample runs over all slices (a stack, and "All slices" chosen)."""
        return self.stack and self.slices_all

    def set(self, **changes) -> None:
        """Change some of :data:`FIELDS`; ``changed`` when any did."""
        changed = False
        for name, value in changes.items():
            if name not in FIELDS:
                raise ValueError(f"unknown input {name!r}; expected one of {FIELDS} (the "
                                 "region mode: set_roi_mode)")
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed = True
        if changed:
            self.changed.emit()

    def set_roi_mode(self, mode: str, *, suggested: bool = False) -> None:
        """The region: ``"whole"``, ``"rectangle"`` or ``"click"``. ``suggested``: set for the
        image (too large to segment whole), not chosen by the user: a smaller image chosen
        next goes back to the whole image."""
        if mode not in ROI_MODES:
            raise ValueError(f"unknown region {mode!r}; expected one of {ROI_MODES}")
        before = (self.mode, self.mode_suggested)
        if suggested:
            self.mode_suggested = mode == "click"
        elif mode != self.mode:
            self.mode_suggested = False  # the user (or a script) chose it
        self.mode = mode
        if (self.mode, self.mode_suggested) != before:
            self.changed.emit()
