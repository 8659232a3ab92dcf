"""The package's layers and the direction of its imports (docs/architecture.md).

    manifest (_widget, _reader, _scan_reader, _writer, _sample_data)
      -> gui -> review -> session -> model -> base
    cli -> training -> review -> session -> model / data -> base

Read from the source (every ``import`` anywhere in a module, including inside functions, and
every module path named in a string, such as the command line's dispatch table), so a
violation fails here before it surprises anyone at run time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "napari_probunet"

BASE = {"__init__", "errors", "limits", "device", "files", "iou"}
MANIFEST = {"_widget", "_reader", "_scan_reader", "_seg_reader", "_writer", "_sample_data"}
#: which layers each layer may import (its own included)
ALLOWED = {
    "base": {"base"},
    "data": {"base", "data"},
    "model": {"base", "model"},
    "session": {"base", "model", "session"},
    "review": {"base", "data", "model", "session", "review"},
    "training": {"base", "data", "model", "session", "review", "training"},
    "cli": {"base", "data", "model", "session", "review", "training", "cli"},
    "gui": {"base", "data", "model", "session", "review", "gui"},
    "manifest": {"base", "data", "model", "session", "review", "gui", "manifest"},
}
GUI_LIBRARIES = {"qtpy", "napari", "magicgui", "superqt", "vispy", "PyQt5", "PyQt6", "PySide2",
                 "PySide6", "app_model", "npe2"}
_MODULE_STRING = re.compile(r"^napari_probunet(\.[A-Za-z_]\w*)+$")


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name inside the package (``napari_probunet.x.y``)."""
    parts = module.split(".")[1:] or ["__init__"]
    head = parts[0]
    if head in BASE:
        return "base"
    if head in MANIFEST:
        return "manifest"
    if head in {"data", "model", "session", "review", "training", "cli", "gui"}:
        return head
    return None


def _is_module(package_root: Path, name: str) -> bool:
    return (package_root / name).is_dir() or (package_root / f"{name}.py").is_file()


def imports_of(path: Path, package_root: Path) -> list[tuple[int, str]]:
    """Every module this file imports or names: (line, dotted name)."""
    package = ".".join(path.relative_to(package_root.parent).parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # ``from napari_probunet import review`` imports the subpackage
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names
                      if name == package_root.name and _is_module(package_root, alias.name)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _MODULE_STRING.match(node.value):
                found.append((node.lineno, node.value))
    return found


def violations(package_root: Path = PACKAGE) -> list[str]:
    """Every import that goes against the layers, as ``file:line: what``."""
    problems = []
    name = package_root.name
    for path in sorted(package_root.rglob("*.py")):
        here = layer_of(".".join(path.relative_to(package_root.parent).with_suffix("").parts))
        where = f"{path.relative_to(package_root.parent)}"
        if here is None:
            problems.append(f"{where}: in no layer (name its layer in tests/test_architecture.py "
                            "and docs/architecture.md)")
            continue
        for line, target in imports_of(path, package_root):
            top = target.split(".")[0]
            if top in GUI_LIBRARIES and here not in {"gui", "manifest"}:
                problems.append(f"{where}:{line}: imports {target} (Qt/napari only in gui/ "
                                "and the manifest modules)")
            if top != name or target == name:
                continue
            there = layer_of(target)
            if there is not None and there not in ALLOWED[here]:
                problems.append(f"{where}:{line}: {here} imports {target} ({there})")
    return problems


def test_imports_follow_the_layers():
    assert violations() == []


def test_the_check_catches_an_upward_import_and_qt_outside_the_gui(tmp_path):
    """The checker itself can fail: a model module importing review, a review module importing
    qtpy, and a dispatch-table string naming the gui from the session are all reported."""
    root = tmp_path / "napari_probunet"
    for folder in ("model", "review", "gui"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "model" / "network.py").write_text(
        "def f():\n    from napari_probunet.review import export\n")
    (root / "review" / "state.py").write_text("from qtpy.QtCore import QObject\n")
    (root / "session.py").write_text("TABLE = {'x': 'napari_probunet.gui.launch'}\n")
    (root / "gui" / "widget.py").write_text(
        "from napari_probunet.review import state\nimport napari\n")
    (root / "helpers.py").write_text("")
    found = violations(root)
    assert len(found) == 4, found
    assert any("helpers.py: in no layer" in v for v in found)
    assert any("model imports napari_probunet.review" in v for v in found)
    assert any("review/state.py:1: imports qtpy.QtCore" in v for v in found)
    assert any("session imports napari_probunet.gui.launch" in v for v in found)


@pytest.mark.parametrize("module, layer", [
    ("napari_probunet", "base"), ("napari_probunet.files", "base"),
    ("napari_probunet._widget", "manifest"), ("napari_probunet.gui.review.widget", "gui"),
    ("napari_probunet.review.export", "review"), ("napari_probunet.model.network", "model"),
])
def test_every_module_has_a_layer(module, layer):
    assert layer_of(module) == layer
