"""The plugin as napari meets it: one manifest for wheel and editable installs, a light import."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


def test_editable_install_manifest_validates_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    out = _run(str(npe2), "validate", "napari-probunet", "--imports")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_package_manifest_is_the_root_manifest():
    packaged = ROOT / "napari_probunet" / "napari.yaml"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("dist")
    res = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
               "-w", str(out_dir), str(ROOT))
    assert res.returncode == 0, res.stdout + res.stderr
    (whl,) = out_dir.glob("napari_probunet-*.whl")
    return whl


def test_wheel_ships_manifest_entry_point_and_default_model(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read("napari_probunet/napari.yaml").decode() == (ROOT / "napari.yaml").read_text()
        (ep,) = [n for n in names if n.endswith("entry_points.txt")]
        text = zf.read(ep).decode()
    assert "[napari.manifest]" in text and "napari_probunet:napari.yaml" in text
    assert "probunet = napari_probunet.cli:main" in text
    from napari_probunet.model.modelfile import BUNDLED_MODELS

    for bundled in BUNDLED_MODELS:
        if bundled.path.exists():
            assert f"napari_probunet/models/{bundled.file}" in names
    assert "napari_probunet/samples/lidc_test_slices.npz" in names


def test_wheel_install_validates_in_a_scratch_environment(wheel, tmp_path):
    """Install the wheel alone into a scratch folder and let npe2 find and validate it there.

    ``python -S`` skips site processing, so the development (editable) install's import hook
    is not active; the scratch folder comes first on the path, then the dependencies.
    """
    target = tmp_path / "site"
    res = _run(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel))
    assert res.returncode == 0, res.stdout + res.stderr
    deps = sysconfig.get_paths()["purelib"]
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(target)!r}, {deps!r}]\n"
        "import napari_probunet\n"
        f"assert napari_probunet.__file__.startswith({str(target)!r}), napari_probunet.__file__\n"
        "from npe2 import PluginManifest\n"
        "m = PluginManifest.from_distribution('napari-probunet')\n"
        "m.validate_imports()\n"
        "print('valid', m.name, len(m.contributions.commands))\n"
    )
    out = _run(sys.executable, "-S", "-c", code)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("valid napari-probunet")
