"""The review widget's parts talk through the controller, never to each other or the widget.

``gui/review/widget.py`` composes the parts (one per box or concern: the model panel, the
region tool, the sampler, ...). Each part gets the review controller
(:class:`napari_probunet.review.controller.ReviewController`), the viewer and the job runner
(plus its own Qt parent) and reacts to the controller's events. Read from the source with
``ast``, a *reach-in* is any of:

- an attribute reached through the widget: ``self.widget.x``, ``widget.x``, ``w.x``,
  ``g.widget``, or ``parent.x`` beyond the Qt parent's ``destroyed`` signal;
- an attribute named after a sibling part (``self.model_panel``, ``x.sampler``, ...; the
  names are those the widget gives its parts, read from ``widget.py``);
- a part module importing a sibling part's module.

There must be none, and adding one must fail (the counter is tried on snippets below).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GUI_REVIEW = Path(__file__).resolve().parents[1] / "napari_probunet" / "gui" / "review"
PACKAGE = "napari_probunet.gui.review"
#: names that denote the review widget inside a part
WIDGET_NAMES = {"widget", "w"}
#: what a part may touch on its Qt parent (the QObject it is given)
PARENT_API = {"destroyed"}
#: given to every part: not a sibling
SHARED = {"controller", "runner", "jobs", "viewer", "state"}


def parts_of_widget(source: str) -> dict[str, str]:
    """``{attribute: module}`` of the parts the widget composes: each ``self.x = Class(...)``
    in ``ReviewWidget`` whose class is imported from a module of this package."""
    tree = ast.parse(source)
    module_of = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            for alias in node.names:
                module_of[alias.asname or alias.name] = node.module.rsplit(".", 1)[1]
    parts = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        if not (isinstance(func, ast.Name) and func.id in module_of):
            continue
        for target in node.targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                    and target.value.id == "self":
                parts[target.attr] = module_of[func.id]
    return {name: module for name, module in parts.items() if name not in SHARED}


def _chain(node: ast.Attribute) -> list[str]:
    """``self.widget.jobs.start`` -> ``["self", "widget", "jobs", "start"]`` (a chain that
    starts at a call or a subscript starts with ``"()"``)."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    names.append(node.id if isinstance(node, ast.Name) else "()")
    return names[::-1]


def _why(chain: list[str], siblings: set[str]) -> str | None:
    """Why ``chain`` reaches into the widget or a sibling part (None: it does not)."""
    for k, name in enumerate(chain):
        if name in WIDGET_NAMES:
            return "the widget"
        if name == "parent" and k + 1 < len(chain) and chain[k + 1] not in PARENT_API:
            return "the widget"
        if k > 0 and name in siblings:
            return "a sibling part"
    return None


def reach_ins(source: str, module: str, parts: dict[str, str]) -> list[str]:
    """The reach-ins of ``source`` (the text of part module ``module``, e.g. ``"sampling"``)
    into the widget or into sibling ``parts`` (``{attribute: module}``): one line each, one
    per attribute chain (``self.widget.jobs.start(...)`` is one)."""
    siblings = {name for name, mod in parts.items() if mod != module}
    sibling_modules = {mod for mod in parts.values() if mod != module}
    tree = ast.parse(source)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    found = []
    for node in ast.walk(tree):
        where = f"{module}.py:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _chain(node)
            why = _why(chain, siblings)
            if why is not None:
                found.append(f"{where}: {'.'.join(chain)} ({why})")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                head = name[len(PACKAGE) + 1:].split(".")[0]
                if name.startswith(PACKAGE + ".") and head in sibling_modules:
                    found.append(f"{where}: imports {name} (a sibling part)")
    return found


def all_reach_ins() -> list[str]:
    parts = parts_of_widget((GUI_REVIEW / "widget.py").read_text(encoding="utf-8"))
    found = []
    for path in sorted(GUI_REVIEW.glob("*.py")):
        if path.stem in ("widget", "__init__"):
            continue  # the widget composes the parts: it may use them
        found += reach_ins(path.read_text(encoding="utf-8"), path.stem, parts)
    return found


def test_the_widget_composes_the_parts_the_counter_knows():
    parts = parts_of_widget((GUI_REVIEW / "widget.py").read_text(encoding="utf-8"))
    assert {"model_panel", "roi_tool", "sampler", "correction", "hypothesis_view", "gallery",
            "bundles"} <= set(parts)
    assert parts["sampler"] == "sampling" and parts["gallery"] == "gallery"


def test_no_part_reaches_into_a_sibling_or_the_widget():
    found = all_reach_ins()
    assert found == [], "\n".join(found)


PARTS = {"model_panel": "model_panel", "sampler": "sampling", "gallery": "gallery",
         "hypothesis_view": "hypotheses"}


@pytest.mark.parametrize("snippet", [
    "self.widget.model_panel.sample_when_ready = True",
    "def f(widget):\n    widget._disconnectors.append(print)",
    "g.widget.next_hypothesis()",
    "self.parent.sampler.sample()",
    "parent.update_buttons()",
    "self.hypothesis_view.join(3)",
    "controller.gallery.rebuild()",
    "from napari_probunet.gui.review.gallery import Gallery",
    "from napari_probunet.gui.review import hypotheses",
    "import napari_probunet.gui.review.model_panel",
])
def test_a_reach_in_is_counted(snippet):
    assert len(reach_ins(snippet, "sampling", PARTS)) == 1, snippet


@pytest.mark.parametrize("snippet", [
    "self.controller.request_sample()",
    "self.runner.start('sample', job, returned=f, errored=g, finished=h)",
    "QTimer(parent)\nparent.destroyed.connect(print)",
    "self.viewer.layers.remove(layer)",
    "from napari_probunet.gui.review.common import html",
    "from napari_probunet.gui.review import thumbnails",
    "self.n_spin.setValue(3)",
])
def test_what_a_part_may_do_is_not_counted(snippet):
    assert reach_ins(snippet, "sampling", PARTS) == [], snippet


def test_each_use_of_the_widget_is_counted():
    assert len(reach_ins("w = self.widget\nw.update_buttons()\nw.sample()", "sampling",
                         PARTS)) == 3


def test_a_part_may_name_itself():
    # the gallery's grid holds its gallery; the sampler module may say "sampler"
    assert reach_ins("self.gallery.toggle(1, 'reject')", "gallery", PARTS) == []
    assert len(reach_ins("self.gallery.toggle(1, 'reject')", "sampling", PARTS)) == 1
