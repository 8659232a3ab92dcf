"""The review widget's Model box: which model, on which device, and what it was trained on.

:class:`ModelPanel` lists the bundled models and an opened model file, loads one off the GUI
thread (``jobs.model_job``, a job of kind ``"load"`` on the review's
:class:`~napari_probunet.gui.review.runner.JobRunner`), remembers the device, describes the
loaded model and shows, without blocking, the controller's warnings when an image looks unlike
what the model was trained on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from napari_probunet.errors import UserError
from napari_probunet.gui.review.common import ask_model_path, html, settings
from napari_probunet.gui.worker import returning
from napari_probunet.review.controller import ReviewController, join_sentences
from napari_probunet.review.jobs import model_job

log = logging.getLogger(__name__)


class ModelPanel:
    """The Model box of the review, and model loading.

    ``ask_model_path(folder) -> str | None`` is the *Open model…* dialog (scripts and tests
    replace it).
    """

    def __init__(self, controller: ReviewController, viewer, runner, parent) -> None:
        self.controller = controller
        self.state = controller.state
        self.runner = runner
        self.ask_model_path: Callable[[str], str | None] = lambda d: ask_model_path(parent, d)
        self.box = self._build()
        self.open_model_button.clicked.connect(self._on_open_model_clicked)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.device_combo.activated.connect(self._on_device_chosen)
        c = controller
        c.hook_all(((c.model_changed, self.show_model), (c.model_failed, self.show_model),
                    (c.busy_changed, self.update_controls),
                    (c.input_changed, self.update_controls),
                    (c.encoded_changed, self.update_controls),
                    (c.domain_changed, self.show_domain)))

    def _build(self) -> QGroupBox:
        box = QGroupBox("Model")
        lay = QVBoxLayout(box)
        self.model_label = QLabel("No model loaded")
        self.model_label.setWordWrap(True)
        self.model_label.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.model_label)
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The models that ship with napari-probunet; a model file "
                                    "opened with 'Open model…' is listed too")
        self._fill_model_combo()
        self.open_model_button = QPushButton("Open model…")
        self.open_model_button.setToolTip("Load a Probabilistic U-Net model file (.safetensors)")
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.open_model_button)
        lay.addLayout(row)
        self.domain_label = QLabel("")
        self.domain_label.setWordWrap(True)
        self.domain_label.setTextFormat(Qt.TextFormat.RichText)
        self.domain_label.setVisible(False)
        lay.addWidget(self.domain_label)
        form = QFormLayout()
        self.device_combo = QComboBox()
        self.device_combo.setToolTip("Where the model runs; auto picks CUDA, then MPS, then CPU. "
                                     "Remembered between sessions.")
        form.addRow("Device", self.device_combo)
        lay.addLayout(form)
        return box

    # ------------------------------------------------------------------ device
    def fill_devices(self) -> None:
        from napari_probunet.device import available_devices

        devices = available_devices()
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItem(f"auto ({devices[0]})", "auto")
        for d in devices:
            self.device_combo.addItem(d, d)
        remembered = str(settings().value("device", "auto"))
        i = self.device_combo.findData(remembered)
        if i < 0:
            show_info(f"Using device auto. The device used last time ({remembered}) is not "
                      "available here.")
            i = 0
        self.device_combo.setCurrentIndex(i)
        self.device_combo.blockSignals(False)

    @property
    def device(self) -> str:
        return self.device_combo.currentData() or "auto"

    def device_names(self) -> list[str]:
        return [self.device_combo.itemData(i) for i in range(self.device_combo.count())]

    def set_device(self, device: str) -> None:
        i = self.device_combo.findData(device)
        if i < 0:
            show_error(f"Device {device!r} is not available. This machine has: "
                       f"{', '.join(self.device_names())}.")
            return
        self.device_combo.setCurrentIndex(i)
        self._on_device_chosen(i)

    def _on_device_chosen(self, _index: int) -> None:
        settings().setValue("device", self.device)
        busy = self.controller.busy
        if self.state.model is not None and not busy:
            self._start(self.state.model)
        elif busy:
            show_info("Device changed for the next model load. The model is busy now.")

    # ------------------------------------------------------------------ model choice
    def _fill_model_combo(self, custom: str | None = None) -> None:
        """Bundled models by their plain names, then the opened model file, if any."""
        from napari_probunet.model.modelfile import BUNDLED_MODELS

        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for m in BUNDLED_MODELS:
            if m.path.exists():
                self.model_combo.addItem(m.title, m.name)
        if custom:
            self.model_combo.addItem(f"File: {Path(custom).name}", custom)
            self.model_combo.setItemData(self.model_combo.count() - 1, custom,
                                         Qt.ItemDataRole.ToolTipRole)
        self.model_combo.blockSignals(False)

    def _sync_model_combo(self) -> None:
        """Show the loaded model in the model choice."""
        from napari_probunet.model.modelfile import bundled_model_of

        model = self.state.model
        path = getattr(model, "source_path", None) if model is not None else None
        bundled = bundled_model_of(path)
        self._fill_model_combo(None if bundled is not None or path is None else path)
        key = bundled.name if bundled is not None else path
        i = self.model_combo.findData(key) if key is not None else -1
        self.model_combo.blockSignals(True)
        self.model_combo.setCurrentIndex(i)
        self.model_combo.blockSignals(False)

    def _on_model_chosen(self, index: int) -> None:
        key = self.model_combo.itemData(index)
        if not key:
            return
        from napari_probunet.model.modelfile import bundled_model

        if bundled_model(str(key)) is not None:
            self.load_bundled_model(str(key))
        else:
            self.load_model_file(str(key))

    def _on_open_model_clicked(self) -> None:
        folder = str(settings().value("model_folder", str(Path.home())))
        path = self.ask_model_path(folder)
        if path:
            settings().setValue("model_folder", str(Path(path).expanduser().parent))
            self.load_model_file(path)

    # ------------------------------------------------------------------ loading
    def load_bundled_model(self, name: str = "default") -> None:
        """Load a model that ships with the package (``"default"``, ``"lidc"``,
        ``"lesions"``) off the GUI thread."""
        from napari_probunet.model.modelfile import BUNDLED_MODELS, bundled_model

        bundled = bundled_model(name)
        if bundled is None:
            show_error(f"No bundled model {name!r}. The bundled ones: "
                       f"{', '.join(m.name for m in BUNDLED_MODELS)}.")
            return
        if not bundled.path.exists():
            message = (f"The bundled model is not installed ({bundled.path.name} is missing "
                       "from the package). Open a model file with 'Open model…', or reinstall "
                       "napari-probunet.")
            self.controller.load_failed(message, message, level="warning")
            return
        self._start(str(bundled.path))

    def load_model_file(self, path: str | os.PathLike) -> None:
        """Load a model file (``.safetensors``) off the GUI thread; errors become
        notifications."""
        self._start(os.fspath(Path(path).expanduser()))

    def _start(self, source) -> None:
        if self.controller.sampling:
            show_warning("Sampling is running. Wait for it to finish or click Cancel, then "
                         "change the model or device.")
            return
        if self.controller.loading:
            show_warning("A model is already loading; wait a moment.")
            return
        self.controller.load_started()
        name = Path(source).name if isinstance(source, (str, os.PathLike)) else "the model"
        self.model_label.setText(f"Loading {name}…")
        device = self.device
        self.runner.start("load", returning(lambda: model_job(source, device)),
                          returned=lambda result: self.controller.model_loaded(*result, device),
                          errored=self._on_failed, finished=self.controller.load_finished)

    def _on_failed(self, exc: BaseException) -> None:
        error = str(exc) if isinstance(exc, UserError) else (
            f"could not load the model ({type(exc).__name__}: {exc})")
        if not isinstance(exc, UserError):
            log.error("model loading failed", exc_info=exc)
        kept = " The previous model stays loaded." if self.state.model is not None else ""
        self.controller.load_failed(error, f"Model not loaded: {error}.{kept}")

    # ------------------------------------------------------------------ what it shows
    def show_model(self, *_) -> None:
        """Describe the loaded model (or why there is none)."""
        model = self.state.model
        error = self.controller.model_error
        if model is None:
            text = "<b>No model loaded</b>"
            if error:
                text += f"<br><span style='color:#e06c5a'>{html(error)}</span>"
            self.model_label.setText(text)
            self.model_label.setToolTip("")
        else:
            self.model_label.setText(self._describe(model))
            prov = (getattr(model, "metadata", None) or {}).get("provenance") or {}
            # the intensity convention heads the tooltip, not the text: two more lines pushed
            # Export below the fold at 1366x768 (tests/test_ux.py); an image unlike the
            # training images is warned about anyway
            intensity = (model.config.domain or {}).get("intensity")
            tip = [f"Input: {intensity}"] if intensity else []
            tip += [f"sha256: {model.source_sha256}" if model.source_sha256 else
                    "not from a file"]
            tip += [f"{k}: {v}" for k, v in prov.items() if isinstance(v, (str, int, float))]
            self.model_label.setToolTip("\n".join(tip))
        self._sync_model_combo()
        self.update_controls()

    def update_controls(self) -> None:
        """Model choices off while a model loads; the domain warning only for the image it
        is about."""
        loading = self.controller.loading
        self.open_model_button.setEnabled(not loading)
        self.model_combo.setEnabled(not loading)
        domain = self.domain_label
        domain.setVisible(bool(domain.text()) and not self.controller.other_image_chosen)

    def _describe(self, model) -> str:
        """The Model box's text for ``model``: name, classes, input, latent, domain."""
        from napari_probunet.model.modelfile import bundled_model_of
        from napari_probunet.review.domain import Domain

        cfg = model.config
        path = Path(model.source_path) if model.source_path else None
        name = path.name if path else "model built in code"
        bundled = bundled_model_of(path)
        if bundled is not None:
            name = f"{bundled.title} (bundled model)"
        classes = ", ".join(cfg.class_names)
        kind = " · <b>deterministic</b> (one map)" if cfg.deterministic else ""
        domain = Domain.from_dict(cfg.domain)
        trained = ""
        if domain is not None and domain.description:
            trained = f"<br>Trained on: {html(domain.description)}"
        elif domain is None:
            trained = "<br>Trained on: not recorded in this model file"
        # (the device it runs on is the Device row's: "auto (cpu)")
        return (f"<b>{html(name)}</b><br>{cfg.num_classes} classes ({html(classes)})"
                f" · input {cfg.input_size}×{cfg.input_size} · latent {cfg.latent_dim}{kind}"
                f"{trained}")

    def show_domain(self) -> None:
        """The controller's domain warnings of the image last encoded, in the Model box."""
        found = self.controller.domain_warnings
        if not found:
            self.domain_label.setVisible(False)
            self.domain_label.setText("")
            return
        text = join_sentences(found)
        self.domain_label.setText(f"<span style='color:#e5a445'>⚠ This image: {html(text)}</span>")
        self.update_controls()
