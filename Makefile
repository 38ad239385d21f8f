# One-command setup, tests, benchmark and book.  `make test` is the README's (and CI's) test command.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
# Where the chapters' independent tasks (subjects, trainings) run: `local` one after another in the
# notebook's kernel; `process` in a pool of processes, each training with the thread count that is part of
# its cache key (XRLIB_THREADS, default all cores), so a pool only pays where cores ≥ workers × threads;
# `ray` on a cluster (book page "Running at scale").
EXECUTOR ?= local

.PHONY: setup test bench book clean-venv

setup: $(VENV)/.installed

# torch/torchvision first: pip takes the pinned CUDA build (which also runs on a CPU) from this
# machine's disk; then the project and every pinned dependency from pyproject.toml, with the optional
# Ray executor (the `ray` extra) that the tests exercise.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[ray]'
	touch $@

# Tests run on every core (pytest-xdist), a test file per worker; the expensive session fixtures
# (the smoke book, the toy study run) are built once per session and shared (tests/conftest.py).
# PYTHONUTF8=1: in CI a test worker's default text encoding turned ASCII after native libraries ran
# (a locale reset); the book's text is UTF-8, so files and pipes are read as UTF-8 whatever the locale.
test: setup
	PYTHONUTF8=1 $(PY) -m pytest -n auto --dist loadfile --durations=15

bench: setup
	$(PY) benchmarks/bench_projectors.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_diffrender.py
	$(PY) benchmarks/bench_stages.py
	$(PY) benchmarks/bench_stages.py --stages training --before-tree . --after-env XRLIB_BENCH_COMPILE=1
	$(PY) benchmarks/profile_stages.py --compile
	$(PY) benchmarks/bench_ray.py
	$(PY) benchmarks/bench_portability.py

# Execute the notebooks with papermill (cached) and build the HTML book: book/_build/html/index.html.
# A quick build also rewrites the README's generated section (headline result and stage times).
book: setup
	$(PY) -m xrlib book --profile $(PROFILE) --executor $(EXECUTOR) $(if $(filter quick,$(PROFILE)),--readme README.md)

clean-venv:
	rm -rf $(VENV)
