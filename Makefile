# dkbench — `make demo` runs the main job, `make test` the tests; both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The shared public datasets live beside the checkout on the project's machines.
DKBENCH_DATA ?= $(abspath ../shared/datasets)
export DKBENCH_DATA
# Cached bytecode halves import time of the stack (this environment disables it by default).
export PYTHONDONTWRITEBYTECODE=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-full test-browser bench gpu-check clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@# medmnist (for its official Evaluator in tests) declares torchvision, which breaks the CPU stack:
	$(PY) -m pip install --quiet --no-deps medmnist==3.0.2
	$(PY) -m compileall -q $(VENV)/lib > /dev/null || true
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install dkbench with dev extras (re-runs when pyproject.toml changes)

DEMO_JOBS ?= 2
demo: $(STAMP) ## main job: sweep + leaderboard of the `demo` suite (probe + BreastMNIST when present), offline
	OMP_NUM_THREADS=1 $(VENV)/bin/dkbench demo hydra/launcher=joblib hydra.launcher.n_jobs=$(DEMO_JOBS)

# Tests train tiny models and start parallel workers: one thread each avoids oversubscription.
test: $(STAMP) ## fast test suite (offline; slow tests deselected)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

test-full: $(STAMP) ## every test, including slow end-to-end runs (not the cluster ones: make test-cluster)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)

test-browser: $(STAMP) ## leaderboard.html in headless Chromium (needs: apt-get install -y chromium chromium-driver)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m browser tests/integration/test_report_browser.py $(PYTEST_ARGS)

test-cluster: $(STAMP) ## SLURM and Ray smoke sweeps on local clusters (root + apt; builds .venv-ray)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

bench: $(STAMP) ## speed benchmarks: dkbench vs a plain PyTorch loop, and how fast bad input is refused (benchmarks/results/)
	$(PY) benchmarks/bench_throughput.py
	$(PY) benchmarks/bench_refusal.py
	$(PY) benchmarks/bench_medmnist_cost.py

# No venv dependency: a lent GPU machine has its own PyTorch (see scripts/gpu_check.sh).
GPU_CHECK_ARGS ?=
gpu-check: ## every GPU check in one call → benchmarks/results/gpu_*.json (--small rehearses it on CPU)
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean: ## remove runs, reports, caches (keeps .venv)
	rm -rf runs reports .pytest_cache .cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
