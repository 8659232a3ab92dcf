"""The radiologists' LIDC-IDRI reading files on a whole scan: one 3D mask per radiologist per
nodule, on the series' own voxels; the same nodule found in every radiologist's reading; a
reading file that cannot be used becomes a note, and the scan still opens."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from napari_probunet.data.lidc_scan import read_scan_folder
from napari_probunet.data.lidc_xml import (
    ReadingFileError,
    fill_outline,
    read_reading_file,
)
from napari_probunet.data.volumes import Volume

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCAN = DATA / "lidc-idri-scans" / "LIDC-IDRI-0001"
SLICES = DATA / "lidc-idri-slices" / "LIDC-IDRI-0001" / "nodule-0"
SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
NS = "{http://www.nih.gov}"
real = pytest.mark.skipif(not SCAN.is_dir(), reason="../shared/data/lidc-idri-scans absent")


# ----------------------------------------------------------------------------- helpers


def square(top: int, left: int, side: int) -> list[tuple[int, int]]:
    """An outline traced pixel by pixel (row, column) around a side x side square."""
    b, r = top + side - 1, left + side - 1
    return ([(top, c) for c in range(left, r + 1)] + [(row, r) for row in range(top + 1, b + 1)]
            + [(b, c) for c in range(r - 1, left - 1, -1)]
            + [(row, left) for row in range(b - 1, top, -1)])


def roi(k: int | None, outline, inclusion=True, uid=None, z=None) -> str:
    uid = uid if uid is not None else f"9.9.{k}"
    z = z if z is not None else 2.5 * k
    edges = "".join(f"<edgeMap><xCoord>{c}</xCoord><yCoord>{r}</yCoord></edgeMap>"
                    for r, c in outline)
    return (f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{uid}</imageSOP_UID>"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>")


def reading_xml(sessions: list[list[str]], series: str = "9.9", extra: str = "") -> str:
    """A reading file: each session a list of nodules, each nodule its ROIs' XML joined."""
    body = ""
    for s, nodules in enumerate(sessions):
        body += (f"<readingSession><servicingRadiologistID>{100 + s}</servicingRadiologistID>"
                 + "".join(f"<unblindedReadNodule><noduleID>n{s}.{i}</noduleID>{rois}"
                           "</unblindedReadNodule>" for i, rois in enumerate(nodules))
                 + "</readingSession>")
    return ('<?xml version="1.0" encoding="UTF-8"?>' + extra
            + '<LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader>'
            f"<SeriesInstanceUid>{series}</SeriesInstanceUid></ResponseHeader>{body}"
            "</LidcReadMessage>")


def small_volume(slices=6, size=40, spacing=(2.5, 0.7, 0.7)) -> Volume:
    """A series of ``slices`` axial slices; slice k has SOPInstanceUID 9.9.k at z = 2.5 k."""
    return Volume(
        data=np.zeros((slices, size, size), np.int16), spacing=spacing, affine=np.eye(4),
        name="t", path="t", format="dicom", file_shape=(size, size, slices),
        file_affine=np.eye(4), axes=(2, 1, 0), units="HU", info={"series_uid": "9.9"},
        slice_uids=tuple(f"9.9.{k}" for k in range(slices)),
        slice_positions=np.array([[0.0, 0.0, spacing[0] * k] for k in range(slices)]))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scan():
    return read_scan_folder(SCAN)


@pytest.fixture
def scan_folder(tmp_path) -> Path:
    """The real scan (its ct/ linked, not copied) with the real reading file."""
    folder = tmp_path / "LIDC-IDRI-0001"
    (folder / "annotations").mkdir(parents=True)
    (folder / "ct").symlink_to(SCAN / "ct", target_is_directory=True)
    (folder / "annotations" / "069.xml").write_bytes((SCAN / "annotations/069.xml").read_bytes())
    return folder


def outlined_slices(volume: Volume) -> list[list[int]]:
    """Per reading session, the slices of its outlines of more than one point, found
    independently of the reader: the stdlib parser and the series' SOPInstanceUIDs."""
    root = ET.parse(SCAN / "annotations" / "069.xml").getroot()
    out = []
    for session in root.iter(f"{NS}readingSession"):
        ks = [volume.slice_uids.index(r.findtext(f"{NS}imageSOP_UID").strip())
              for n in session.iter(f"{NS}unblindedReadNodule") for r in n.iter(f"{NS}roi")
              if len(r.findall(f"{NS}edgeMap")) > 1]
        out.append(sorted(ks))
    return out


# ----------------------------------------------------------------------------- the real scan


@real
def test_the_four_radiologists_outline_one_nodule_on_the_slices_they_drew(scan):
    assert [r.name for r in scan.radiologists] == [f"radiologist {i}" for i in (1, 2, 3, 4)]
    assert [r.servicing_id for r in scan.radiologists] == [
        "540461523", "1428348137", "-750896469", "2103845659"]
    assert scan.volume.info["series_uid"] == SERIES and scan.volume.data.shape == (133, 512, 512)
    (nodule,) = scan.nodules
    assert nodule.reader_ids == (0, 1, 2, 3) and nodule.masks.shape[0] == 4
    expected = outlined_slices(scan.volume)
    assert [len(e) for e in expected] == [8, 7, 8, 9]
    for r in range(4):
        assert list(nodule.slices(r)) == expected[r]
        full = nodule.full_mask(r)
        assert full.shape == scan.volume.data.shape
        assert sorted(np.flatnonzero(full.any(axis=(1, 2)))) == expected[r]
    assert nodule.nodule_ids[0] == "Nodule 001" and nodule.nodule_ids[3] == "0"
    # about 30 mm across, a few cm^3, in the soft-tissue range of HU
    diameters = [nodule.diameter_mm(r) for r in range(4)]
    assert all(28 < d < 38 for d in diameters), diameters
    assert all(5000 < nodule.volume_mm3(r) < 10000 for r in range(4))
    hu = scan.volume.data[nodule.full_mask(0)]
    assert -300 < float(np.median(hu)) < 100
    assert [n.kind for n in scan.points].count("small nodule") == 9
    assert [n.kind for n in scan.points].count("non-nodule") == 13
    assert any("LIDC-IDRI-0001_Combined_SEG.dcm" in n and "not read" in n for n in scan.notes)


@real
def test_the_series_knows_each_slices_sop_instance_uid_and_position(scan):
    v = scan.volume
    assert len(v.slice_uids) == 133 and len(set(v.slice_uids)) == 133
    assert all(uid.startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.") for uid in v.slice_uids)
    assert v.slice_positions.shape == (133, 3)
    for k in (0, 90, 132):  # the data's slice k is where its affine puts voxel (k, 0, 0)
        assert np.allclose(v.lps_affine @ [k, 0, 0, 1], [*v.slice_positions[k], 1])
    assert "slice_uids" not in v.source()  # the export record stays small


@real
@pytest.mark.skipif(not SLICES.is_dir(), reason="../shared/data/lidc-idri-slices absent")
def test_without_outline_pixels_the_masks_are_the_lidc_slices_sets_voxel_for_voxel(scan):
    """The slices set (pylidc's convention: LIDC told its readers to draw just outside the
    nodule) equals our masks with ``include_outline=False`` on every pixel of its 9 crops;
    the default keeps the outline pixels, so each slice holds the set's mask and its rim."""
    from PIL import Image

    lean = read_reading_file(SCAN / "annotations" / "069.xml", scan.volume,
                             include_outline=False)
    (nodule,) = scan.nodules
    z0 = min(n.bbox[0] for n in lean.nodules)
    for n in lean.nodules:
        crops = np.stack([np.asarray(Image.open(SLICES / f"mask-{n.radiologist}" /
                                                f"slice-{i}.png")) > 127 for i in range(9)])
        full = np.zeros(scan.volume.data.shape, bool)
        a = n.bbox
        full[a[0]:a[1], a[2]:a[3], a[4]:a[5]] = n.mask
        ours = full[z0:z0 + 9]
        top = np.flatnonzero(ours.any((0, 2)))[0] - np.flatnonzero(crops.any((0, 2)))[0]
        left = np.flatnonzero(ours.any((0, 1)))[0] - np.flatnonzero(crops.any((0, 1)))[0]
        assert np.array_equal(ours[:, top:top + 128, left:left + 128], crops)
        assert ours.sum() == crops.sum()
        default = nodule.full_mask(n.radiologist)[z0:z0 + 9]
        assert np.all(default[ours]) and default.sum() > ours.sum()
        assert default.sum() < 1.3 * ours.sum()


@real
def test_the_nodule_is_stored_in_its_box_with_a_margin_and_centred_on_its_slices(scan):
    (nodule,) = scan.nodules
    z, y, x = nodule.centroid_voxel
    assert 86 <= z <= 94 and nodule.union[int(round(z)) - nodule.bbox[0]].any()
    z0, z1, y0, y1, x0, x1 = nodule.bbox
    assert z0 == 85 and z1 == 96  # slices 86..94 and one of margin each side


# ----------------------------------------------------------------------------- filling


def test_a_square_outline_fills_to_exactly_the_square_with_its_outline_pixels():
    outline = np.array(square(2, 3, 5))
    mask = fill_outline(outline[:, 0], outline[:, 1], (10, 12))
    expected = np.zeros((10, 12), bool)
    expected[2:7, 3:8] = True
    assert np.array_equal(mask, expected)
    inside = fill_outline(outline[:, 0], outline[:, 1], (10, 12), with_outline=False)
    expected[:] = False
    expected[3:6, 4:7] = True
    assert np.array_equal(inside, expected)


def test_a_diamond_keeps_its_slanted_outline_pixels():
    pts = np.array([(0, 4), (4, 8), (8, 4), (4, 0)])  # only the corners: the edges are drawn
    mask = fill_outline(pts[:, 0], pts[:, 1], (9, 9))
    rr, cc = np.mgrid[0:9, 0:9]
    assert np.array_equal(mask, np.abs(rr - 4) + np.abs(cc - 4) <= 4)


def test_an_exclusion_outline_cuts_a_hole_and_keeps_its_rim(tmp_path):
    xml = reading_xml([[roi(2, square(5, 5, 20)) + roi(2, square(10, 10, 8), inclusion=False)
                        + roi(3, square(6, 6, 18))]])
    reading = read_reading_file(write(tmp_path / "a.xml", xml), small_volume())
    (n,) = reading.nodules
    assert n.slices == (2, 3) and n.bbox[:2] == (2, 4)
    full = np.zeros((6, 40, 40), bool)
    full[n.bbox[0]:n.bbox[1], n.bbox[2]:n.bbox[3], n.bbox[4]:n.bbox[5]] = n.mask
    hole = np.zeros((40, 40), bool)
    hole[11:17, 11:17] = True  # strictly inside the excluded square
    expected = np.zeros((40, 40), bool)
    expected[5:25, 5:25] = True
    assert np.array_equal(full[2], expected & ~hole)
    assert full[2, 10, 10:18].all()  # the hole's outline is the nodule's edge
    assert full[3, 11:17, 11:17].all()  # the hole is on its own slice only
    lean = read_reading_file(tmp_path / "a.xml", small_volume(), include_outline=False)
    m = lean.nodules[0].mask[0]  # without outline pixels: the rim goes with the hole
    assert lean.nodules[0].bbox[2] == 5 and not m[10 - 5, 10 - 5:18 - 5].any()
    assert m.sum() == 18 * 18 - 8 * 8


def test_slices_are_found_by_uid_then_by_z_within_half_a_step(tmp_path):
    nodules = [[roi(1, square(4, 4, 6), uid="1.2.unknown", z=2.5 * 1 + 1.0),  # z: slice 1
                roi(2, square(4, 4, 6), uid="9.9.2", z=-999),  # the UID wins over z
                roi(None, square(4, 4, 6), uid="1.2.gone", z=2.5 * 5 + 1.3)]]  # past the end
    reading = read_reading_file(write(tmp_path / "z.xml", reading_xml([nodules])),
                                small_volume())
    assert reading.nodules[0].slices == (1, 2)
    (note,) = reading.notes
    assert "z.xml" in note and "on a slice the series lacks" in note and "13.8" in note


def test_single_point_nodules_and_non_nodules_are_points(tmp_path):
    xml = reading_xml([[roi(1, [(7, 9)])]]).replace(
        "</readingSession>", "<nonNodule><nonNoduleID>nn</nonNoduleID><imageZposition>5"
        "</imageZposition><imageSOP_UID>9.9.2</imageSOP_UID><locus><xCoord>3</xCoord>"
        "<yCoord>4</yCoord></locus></nonNodule></readingSession>")
    reading = read_reading_file(write(tmp_path / "p.xml", xml), small_volume())
    assert reading.nodules == []
    assert [(p.kind, p.voxel) for p in reading.points] == [("small nodule", (1, 7, 9)),
                                                           ("non-nodule", (2, 4, 3))]


# ----------------------------------------------------------------------------- grouping


def test_same_nodule_grouped_across_radiologists_never_within_one(tmp_path):
    """Radiologist 1 outlines two touching nodules; radiologist 2 one that overlaps both
    (nearer the first); radiologist 3 one far away. Three nodules: r1's two stay apart."""
    r1 = [roi(2, square(5, 5, 8)), roi(2, square(5, 14, 8))]  # one empty column between
    r2 = [roi(2, square(6, 6, 8))]  # overlaps r1's first, touches its second (0.7 mm)
    r3 = [roi(4, square(28, 28, 6))]
    xml = reading_xml([[r1[0], r1[1]], [r2[0]], [r3[0]]])
    folder = tmp_path / "scan"
    (folder / "annotations").mkdir(parents=True)
    write(folder / "annotations" / "r.xml", xml)
    from napari_probunet.data.lidc_scan import group_nodules

    reading = read_reading_file(folder / "annotations" / "r.xml", small_volume())
    nodules = group_nodules(reading.nodules, 3, (6, 40, 40), (2.5, 0.7, 0.7))
    assert sorted(sorted(n.nodule_ids.items()) for n in nodules) == [
        [(0, "n0.0"), (1, "n1.0")], [(0, "n0.1")], [(2, "n2.0")]]
    assert [n.index for n in nodules] == [0, 1, 2]  # numbered along the scan: slice, row, ...
    assert [n.centroid_voxel for n in nodules] == sorted(n.centroid_voxel for n in nodules)
    for n in nodules:
        for r in range(3):
            assert n.masks[r].any() == (r in n.reader_ids)  # empty for who did not draw it
    # with a tolerance too small for touching pixels, radiologist 2's still overlaps the first
    tight = group_nodules(reading.nodules, 3, (6, 40, 40), (2.5, 0.7, 0.7), tolerance_mm=0.1)
    assert sorted(n.reader_ids for n in tight) == [(0,), (0, 1), (2,)]
    # outlines on neighbouring slices are one nodule; two slices apart (5 mm) they are not
    near = reading_xml([[roi(2, square(5, 5, 8))], [roi(3, square(5, 5, 8))]])
    far = reading_xml([[roi(1, square(5, 5, 8))], [roi(3, square(5, 5, 8))]])
    for text, count in ((near, 1), (far, 2)):
        rd = read_reading_file(write(tmp_path / "g.xml", text), small_volume())
        assert len(group_nodules(rd.nodules, 2, (6, 40, 40), (2.5, 0.7, 0.7))) == count


# ----------------------------------------------------------------------------- hostile files


BOMB = ('<!DOCTYPE LidcReadMessage [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;">]>')
XXE = '<!DOCTYPE LidcReadMessage [<!ENTITY x SYSTEM "file:///etc/passwd">]>'


def _outline_ok() -> str:
    return roi(0, square(100, 100, 10), uid="x", z=-125.0)


HOSTILE = {
    "malformed": (lambda: reading_xml([[_outline_ok()]], SERIES)[:-40], "not well-formed XML"),
    "another series": (lambda: reading_xml([[_outline_ok()]], "1.2.3.4"),
                       "describes another series"),
    "not a reading file": (lambda: "<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/"
                           "svg'><g/></svg>", "not an LIDC-IDRI reading file"),
    "chest radiographs": (lambda: "<IdriReadMessage xmlns='http://www.nih.gov'>"
                          "<CXRreadingSession/></IdriReadMessage>", "chest radiograph"),
    "billion laughs": (lambda: reading_xml([[_outline_ok()]], SERIES, BOMB).replace(
        "<noduleID>n0.0", "<noduleID>&c;"), "declares entities"),
    "external entity": (lambda: reading_xml([[_outline_ok()]], SERIES, XXE).replace(
        "<noduleID>n0.0", "<noduleID>&x;"), "declares entities"),
    "a broken coordinate": (lambda: reading_xml([[_outline_ok()]], SERIES).replace(
        "<xCoord>100</xCoord>", "<xCoord>1e999</xCoord>", 1), "not a whole number"),
}


@real
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_bad_reading_file_is_a_note_and_the_scan_still_opens(scan_folder, case):
    make, message = HOSTILE[case]
    write(scan_folder / "annotations" / "bad.xml", make())
    opened = read_scan_folder(scan_folder)
    (note,) = [n for n in opened.notes if "bad.xml" in n]
    assert message in note and "scan opened without this file's outlines" in note
    assert len(opened.nodules) == 1 and len(opened.radiologists) == 4  # 069.xml still read
    assert "passwd" not in repr(opened.nodules[0].nodule_ids)


@real
def test_outlines_on_slices_the_series_lacks_are_left_out_with_a_note(scan_folder):
    lost = roi(None, square(100, 100, 10), uid="1.2.3.missing", z=999.0)
    kept = roi(None, square(200, 200, 10), uid=None, z=-200.0)  # no such UID, a real z
    write(scan_folder / "annotations" / "z.xml", reading_xml([[lost, kept]], SERIES))
    opened = read_scan_folder(scan_folder)
    (note,) = [n for n in opened.notes if "z.xml" in n]
    assert "1 outline(s) left out, on a slice the series lacks" in note and "z 999" in note
    assert len(opened.radiologists) == 5 and len(opened.nodules) == 2
    (extra,) = [n for n in opened.nodules if n.reader_ids == (4,)]
    k = int(np.argmin(np.abs(opened.volume.slice_positions[:, 2] + 200.0)))
    assert extra.slices(4) == (k,)


def _corner_to_corner() -> str:
    """A nodule of two 2-point outlines, on the first slice and the last, in opposite
    corners: a few hundred bytes that ask for a 133 x 512 x 512 box (35 MB)."""
    return (roi(None, [(0, 0), (0, 1)], uid="a", z=-340.0)
            + roi(None, [(511, 511), (511, 510)], uid="b", z=-340.0 + 2.5 * 132))


@real
@pytest.mark.parametrize("limit, value, make", [
    ("PROBUNET_MAX_XML_BYTES", "1000", lambda: reading_xml([[_outline_ok()]], SERIES)),
    ("PROBUNET_MAX_OUTLINED_NODULES", "3",
     lambda: reading_xml([[_outline_ok()] for _ in range(4)], SERIES)),
    # 80 MB: the CT (139 MB decoded from 70 MB of files) still opens; 4 x 35 MB of masks not
    ("PROBUNET_MAX_DECODED_BYTES", "80000000",
     lambda: reading_xml([[_corner_to_corner() for _ in range(4)]], SERIES)),
])
def test_a_reading_file_over_a_limit_is_refused_before_allocating(scan_folder, monkeypatch,
                                                                  limit, value, make):
    write(scan_folder / "annotations" / "huge.xml", make())
    write(scan_folder / "annotations" / "069.xml", "<x/>")  # so only huge.xml is at stake
    monkeypatch.setenv(limit, value)
    opened = read_scan_folder(scan_folder)
    (note,) = [n for n in opened.notes if "huge.xml" in n]
    assert limit.removeprefix("PROBUNET_") in note and limit in note
    assert opened.volume.data.shape == (133, 512, 512) and opened.nodules == []


@real
def test_files_each_within_the_count_limit_but_over_it_together_keep_the_ct(scan_folder,
                                                                           monkeypatch):
    write(scan_folder / "annotations" / "more.xml",
          reading_xml([[_outline_ok()], [_outline_ok()]], SERIES))
    monkeypatch.setenv("PROBUNET_MAX_OUTLINED_NODULES", "4")  # 4 in 069.xml, 2 here: 6
    opened = read_scan_folder(scan_folder)
    assert opened.reading_files and len(opened.radiologists) == 6 and opened.nodules == []
    (note,) = [n for n in opened.notes if "MAX_OUTLINED_NODULES" in n]
    assert "without the radiologists' outlines" in note and note in opened.problems


def test_an_unusable_file_alone_raises_a_reading_file_error(tmp_path):
    with pytest.raises(ReadingFileError, match=r"nope\.xml: not well-formed XML"):
        read_reading_file(write(tmp_path / "nope.xml", "<LidcReadMessage"), small_volume())
    with pytest.raises(ReadingFileError, match="cannot read"):
        read_reading_file(tmp_path / "absent.xml", small_volume())


def test_a_folder_without_ct_is_not_a_scan(tmp_path):
    from napari_probunet.errors import DataError

    with pytest.raises(DataError, match="no ct/ subfolder"):
        read_scan_folder(tmp_path)
