"""User-facing errors.

Everything the user can cause (a bad image, a bad model file, a bad data folder) raises a
subclass of :class:`UserError` whose message names the problem and the way out. The command
line prints it without a traceback; the widgets show it as a napari notification.
"""


class UserError(ValueError):
    """A problem with the user's input, explained in the message."""


class InputError(UserError):
    """An image or mask the model cannot take (shape, dtype, NaN, empty...)."""


class ModelFileError(UserError):
    """A model file that cannot be opened safely (pickle, truncated, wrong shapes, newer format)."""


class DataError(UserError):
    """A dataset file or folder that cannot be read as multi-rater cases."""


class LimitError(UserError):
    """A file declares more than a stated limit allows (:mod:`napari_probunet.limits`); the
    message names the limit and the environment variable that raises it."""
