"""A new image starts a fresh review: nothing of the last image's review stays on screen.

Two cases (issue #29): the image the hypotheses were drawn on is deleted (:meth:`NewImage.reset`
forgets its encoding and hypotheses, its domain warning, its navigation and best fit), or
another image is opened or chosen while it is still there (:meth:`NewImage.show_for`: the
navigation says the chosen image has no hypotheses yet, *Use as best fit* and the arrows are
off and the domain warning is hidden; choosing the sampled image again shows them all again).
"""

from __future__ import annotations


class NewImage:
    """What a :class:`~napari_probunet.gui.review.widget.ReviewWidget` does when the image
    changes under its hypotheses."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.state = widget.state
        self._showed_other = False  # the navigation says the chosen image has no hypotheses

    def reset(self) -> None:
        """Forget the encoded image and its hypotheses (their image was deleted). The
        hypothesis layers still in the list stay there (the next run reuses them)."""
        w = self.widget
        self.state.set_encoded(None)
        w.bundles.record = None
        w.model_panel.domain_label.setText("")
        w.model_panel.domain_label.setVisible(False)
        w.emit(self.state.image_encoded)
        w.emit(self.state.hypotheses_changed)

    def other_image_chosen(self) -> bool:
        """The hypotheses held were drawn on another image than the one chosen."""
        encoded, image = self.state.encoded, self.widget.image_layer()
        return encoded is not None and image is not None and image.name != encoded.layer_name

    def show_for(self, image, other: bool) -> None:
        """The domain warning and the navigation for the chosen ``image`` (``other``: the
        hypotheses are of another image). Called by the widget's ``update_buttons``."""
        w = self.widget
        domain = w.model_panel.domain_label
        domain.setVisible(bool(domain.text()) and not other)
        if other:
            w.hypothesis_label.set_texts(f"No hypotheses of '{image.name}' yet",
                                         "No hypotheses yet")
        elif self._showed_other:
            self._showed_other = False
            w.hypothesis_view.update_navigation()  # (calls update_buttons again, once)
        self._showed_other = other
