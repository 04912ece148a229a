# Two commands do all set-up: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
# A pinned torch, the release the suite and the demo's timings were measured with. From PyPI on Linux it is the CUDA
# build (a few GB; it runs on CPUs too): CPU-only machines get the small CPU build with
# make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu. Another torch: make demo TORCH=torch
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-floors install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/verbo quickstart --out quickstart

# One pytest-xdist worker per core, at most 4 (each holds its own tiny models and data); each worker computes on one
# thread (tests/conftest.py). `pytest` alone runs the suite in one process, as before.
PYTEST_ARGS := -q -n auto --maxprocesses 4 --dist worksteal

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite again with every dependency at the floor pyproject.toml declares (.ci/floors.py), in its own venv: the
# floors are what CI proves, not what was once true. torch's floor is a CUDA build (it runs on CPUs too): a few GB.
FLOORS := .venv-floors

$(FLOORS)/.installed: pyproject.toml .ci/floors.py
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install -q --upgrade pip
	$(PYTHON) .ci/floors.py > $(FLOORS)/floors.txt
	$(FLOORS)/bin/pip install -q -r $(FLOORS)/floors.txt
	$(FLOORS)/bin/pip install -q --no-deps -e .
	touch $@

# The floors run leaves out what only VerboVision's own code decides, which the run at the current releases covers:
# the help and README examples run as written (each command they use is tested on its own), --endpoint's HTTP
# client (verbo serve, its other end, is tested), the help snapshots and import rules, and webdataset shards read
# within a memory cap (tar members are read by our code; the Arrow and Parquet memory caps run at the floors).
FLOORS_LEAVE_OUT := --ignore=tests/test_examples.py --ignore=tests/test_endpoint.py --ignore=tests/test_snapshots.py \
	--ignore=tests/test_layers.py \
	--deselect=tests/test_streaming.py::test_shards_train_within_a_memory_cap_and_resume_mid_shard

test-floors: $(FLOORS)/.installed
	$(FLOORS)/bin/python -m pytest $(PYTEST_ARGS) $(FLOORS_LEAVE_OUT)

clean:
	rm -rf quickstart runs .pytest_cache
