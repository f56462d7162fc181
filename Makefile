# rkserve developer entry points. `make help` lists them.
#   make serve   set up .venv and run the daemon on the demo models (onnx backend on a PC)
#   make fast    the inner loop: every in-process test on CPython 3.11 (no daemon, CLI or tool
#                processes; a few minutes)
#   make test    set up everything and run the whole suite on CPython 3.8 and 3.11
#                (the emulated-board tests on 3.11 only: they run aarch64 CPython 3.11 anyway)
#   make bench   run python -m benchmarks.run (a few minutes) and rewrite docs/BENCHMARKS.md
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY311 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.11*/bin/python3.11) $(shell command -v python3.11) $(shell command -v python3))
PY38  ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.8*/bin/python3.8) $(shell command -v python3.8))
VENV  ?= .venv
VENV38 ?= .venv38
PYTEST_ARGS ?=

.PHONY: help serve venv venv38 lint fast test test38 test311 convert-env emulated-board demo-models bench clean

help:
	@sed -n 's/^#   //p' Makefile
	@echo "  make lint         ruff + mypy"
	@echo "  make convert-env  the rknn-toolkit2 converter environment (.venv-convert)"
	@echo "  make demo-models  retrain the demo models (needs torch; see models/*/README.md)"
	@echo "  make emulated-board  build the emulated aarch64 board (.emulated/; docs/BOARD.md)"

$(VENV)/.installed: pyproject.toml
	$(PY311) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

$(VENV38)/.installed: pyproject.toml
	@test -n "$(PY38)" || { echo "CPython 3.8 not found (pyenv install 3.8, or PY38=/path/to/python3.8)"; exit 1; }
	$(PY38) -m venv $(VENV38)
	$(VENV38)/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(VENV)/.installed
venv38: $(VENV38)/.installed

serve: venv
	$(VENV)/bin/rkserve serve $(ARGS)

LINTED := $(wildcard rkserve tests tools deploy benchmarks)

lint: venv
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

convert-env:
	deploy/convert-env.sh

# exit status 3: qemu-user-static, mmdebstrap or gcc-aarch64-linux-gnu missing (tests skip)
emulated-board: venv
	tests/emulated/build.sh --python $(VENV)/bin/python || { test $$? -eq 3 && echo "emulated board not built: the emulated tests will skip"; }

fast: venv
	RKSERVE_NO_PROCESSES=1 $(VENV)/bin/python -m pytest -q -m "not process and not convert and not emulated and not board" $(PYTEST_ARGS)

test311: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test38: venv38
	$(VENV38)/bin/python -m pytest -m "not convert and not emulated" $(PYTEST_ARGS)

test: venv venv38 convert-env emulated-board lint test38 test311

bench: venv
	$(VENV)/bin/python -m benchmarks.run $(ARGS)

demo-models:
	$(PY311) -m tools.demo.train_models
	$(PY311) -m tools.demo.train_detector

clean:
	rm -rf $(VENV) $(VENV38) .venv-convert .emulated .pytest_cache .mypy_cache .ruff_cache
