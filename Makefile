# Developer entry points. `make demo` and `make test` are the README's quickstart: each sets up
# .venv (pinned CPU torch first: a bare `torch` requirement pulls a multi-GB CUDA build), builds
# the native core (incremental, editable install) and runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mlserve-setup

.PHONY: setup build demo test test-python test-cpp-asan cpu-build-check bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q "scikit-build-core>=0.11" "pybind11>=2.13" ninja "cmake>=3.26"
	$(PIP) install -q --no-build-isolation -e ".[train,features,monitoring,s3,dev]"
	# TensorRT's published type stubs, without their runtime dependency (TensorRT itself, which
	# needs a GPU and NVIDIA's index): tests/unit/test_tensorrt_types.py type-checks against them.
	$(PIP) install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
	touch $(STAMP)

setup: $(STAMP)

# Re-runs CMake/ninja in build/ (incremental); needed after C++ changes.
build: setup
	$(PIP) install -q --no-build-isolation --no-deps -e .

demo: build
	$(VENV)/bin/mlserve demo

test: build lint test-python test-cpp-asan cpu-build-check

test-python:
	$(PY) -m pytest -q

# The C++ core tests under AddressSanitizer + UndefinedBehaviorSanitizer (build/asan).
test-cpp-asan: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/sanitize.sh

# The CPU-only build (MLSERVE_CUDA=OFF) must build, import and normalize correctly.
cpu-build-check: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/check_cpu_build.sh

bench: build
	$(PY) -m bench all --quick

lint: setup
	$(VENV)/bin/ruff check python bench tests trainer registry
	# mypy checks the package as the wheel lays it out: python/mlserve with registry/ and
	# trainer/ in it (links under build/), so that mlserve.registry and mlserve.trainer are
	# checked, and checked against each other
	rm -rf build/mypy-tree && mkdir -p build/mypy-tree/mlserve
	ln -s $(CURDIR)/python/mlserve/* $(CURDIR)/registry $(CURDIR)/trainer build/mypy-tree/mlserve/
	cd build/mypy-tree && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml

clean:
	rm -rf build $(VENV)
