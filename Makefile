# `make run` builds the CLI and runs the main job; `make test` runs every check CI runs.
# Both use the dev profile (dependencies optimised, see Cargo.toml), so they share one build.

CARGO ?= cargo

.PHONY: run test lint bench bench-train

run:
	$(CARGO) run --quiet -- run pipelines/imdb-sample.yaml

test:
	$(CARGO) test

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
	PYTHON=$(CURDIR)/.venv-torch/bin/python $(CARGO) bench --bench train

.venv-torch/bin/python:
	python3 -m venv .venv-torch
	.venv-torch/bin/pip install --quiet torch==2.15.0 tokenizers==0.23.3 pyarrow numpy psutil
