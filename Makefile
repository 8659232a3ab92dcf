# Two commands do all the set-up on a fresh Debian/Ubuntu machine with Python 3.11:
#   make run    set up, then open napari with the plugin docked, the bundled model and a sample
#   make test   set up, then run ruff and the whole test suite headless (Xvfb)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# What napari needs from the system (SPEC.md, "Running headless"); installed only when missing
# and only when we are root (otherwise the list is printed for you to install). orthanc and
# orthanc-dicomweb: the PACS tests start their own Orthanc on free ports (tests/orthanc_server.py);
# the system service the package installs is never used, running or not (docs/pacs.md).
# dicom3tools: dciodvfy checks the DICOM SEG files the tests write.
SYSTEM_PACKAGES := xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 \
	libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 \
	orthanc orthanc-dicomweb dicom3tools openssl

.PHONY: setup system-deps run test lint bench clean

setup: system-deps $(STAMP)

system-deps:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "system libraries: all present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  echo "installing system libraries:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "WARNING: missing system libraries:$$missing"; \
	  echo "         install them with: sudo apt-get install$$missing"; fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first, as a CPU build, so that nothing pulls a multi-GB CUDA build by accident.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0" \
	  || { echo "torch==2.13.0 is not available here: install a CPU build of torch (>=2.1,<2.15) into $(VENV) first"; exit 1; }
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

run: setup
	$(BIN)/python -m napari_probunet.gui.launch

test: setup
	$(BIN)/ruff check napari_probunet tests
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/probunet bench

clean:
	rm -rf $(VENV) build dist *.egg-info
