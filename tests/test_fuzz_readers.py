"""Fuzzing the newer readers with hypothesis (issue #30): DICOM headers, the member names of an
LIDC-IDRI-slices zip, and data-spec strings. Whatever the input, the only outcomes allowed
are a value or the project's own error class (:class:`napari_probunet.errors.UserError`)
with a message: never another exception, a crash or a hang."""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_probunet.data.lidc_slices import read_lidc_slices
from napari_probunet.data.readers import open_cases
from napari_probunet.data.volumes import read_dicom_series
from napari_probunet.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from test_volumes import write_series  # noqa: E402

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def accepted_or_refused(read, *args):
    """``read(*args)``: its value, or None when it raised a UserError with a message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read(*args)
        except UserError as exc:
            assert str(exc).strip(), f"{type(exc).__name__} without a message"
            return None


# ----------------------------------------------------------------------------- DICOM headers

#: text-valued number fields (IS, DS) and binary ones (US) a hostile header may fill
TEXT_TAGS = {0x00280008: "IS", 0x00200013: "IS", 0x00180050: "DS", 0x00180088: "DS",
             0x00281053: "DS", 0x00281052: "DS", 0x00280030: "DS", 0x00200032: "DS",
             0x00200037: "DS", 0x00280002: None, 0x00280010: None, 0x00280011: None,
             0x00280100: None}
texts = (st.sampled_from(["", " ", "one", "1e39", "-1e39", "nan", "inf", "-0", "99999999999",
                          "1\\2", "1\\2\\3", "0\\0\\0\\0\\0\\0", "1.5", "-7", "1" * 40])
         | st.text(alphabet="0123456789.-+eE\\ naif", max_size=16))
tag_values = st.dictionaries(st.sampled_from(sorted(TEXT_TAGS)),
                             texts | st.integers(0, 65535), min_size=1, max_size=5)


@pytest.fixture(scope="module")
def series_bytes() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as name:
        write_series(Path(name), n=3, order=(1, 0, 2), size=8)
        return {p.name: p.read_bytes() for p in sorted(Path(name).glob("*.dcm"))}


def _damaged(data: bytes, values: dict, first_only: bool) -> bytes:
    import pydicom
    from pydicom import config
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(io.BytesIO(data))
    for tag, value in values.items():
        vr = TEXT_TAGS[tag]
        if vr is None:  # US: two bytes
            raw, vr = int(value if isinstance(value, int) else len(value)).to_bytes(2, "little"), "US"
        else:
            raw = str(value).encode("ascii", "replace")
            raw += b" " * (len(raw) % 2)
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
    out = io.BytesIO()
    modes = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = \
        config.IGNORE
    try:
        ds.save_as(out)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = modes
    return out.getvalue()


@FUZZ
@given(values=tag_values, first_only=st.booleans())
def test_dicom_headers_give_a_volume_or_a_named_refusal(series_bytes, values, first_only):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for i, (file, data) in enumerate(series_bytes.items()):
            hostile = not first_only or i == 0
            (folder / file).write_bytes(_damaged(data, values, first_only) if hostile else data)
        volume = accepted_or_refused(read_dicom_series, folder)
        event("read" if volume is not None else "refused")
        if volume is not None:
            assert volume.data.ndim == 3 and np.all(np.isfinite(volume.affine))
            assert all(np.isfinite(s) and s > 0 for s in volume.spacing)


# ----------------------------------------------------------------------------- LIDC zip names


def _png(side: int = 4) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((side, side), 7, np.uint8)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()
digits = st.text(alphabet="0123456789", min_size=1, max_size=12) | st.sampled_from(
    ["7" * 5000, "0" * 30, "99999999999"])
member_names = st.builds(
    lambda prefix, patient, nodule, kind, rater, number, ext: (
        f"{prefix}LIDC-IDRI-{patient}/nodule-{nodule}/"
        f"{'images' if kind else 'mask-' + rater}/slice-{number}{ext}"),
    st.sampled_from(["", "set/", "../", "/abs/", "a/b/c/"]),
    st.text(alphabet="0123456789ABC-", max_size=6), digits, st.booleans(), digits, digits,
    st.sampled_from([".png", ".PNG", ".png.bak", ""]),
) | st.text(max_size=30)
contents = st.sampled_from([PNG, _png(6), b"", b"not a png", PNG[:20]])


@FUZZ
@given(members=st.lists(st.tuples(member_names, contents), min_size=1, max_size=12))
def test_lidc_zip_names_give_slices_or_a_named_refusal(members):
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "set.zip"
        good = [("LIDC-IDRI-0001/nodule-0/images/slice-0.png", PNG),
                 ("LIDC-IDRI-0001/nodule-0/mask-0/slice-0.png", PNG)]
        with zipfile.ZipFile(path, "w") as z:
            for member, data in good + members:
                try:
                    z.writestr(member, data)
                except (ValueError, IndexError):  # a name zipfile itself refuses
                    continue
        data = accepted_or_refused(read_lidc_slices, path, "skip", False)
        event("read" if data is not None else "refused")
        if data is not None:
            assert len(data) >= 1 and data[0].masks.ndim == 3
        shutil.rmtree(name, ignore_errors=True)


# ----------------------------------------------------------------------------- data specs

fragments = st.lists(st.sampled_from(["part=train", "part=val", "part=test", "part=", "part",
                                      "fractions=0.5,0.25,0.25", "fractions=1,0,0",
                                      "fractions=nan,0,1", "fractions=-1,1,1", "fractions=",
                                      "seed=-1", "seed=0", "seed=" + "9" * 40, "seed=1e3",
                                      "by=patient", "by=case", "by=nodule", "by=x", "=", "&",
                                      "#", "part=test#part=train"]), max_size=5).map("&".join)


@FUZZ
@given(fragment=fragments | st.text(max_size=30))
def test_split_specs_give_cases_or_a_named_refusal(fragment):
    cases = accepted_or_refused(open_cases, f"synthetic:lesions?n=12&size=8&seed=1#{fragment}")
    if cases is not None:
        assert len(cases) >= 1


@FUZZ
@given(spec=st.text(alphabet="synthetic:lesionsflips?n=&seedsize0123456789-.e", max_size=40))
def test_synthetic_specs_give_cases_or_a_named_refusal(spec):
    cases = accepted_or_refused(open_cases, spec if spec.startswith("synthetic:")
                                else f"synthetic:{spec}")
    if cases is not None:
        assert len(cases) >= 0
