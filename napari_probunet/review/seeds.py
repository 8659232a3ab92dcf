"""Per-case seeds: the two rules every command uses to make a run reproducible.

Two ideas, one function each:

- :func:`seed_for_index` — the ``index``-th image of a dataset read in order (``probunet
  evaluate``, ``probunet assess``): ``SeedSequence([seed, index, stream])``. A *stream* keeps
  the draws of different purposes for the same image independent (:data:`STREAM_SAMPLES`,
  :data:`STREAM_ORACLE`, :data:`STREAM_REFERENCE`); a new purpose takes a new stream number.
- :func:`seed_for_case_id` — a case named by its id (``probunet sample``): a hash of the run
  seed and the case id (:data:`CASE_ID_SEED_RULE`), so the seed does not depend on the order
  of the cases or on how many processes share them out, and a resumed or re-sharded run draws
  the same hypotheses for every case.
- **Stacks** (the slices of one volume): every slice of a stack is sampled with the stack's
  one seed (:data:`STACK_SEED_RULE`; for ``probunet sample`` the seed of the volume's id), so
  hypothesis ``i`` is one draw shared by all the slices: the review's *All slices*, ``probunet
  sample`` on a volume and a nodule's 3D hypotheses (:mod:`napari_probunet.review.nodule`,
  ``stack_seed``) all follow it, and the same stack gives the same hypotheses everywhere.

Both return integers below ``2**32`` (the case-id rule below ``2**31``, so it can be typed into
the review widget's seed box). The numbers are part of the results (bundles, CSVs, reports) and
of the tests: never change a rule, add a new one.
"""

from __future__ import annotations

import hashlib

import numpy as np

from napari_probunet.errors import InputError

#: stream of :func:`seed_for_index` for the model's samples of an image (``probunet evaluate``)
STREAM_SAMPLES = 0
#: stream for the oracle's draw from the true modes (``probunet evaluate``)
STREAM_ORACLE = 1
#: stream for the reference samples that set the outlier thresholds (``probunet assess``)
STREAM_REFERENCE = 2

#: how :func:`seed_for_case_id` derives a case's seed (written into every bundle and summary)
CASE_ID_SEED_RULE = (
    "seed = int.from_bytes(sha256(f'{run_seed}:{case_id}'.encode('utf-8', 'surrogateescape'))"
    ".digest()[:4], 'big') & 0x7FFFFFFF"
)

#: how the slices of one stack (a volume) are seeded (written into every bundle of a slice)
STACK_SEED_RULE = (
    "every slice of a volume uses the volume's seed: seed_for_case_id(run_seed, volume case id) "
    "(one latent draw per hypothesis, shared by the slices)"
)


def seed_for_index(seed: int, index: int, stream: int = STREAM_SAMPLES) -> int:
    """A 32-bit seed for image ``index`` of a dataset and one purpose (``stream``)."""
    return int(np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(1)[0])


def seed_for_case_id(run_seed: int, case_id: str) -> int:
    """The seed of one case: stable across runs, machines and process counts
    (:data:`CASE_ID_SEED_RULE`). 31 bits, so it can be typed into the review widget's seed box
    to redraw the same set."""
    digest = hashlib.sha256(id_bytes(f"{int(run_seed)}:{case_id}")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


#: how the slices of a stack share their draws: ``shared`` (the rule) or ``independent``
COUPLINGS = ("shared", "independent")


def stack_seed(seed: int, k: int, coupling: str) -> int:
    """The seed slice ``k`` of a stack is sampled with: the stack's own seed for every slice
    (``"shared"``, one draw per hypothesis), or ``seed_for_index(seed, k)`` (``"independent"``)."""
    if coupling == "shared":
        return int(seed)
    if coupling == "independent":
        return seed_for_index(int(seed), int(k))
    raise InputError(f"coupling must be one of {', '.join(COUPLINGS)}, not {coupling!r}")


def id_bytes(text: str) -> bytes:
    """A case id as bytes, for hashing: UTF-8, and a file name's undecodable bytes as they are.

    Python reads a file name that is not valid UTF-8 (``b"scan\\xff.npy"``) as a string with
    lone surrogates (``"scan\\udcff.npy"``); ``surrogateescape`` turns them back into the
    file's own bytes (as ``os.fsencode`` does), so such a case gets a seed instead of a crash.
    Any other lone surrogate is kept as its UTF-8-style bytes (``surrogatepass``).
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
