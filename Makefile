# Two commands do all set-up on a fresh machine with only python3:
#   make test    create .venv, install torch (if missing), build, run the whole test suite
#   make bench   same set-up, then the kernel benchmarks and the 5-minute memory profile
#   make study   same set-up, then the train-short / test-long study of the MMHNet model
#                (written to out/study; `make study STUDY_OUT=docs/study` refreshes the docs' copy)
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
PYTEST_ARGS ?=
STUDY_OUT  ?= out/study

.PHONY: test bench study install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first (only when it cannot be imported), then the build tools, then the package
# itself without build isolation so that the build never pulls a second torch.
$(VENV)/.installed: $(PY) pyproject.toml setup.py $(wildcard csrc/*.* csrc/*/*.*)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install --upgrade "setuptools>=64" wheel "pybind11>=2.10" ninja
	$(PIP) install --no-build-isolation -e ".[test,plot]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks.run

# the train-short / test-long study (docs/study.md), under 15 minutes on CPU; its results go to
# $(STUDY_OUT), never over the tracked docs/study unless asked
study: install
	$(PY) -m mmhnet.study --out $(STUDY_OUT)

clean:
	rm -rf build *.egg-info mmhnet/*.so $(VENV)/.installed
