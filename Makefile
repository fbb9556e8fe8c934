# `make run` builds the CLI and runs the main job; `make test` runs every check CI runs.
# Both use the dev profile (dependencies optimised, see Cargo.toml), so they share one build.

CARGO ?= cargo
# The MLflow server the tests start (pinned: 3.18.0's metadata resolves to it anyway).
# The venv lives outside the clone so CI installs it once per machine.
MLFLOW_VENV ?= $(HOME)/.cache/pipeline/mlflow-3.17.2

.PHONY: run test lint bench bench-train

run:
	$(CARGO) run --quiet -- run sweeps/lr.yaml

test: $(MLFLOW_VENV)/bin/mlflow
	MLFLOW_BIN=$(MLFLOW_VENV)/bin/mlflow $(CARGO) test

$(MLFLOW_VENV)/bin/mlflow:
	python3 -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet mlflow==3.17.2

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Benchmarks run in release; the Python reference for tokenization gets its own venv.
bench: .venv-bench/bin/python
	$(CARGO) bench --bench noop_run
	PYTHON=.venv-bench/bin/python $(CARGO) bench --bench data_stages

.venv-bench/bin/python:
	python3 -m venv .venv-bench
	.venv-bench/bin/pip install --quiet tokenizers==0.23.3 pyarrow

# Training throughput against the PyTorch reference scripts in ../shared/bench/pytorch
# (torch is a ~3 GB download, so it has a venv of its own).
bench-train: .venv-torch/bin/python
	PYTHON=$(CURDIR)/.venv-torch/bin/python $(CARGO) bench --profile dev --bench train

.venv-torch/bin/python:
	python3 -m venv .venv-torch
	.venv-torch/bin/pip install --quiet torch==2.15.0 tokenizers==0.23.3 pyarrow numpy psutil
