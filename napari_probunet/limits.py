"""Limits on what a file may declare, in one place.

A small file can declare a huge thing: a 2 MB PNG or TIFF says it is 40000 x 40000 pixels, a
1 MB ZIP member inflates to 1 GiB, a 200-byte pickle asks for a 2 GiB buffer, a model header
asks for a million channels per layer. Every reader of this package (model files, training
checkpoints, hypothesis bundles, the restricted unpickler, images, TIFF, NIfTI, recovery files)
checks what a file *declares* against these limits **before** it allocates or inflates
anything, and refuses with the project's own error class (a
:class:`~napari_probunet.errors.UserError`) and a message that names the limit and how to raise
it. With the defaults, reading any file smaller than 10 MB stays well under 1 GB of memory.

Each limit is a module constant (its default) and an environment variable of the same name
with the prefix ``PROBUNET_`` that raises (or lowers) it for one run, e.g.::

    PROBUNET_MAX_IMAGE_PIXELS=400000000 probunet data info big_slides/

:func:`value` reads the current setting (the variable, else the default) each time, so a test
or a long-lived napari session sees a change at once. ``docs/reliability.md`` lists them.
"""

from __future__ import annotations

import math
import os
import re

from napari_probunet.errors import LimitError, UserError

MAX_IMAGE_PIXELS = 1 << 25
"""Pixels (height x width, channels not counted) of one 2-D image or plane: 33,554,432, e.g.
5792 x 5792 or 4096 x 8192. Applies to PNG/JPEG/TIFF/NPY/NIfTI images, each plane of a NIfTI
volume, the image of a bundle, a recovery file's correction and synthetic datasets
(``--size``)."""

MAX_DECODED_BYTES = 1 << 29
"""Bytes (512 MiB) that the arrays read from one file may take *beyond the file's own size*.
A file may always decode to its own size (an uncompressed TIFF, a ``.nii``, a pickle's raw
buffers); this is the most that compression, or a buffer used many times, may add to it."""

MAX_HEADER_BYTES = 1 << 24
"""Bytes (16 MiB) of the JSON description in a file: a model file's or a training checkpoint's
header, a bundle's ``manifest.json``, a recovery file's ``info``. Real ones are kilobytes."""

MAX_MODEL_CHANNELS = 4096
"""Largest width a model configuration may give: channels of any U-Net level,
``fcomb_channels``, ``latent_dim``, ``in_channels`` and ``num_classes``."""

MAX_MODEL_LAYERS = 1024
"""Most convolution layers a model configuration may describe (levels x convolutions per block
in the U-Net, prior and posterior nets, plus fcomb's layers)."""

MAX_MODEL_PARAMETERS = 1 << 28
"""Most weights (268,435,456: 1 GiB in float32) a model configuration may describe. Counted on
PyTorch's ``meta`` device, which allocates nothing, before the real model is built."""

MAX_XML_BYTES = 1 << 24
"""Bytes (16 MiB) of an XML file parsed into memory: an LIDC-IDRI reading file (real ones are
0.1 to 2 MB). Checked on the file's size before it is parsed (a 16 MiB file of empty elements,
the worst case, takes about 400 MB while parsed); the masks it describes are then checked
against :data:`MAX_DECODED_BYTES` before they are allocated."""

MAX_OUTLINED_NODULES = 2000
"""Outlined nodules (an ``unblindedReadNodule`` with an outline, one per radiologist) in one
LIDC-IDRI reading file, and in all the reading files of one scan: grouping them into nodules
compares every pair. Real scans have a few to about a hundred."""

MAX_SERIES_INSTANCES = 4096
"""Most instances (files) of one series that a DICOMweb server's listing may name before a
retrieve starts (a CT series has a few hundred). Checked on the listing, before any download."""

MAX_RATERS = 64
"""Graders' (radiologists') masks of one case: the masks of a case folder, the ``mask-<r>``
folders of the LIDC-IDRI slices, a bundle's ``graders``. Each becomes an array (and in napari a
layer): real data have 1 to 4."""

MAX_HYPOTHESES = 1024
"""Hypotheses in one bundle (``probunet sample -n``, 16 by default). Each becomes a mask and,
in napari, a layer."""

#: every limit, by name (the environment variable is ``PROBUNET_<name>``)
NAMES = ("MAX_IMAGE_PIXELS", "MAX_DECODED_BYTES", "MAX_HEADER_BYTES", "MAX_MODEL_CHANNELS",
         "MAX_MODEL_LAYERS", "MAX_MODEL_PARAMETERS", "MAX_XML_BYTES",
         "MAX_OUTLINED_NODULES", "MAX_SERIES_INSTANCES", "MAX_RATERS", "MAX_HYPOTHESES")
_PREFIX = "PROBUNET_"
_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def env_name(name: str) -> str:
    """The environment variable that sets limit ``name`` (``PROBUNET_MAX_IMAGE_PIXELS``)."""
    return f"{_PREFIX}{name}"


def default(name: str) -> int:
    """The built-in value of limit ``name``."""
    if name not in NAMES:
        raise KeyError(f"no limit called {name!r}; limits: {', '.join(NAMES)}")
    return int(globals()[name])


def value(name: str) -> int:
    """The limit in force: ``$PROBUNET_<name>`` if set (``4096``, ``2_000_000``, ``1e9``,
    ``512M``, ``2G``), else the default. A malformed setting is a :class:`UserError`."""
    text = os.environ.get(env_name(name), "").strip()
    if not text:
        return default(name)
    m = re.fullmatch(r"([0-9_]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)\s*([kKmMgGtT]?)i?[bB]?", text)
    try:
        number = float(m[1].replace("_", "")) * _SUFFIXES[m[2].lower()] if m else math.nan
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= 1):
        raise UserError(
            f"{env_name(name)}={text!r} is not a positive number; unset it for the default "
            f"{default(name):,} or give e.g. {env_name(name)}={2 * default(name)}"
        )
    return int(number)


_LIMIT_CLASSES: dict[type, type] = {}


def limit_error(error: type[UserError]) -> type[UserError]:
    """``error`` that is also a :class:`LimitError` (a ``DataError`` stays a ``DataError`` for
    its callers, and anyone can still tell a limit from a damaged file)."""
    if issubclass(error, LimitError):
        return error
    if error not in _LIMIT_CLASSES:
        _LIMIT_CLASSES[error] = type(error.__name__, (error, LimitError),
                                     {"__module__": error.__module__,
                                      "__doc__": f"{error.__name__} over a stated limit."})
    return _LIMIT_CLASSES[error]


def _amount(amount: int) -> str:
    return f"{amount:,}" if amount < 10**15 else f"{amount:.3g}"


def check(name: str, amount: int | float, what: str, error: type[UserError] = LimitError,
          allowance: int = 0) -> None:
    """Refuse ``amount`` above limit ``name`` (plus ``allowance``, e.g. the file's own size
    for :data:`MAX_DECODED_BYTES`) with ``error`` (made a :class:`LimitError` too) naming the
    limit and how to raise it.

    ``what`` says what is measured, e.g. ``"scan.tif: the image (40000 x 40000 pixels)"``.
    """
    allowed = value(name) + max(0, int(allowance))
    if not amount > allowed:
        return
    need = int(min(amount - allowance, 10**18)) if math.isfinite(amount) else 10**18
    suggestion = max(need, 2 * value(name))
    declared = _amount(int(amount)) if math.isfinite(amount) else str(amount)
    raise limit_error(error)(
        f"{what} exceeds the limit {name} ({declared} > {_amount(allowed)}), so nothing was "
        f"allocated; if the input is intended and trustworthy, raise the limit: "
        f"{env_name(name)}={suggestion}"
    )


def check_plane(height: int, width: int, what: str, error: type[UserError] = LimitError) -> None:
    """Refuse a 2-D image of more than :data:`MAX_IMAGE_PIXELS` pixels."""
    check("MAX_IMAGE_PIXELS", int(height) * int(width),
          f"{what} ({int(height)} x {int(width)} pixels)", error)


def check_decoded(nbytes: int, file_bytes: int, what: str,
                  error: type[UserError] = LimitError) -> None:
    """Refuse decoding ``nbytes`` from a file of ``file_bytes`` bytes when that exceeds the
    file's own size by more than :data:`MAX_DECODED_BYTES`."""
    check("MAX_DECODED_BYTES", nbytes, f"{what} ({_amount(int(nbytes))} bytes decoded from a "
          f"{_amount(int(file_bytes))}-byte file)", error, allowance=file_bytes)


def array_bytes(shape, itemsize: int) -> int:
    """Bytes of an array of ``shape`` and ``itemsize`` (exact: Python integers never overflow)."""
    return math.prod(int(s) for s in shape) * int(itemsize)
